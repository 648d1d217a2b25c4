//! The peer-scheduling protocol: three requests from a receiver to the sender (channel
//! [`CHANNEL`]) and one reply shape. Ferry-only: NVFlare cells never send them, so they are
//! never redirected. Payloads are msgpack maps like the Download Service's.

use serde::{Deserialize, Serialize};

use super::{Directive, PeerOffer, Source};
use crate::message::{encode, MAX_REQUEST_BYTES};

/// Cellnet channel of the peer scheduler.
pub const CHANNEL: &str = "ferry_peers__";
/// Join (or rejoin) the schedule of a ref: [`JoinRequest`].
pub const TOPIC_JOIN: &str = "ferry_peers__join";
/// Periodic position report: [`ReportRequest`].
pub const TOPIC_REPORT: &str = "ferry_peers__report";
/// The current source failed: [`FailedRequest`].
pub const TOPIC_FAILED: &str = "ferry_peers__failed";

/// A receiver starts pulling `ref_id` at `position`, offering to serve it or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The ref.
    pub ref_id: String,
    /// Bytes it already has (a resumed part).
    pub position: u64,
    /// Where it serves, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<PeerOffer>,
}

/// A receiver's periodic report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// The ref.
    pub ref_id: String,
    /// Contiguous bytes it has.
    pub position: u64,
    /// It has everything, verified against the ticket.
    pub complete: bool,
    /// Bytes it served to other receivers so far (for the sender's report; absent from
    /// receivers that do not serve, and from older ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<u64>,
}

/// A receiver's source failed (`lied`: its data failed verification).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRequest {
    /// The ref.
    pub ref_id: String,
    /// Contiguous bytes it has.
    pub position: u64,
    /// The data failed the ticket's digest.
    pub lied: bool,
    /// What happened, for the sender's log.
    pub reason: String,
}

/// The scheduler's answer to any request: `action` is `pull` (the source to use now, after a
/// join or a failure), `stay`, `switch` or `release`; `peer` is the source, absent for the
/// origin; `error` says why a request was refused (then `action` is `origin`: pull from the
/// sender).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleReply {
    /// What to do.
    pub action: String,
    /// The peer to pull from (absent: the origin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerOffer>,
    /// Why a request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a receiver makes of a [`ScheduleReply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Pull from this source (after a join or a failure report).
    Pull(Source),
    /// A report's directive.
    Directive(Directive),
    /// The sender refused the request (pull from the origin).
    Refused(String),
}

impl ScheduleReply {
    /// The reply to a join or a failure.
    pub fn pull(source: Source) -> Self {
        let peer = match source {
            Source::Origin => None,
            Source::Peer(p) => Some(p),
        };
        Self {
            action: "pull".into(),
            peer,
            error: None,
        }
    }

    /// The reply to a report.
    pub fn directive(d: Directive) -> Self {
        let (action, peer) = match d {
            Directive::Stay => ("stay", None),
            Directive::Release => ("release", None),
            Directive::Switch(Source::Origin) => ("switch", None),
            Directive::Switch(Source::Peer(p)) => ("switch", Some(p)),
        };
        Self {
            action: action.into(),
            peer,
            error: None,
        }
    }

    /// A refusal.
    pub fn refused(why: impl Into<String>) -> Self {
        Self {
            action: "origin".into(),
            peer: None,
            error: Some(why.into()),
        }
    }

    /// What the receiver should do.
    pub fn answer(self) -> Answer {
        let source = match self.peer {
            Some(p) => Source::Peer(p),
            None => Source::Origin,
        };
        match self.action.as_str() {
            "pull" => Answer::Pull(source),
            "stay" => Answer::Directive(Directive::Stay),
            "release" => Answer::Directive(Directive::Release),
            "switch" => Answer::Directive(Directive::Switch(source)),
            other => Answer::Refused(
                self.error
                    .unwrap_or_else(|| format!("unknown scheduling action {other:?}")),
            ),
        }
    }

    /// msgpack bytes.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// Decode any of the requests or the reply, refusing payloads above
/// [`MAX_REQUEST_BYTES`] unread.
pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, String> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(format!(
            "peer-scheduling message of {} bytes is too large",
            payload.len()
        ));
    }
    rmp_serde::from_slice(payload).map_err(|e| format!("undecodable peer-scheduling message: {e}"))
}

/// msgpack bytes of a request.
pub fn encode_request<T: Serialize>(msg: &T) -> Vec<u8> {
    encode(msg)
}
