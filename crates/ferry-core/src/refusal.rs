//! Typed refusals: why a producer would not serve a pull, as a code both sides can match on.
//!
//! NVFlare answers every refused pull with return code `invalid_request` and words in
//! `cn__error`. Ferry keeps that (NVFlare receivers see exactly what they expect) and adds a
//! machine-readable [`Refusal`] in one more reply header, [`REFUSAL_HEADER`]; NVFlare cells keep
//! unknown headers without looking at them. A ferry receiver turns it into
//! [`DownloadFailure::Refused`](crate::DownloadFailure::Refused), so a tool can tell "refused,
//! and why" from "the sender finished" and from "the sender is unreachable" without matching
//! text.

use std::fmt;

/// The reply header that carries a [`Refusal`] code (a msgpack string).
pub const REFUSAL_HEADER: &str = "ferry__refusal";

/// Why a producer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The transaction declares its receivers (identity mode) and the requester is not one of
    /// them.
    NotExpectedReceiver,
    /// The transaction expects a number of receivers (count mode) and that many other
    /// receivers already hold their places.
    ReceiverLimitReached,
    /// The transaction of this ref is over (finished, timed out or deleted) and has nothing to
    /// replay to this requester.
    TransactionFinished,
    /// No such ref (never known, or forgotten after its tombstone expired).
    UnknownRef,
    /// The request itself is unusable: malformed, or a state the object could not have
    /// produced (e.g. `received_bytes = -1`).
    InvalidRequest,
    /// The producer's service is shut down.
    ShutDown,
}

impl Refusal {
    /// Every code.
    pub const ALL: [Refusal; 6] = [
        Self::NotExpectedReceiver,
        Self::ReceiverLimitReached,
        Self::TransactionFinished,
        Self::UnknownRef,
        Self::InvalidRequest,
        Self::ShutDown,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotExpectedReceiver => "NOT_EXPECTED_RECEIVER",
            Self::ReceiverLimitReached => "RECEIVER_LIMIT_REACHED",
            Self::TransactionFinished => "TRANSACTION_FINISHED",
            Self::UnknownRef => "UNKNOWN_REF",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::ShutDown => "SHUT_DOWN",
        }
    }

    /// The code for a wire string; `None` for one this version does not know (a newer peer's),
    /// which a receiver treats as no code at all.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the requester itself is refused (it may not pull this object), as opposed to
    /// the object or transaction being gone or the request being broken.
    pub fn refuses_requester(self) -> bool {
        matches!(self, Self::NotExpectedReceiver | Self::ReceiverLimitReached)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::parse(r.as_str()), Some(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(Refusal::parse("SOMETHING_NEWER"), None);
        assert_eq!(Refusal::parse(""), None);
    }
}
