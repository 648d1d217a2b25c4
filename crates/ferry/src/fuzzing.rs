//! The decoders of what peers send, exposed for the coverage-guided fuzz harness under `fuzz/`
//! (feature `fuzzing`). Not a stable API: these are the exact functions the service (sender
//! side), the download loop (receiver side) and the peer coordinator run on every message a
//! peer sends; the reply body itself is decoded by the receiver engine
//! (`Download::reply_payload`). Relay outboards and pass-through refs are decoded by public
//! functions ([`Outboard::verified`](crate::relay::outboard::Outboard::verified),
//! [`ObjectRef::from_value`](crate::passthrough::ObjectRef::from_value)).

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use ferry_cellnet::{Message, ReturnCode as WireCode};
use ferry_core::peers::message::Answer;
use ferry_core::peers::Scheduler;
use ferry_core::ReturnCode;

use crate::error::DownloadError;

/// The sender's reading of a received request or source-failure notice: refused unread above
/// the request size limit, else its msgpack main body.
pub fn request_body(msg: &Message) -> Result<Bytes, DownloadError> {
    crate::codec::request_body(msg)
}

/// The receiver's reading of a reply: its msgpack main body (datum sections folded back).
pub fn main_body(msg: &Message) -> Result<Bytes, DownloadError> {
    crate::codec::main_body(msg)
}

/// The receiver's mapping of a reply's `cn__return_code` to the engine's code.
pub fn return_code(rc: &WireCode) -> ReturnCode {
    crate::codec::from_wire(rc)
}

/// The receiver's reading of a ferry sender's typed refusal (the `ferry__refusal` header).
pub fn refusal(msg: &Message) -> Option<ferry_core::Refusal> {
    crate::codec::refusal(msg)
}

/// The peer coordinator's answer to one scheduling request (`ferry_peers__join`, `__report` or
/// `__failed`) from the receiver `origin`, given the schedulers of the shared refs by ref id:
/// the request body refused unread above the size limit, decoded, handed to the ref's
/// scheduler, and the reply message it sends.
pub fn peer_request(
    refs: &mut HashMap<String, Scheduler>,
    topic: &str,
    origin: &str,
    msg: &Message,
    now: Instant,
) -> Message {
    crate::peers::answer_request(refs, topic, origin, msg, now)
}

/// The peer coordinator's timer: fire the schedulers' timeouts due at `now`.
pub fn peer_timeouts(refs: &mut HashMap<String, Scheduler>, now: Instant) {
    crate::peers::fire_timeouts(refs, now)
}

/// A receiver's reading of the sender's reply to a scheduling request.
pub fn peer_reply(msg: &Message) -> Result<Answer, String> {
    crate::peers::read_reply(msg)
}
