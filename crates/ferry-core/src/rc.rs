//! Return codes of a cellnet reply (`cn__return_code`), as NVFlare spells them.
//!
//! Both engines need them: the producer answers with `ok`, `invalid_request` or
//! `process_exception`; the receiver retries `timeout` and fails on every other non-`ok` code.
//! `ferry-cellnet` has its own enum; the glue maps between the two by their strings.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A cellnet return code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReturnCode {
    /// `ok`: the request was handled.
    Ok,
    /// `timeout`: no reply in time (synthesized by the requester's cell).
    Timeout,
    /// `invalid_target`: the destination FQCN is not valid.
    InvalidTarget,
    /// `target_unreachable`: no route to the destination.
    TargetUnreachable,
    /// `comm_error`: the transport failed.
    CommError,
    /// `msg_too_big`: the message exceeds the cell's maximum size.
    MsgTooBig,
    /// `filter_error`: a message filter refused it.
    FilterError,
    /// `invalid_request`: the request was malformed or names an unknown ref.
    InvalidRequest,
    /// `process_exception`: the handler failed (e.g. `produce` raised).
    ProcessException,
    /// `authentication_error`: the peer failed authentication.
    AuthenticationError,
    /// `service_unavailable`: the service is not (or no longer) running.
    ServiceUnavailable,
    /// `invalid_session`: the session is not valid.
    InvalidSession,
    /// `abort_run`: the run is being aborted.
    AbortRun,
    /// `unauthenticated`: the peer is not authenticated.
    Unauthenticated,
}

impl ReturnCode {
    /// Every code, in NVFlare's order.
    pub const ALL: [ReturnCode; 14] = [
        Self::Ok,
        Self::Timeout,
        Self::InvalidTarget,
        Self::TargetUnreachable,
        Self::CommError,
        Self::MsgTooBig,
        Self::FilterError,
        Self::InvalidRequest,
        Self::ProcessException,
        Self::AuthenticationError,
        Self::ServiceUnavailable,
        Self::InvalidSession,
        Self::AbortRun,
        Self::Unauthenticated,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::InvalidTarget => "invalid_target",
            Self::TargetUnreachable => "target_unreachable",
            Self::CommError => "comm_error",
            Self::MsgTooBig => "msg_too_big",
            Self::FilterError => "filter_error",
            Self::InvalidRequest => "invalid_request",
            Self::ProcessException => "process_exception",
            Self::AuthenticationError => "authentication_error",
            Self::ServiceUnavailable => "service_unavailable",
            Self::InvalidSession => "invalid_session",
            Self::AbortRun => "abort_run",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// Parse a wire string; `None` for a code this crate does not know.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|rc| rc.as_str() == s)
    }

    /// Whether a receiver retries a request that ended with this code (only `timeout`).
    pub fn is_retryable(self) -> bool {
        self == Self::Timeout
    }
}

impl fmt::Display for ReturnCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_and_match_serde() {
        for rc in ReturnCode::ALL {
            assert_eq!(ReturnCode::parse(rc.as_str()), Some(rc));
            let enc = rmp_serde::to_vec_named(&rc).unwrap();
            let s: String = rmp_serde::from_slice(&enc).unwrap();
            assert_eq!(s, rc.as_str());
        }
        assert_eq!(ReturnCode::parse("nope"), None);
        assert!(ReturnCode::Timeout.is_retryable());
        assert!(!ReturnCode::CommError.is_retryable());
    }
}
