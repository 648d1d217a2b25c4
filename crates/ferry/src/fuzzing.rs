//! The download-service payload decoders, exposed for the coverage-guided fuzz harness under
//! `fuzz/` (feature `fuzzing`). Not a stable API: these are the exact functions the service
//! (sender side) and the download loop (receiver side) run on every message a peer sends; the
//! reply body itself is decoded by the receiver engine (`Download::reply_payload`).

use bytes::Bytes;
use ferry_cellnet::{Message, ReturnCode as WireCode};
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
