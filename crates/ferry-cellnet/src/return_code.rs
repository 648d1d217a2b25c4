//! NVFlare's message return codes (`cn__return_code`).

use std::fmt;

/// The return code of a reply, with NVFlare's exact wire strings.
///
/// Unknown strings from a peer are kept in [`ReturnCode::Other`] so that nothing is lost.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReturnCode {
    /// `ok`
    Ok,
    /// `timeout`: no reply within the requester's timeout.
    Timeout,
    /// `invalid_target`: the target FQCN is malformed.
    InvalidTarget,
    /// `target_unreachable`: no connection leads to the target.
    TargetUnreachable,
    /// `comm_error`: the message could not be delivered (connection lost, cannot forward, ...).
    CommError,
    /// `msg_too_big`: the message exceeds the maximum message size.
    MsgTooBig,
    /// `filter_error`
    FilterError,
    /// `invalid_request`: the request could not be decoded or was refused as malformed.
    InvalidRequest,
    /// `process_exception`: the handler failed, or there is no handler ("no callback").
    ProcessException,
    /// `authentication_error`
    AuthenticationError,
    /// `service_unavailable`: e.g. too many in-flight requests.
    ServiceUnavailable,
    /// `invalid_session`
    InvalidSession,
    /// `abort_run`
    AbortRun,
    /// `unauthenticated`
    Unauthenticated,
    /// Any other string a peer sent.
    Other(String),
}

impl ReturnCode {
    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            ReturnCode::Ok => "ok",
            ReturnCode::Timeout => "timeout",
            ReturnCode::InvalidTarget => "invalid_target",
            ReturnCode::TargetUnreachable => "target_unreachable",
            ReturnCode::CommError => "comm_error",
            ReturnCode::MsgTooBig => "msg_too_big",
            ReturnCode::FilterError => "filter_error",
            ReturnCode::InvalidRequest => "invalid_request",
            ReturnCode::ProcessException => "process_exception",
            ReturnCode::AuthenticationError => "authentication_error",
            ReturnCode::ServiceUnavailable => "service_unavailable",
            ReturnCode::InvalidSession => "invalid_session",
            ReturnCode::AbortRun => "abort_run",
            ReturnCode::Unauthenticated => "unauthenticated",
            ReturnCode::Other(s) => s,
        }
    }

    /// Parse a wire string; unknown strings become [`ReturnCode::Other`].
    pub fn parse(s: &str) -> ReturnCode {
        match s {
            "ok" => ReturnCode::Ok,
            "timeout" => ReturnCode::Timeout,
            "invalid_target" => ReturnCode::InvalidTarget,
            "target_unreachable" => ReturnCode::TargetUnreachable,
            "comm_error" => ReturnCode::CommError,
            "msg_too_big" => ReturnCode::MsgTooBig,
            "filter_error" => ReturnCode::FilterError,
            "invalid_request" => ReturnCode::InvalidRequest,
            "process_exception" => ReturnCode::ProcessException,
            "authentication_error" => ReturnCode::AuthenticationError,
            "service_unavailable" => ReturnCode::ServiceUnavailable,
            "invalid_session" => ReturnCode::InvalidSession,
            "abort_run" => ReturnCode::AbortRun,
            "unauthenticated" => ReturnCode::Unauthenticated,
            other => ReturnCode::Other(other.to_string()),
        }
    }

    /// True for [`ReturnCode::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, ReturnCode::Ok)
    }
}

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ReturnCode {
    fn from(s: &str) -> Self {
        ReturnCode::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in [
            "ok",
            "timeout",
            "invalid_target",
            "target_unreachable",
            "comm_error",
            "msg_too_big",
            "filter_error",
            "invalid_request",
            "process_exception",
            "authentication_error",
            "service_unavailable",
            "invalid_session",
            "abort_run",
            "unauthenticated",
            "something_new",
        ] {
            assert_eq!(ReturnCode::parse(s).as_str(), s);
        }
        assert_eq!(ReturnCode::parse("x"), ReturnCode::Other("x".into()));
        assert!(ReturnCode::Ok.is_ok());
        assert!(!ReturnCode::Timeout.is_ok());
    }
}
