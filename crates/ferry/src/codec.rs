//! Download-service messages on cellnet `Message`s: the bridge between ferry-core's message
//! types and cellnet's headers, return codes and payloads.
//!
//! The reply body's codec is ferry-core's ([`ReplyBody::into_parts`] and
//! [`ReplyBody::decode`]); this module only puts its parts into a FOBS payload (the chunk,
//! `Bytes` carrying its byte-budget permit, stays its own segment, written with one vectored
//! write; a file chunk becomes a cellnet [`FileRegion`], sent from the file with the permit
//! riding along) and takes the received main body out of one (a zero-copy slice of the
//! frame).

use std::sync::Arc;

use bytes::Bytes;
use ferry_cellnet::{FileRegion, Message, MsgpackBody, ReturnCode as WireCode, Segment};
use ferry_core::message::{BodyPart, Reply};
use ferry_core::refusal::REFUSAL_HEADER;
use ferry_core::{Refusal, ReturnCode};
use serde::Serialize;

use crate::error::DownloadError;

/// Map a core return code to the cellnet one (the same NVFlare strings on both sides).
pub(crate) fn to_wire(rc: ReturnCode) -> WireCode {
    WireCode::from(rc.as_str())
}

/// Map a cellnet return code to the core one; a code the core does not know (a newer peer's)
/// counts as `comm_error`, which fails the request without retry.
pub(crate) fn from_wire(rc: &WireCode) -> ReturnCode {
    ReturnCode::parse(rc.as_str()).unwrap_or(ReturnCode::CommError)
}

/// A request payload (`to_vec_named`: the map form NVFlare expects).
pub(crate) fn request<T: Serialize>(req: &T) -> Message {
    Message::from_msgpack(MsgpackBody::from_bytes(Bytes::from(
        ferry_core::message::encode(req),
    )))
}

/// A producer-engine reply as a cellnet reply message.
pub(crate) fn reply_message(reply: Reply) -> Message {
    let rc = to_wire(reply.rc);
    let mut msg = match reply.body {
        Some(body) => Message::from_msgpack(MsgpackBody::from_parts(
            body.into_parts().into_iter().map(segment).collect(),
        )),
        None => Message::new(),
    };
    msg = msg.with_return_code(rc);
    if let Some(why) = reply.error {
        msg = msg.with_header(ferry_cellnet::headers::keys::ERROR, why);
    }
    if let Some(r) = reply.refusal {
        // One more header: NVFlare cells keep unknown headers and never read this one.
        msg = msg.with_header(REFUSAL_HEADER, r.as_str());
    }
    msg
}

/// A part of a reply body as a cellnet payload segment; a file chunk's owner (its byte-budget
/// permit) lives until the region is written.
fn segment(p: BodyPart) -> Segment {
    match p {
        BodyPart::Bytes(b) => Segment::Bytes(b),
        BodyPart::File(f) => {
            Segment::File(FileRegion::new(Arc::clone(f.file()), f.offset(), f.len()).with_owner(f))
        }
    }
}

/// The typed refusal of a reply from a ferry sender (`None` from NVFlare, or for a code this
/// version does not know).
pub(crate) fn refusal(msg: &Message) -> Option<Refusal> {
    msg.headers.get_str(REFUSAL_HEADER).and_then(Refusal::parse)
}

/// The msgpack main body of a received download-service *request* (pull, confirm, cancel,
/// source-failure notice): refused before anything is decoded when the payload on the wire is
/// larger than [`MAX_REQUEST_BYTES`](ferry_core::message::MAX_REQUEST_BYTES) (a FOBS payload
/// with datum sections would otherwise be decoded, its datums copied and the value re-encoded
/// first).
pub(crate) fn request_body(msg: &Message) -> Result<Bytes, DownloadError> {
    use ferry_cellnet::Payload;
    let max = ferry_core::message::MAX_REQUEST_BYTES;
    let size = match &msg.payload {
        Payload::Fobs(f) => f.encoded_len(),
        Payload::Bytes(b) => b.len(),
        Payload::None | Payload::Value(_) => 0,
    };
    if size > max {
        return Err(DownloadError::Protocol(format!(
            "request of {size} bytes exceeds the limit of {max} bytes; refused without decoding it"
        )));
    }
    main_body(msg)
}

/// The msgpack main body of a received download-service message, as one buffer (zero-copy for
/// the usual case; datum sections, which only a Python sender with ≥ 10 MiB chunks produces,
/// are folded back in).
pub(crate) fn main_body(msg: &Message) -> Result<Bytes, DownloadError> {
    if let Some(fobs) = msg.fobs() {
        if !fobs.datums.is_empty() {
            let v = msg
                .value()
                .map_err(|e| DownloadError::Protocol(format!("undecodable payload: {e}")))?;
            let mut out = Vec::new();
            rmpv::encode::write_value(&mut out, &v)
                .map_err(|e| DownloadError::Protocol(format!("re-encoding payload: {e}")))?;
            return Ok(Bytes::from(out));
        }
    }
    msg.msgpack_body()
        .map_err(|e| DownloadError::Protocol(format!("payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::message::ReplyBody;
    use ferry_core::{ChunkData, State};

    #[test]
    fn a_data_reply_keeps_its_chunk_as_a_segment_and_reads_back_the_same() {
        let chunk = Bytes::from(vec![5u8; 4096]);
        let ptr = chunk.as_ptr();
        let body = ReplyBody::data(State::new(), ChunkData::Bytes(chunk));
        let msg = reply_message(Reply::ok(body.clone()));
        assert_eq!(msg.return_code(), WireCode::Ok);
        let back = main_body(&msg).unwrap();
        assert_eq!(ReplyBody::decode(&back).unwrap(), body);
        assert!(msg
            .payload
            .into_segments()
            .iter()
            .any(|s| s.as_bytes().is_some_and(|b| b.as_ptr() == ptr)));
    }

    #[test]
    fn a_refusal_travels_as_code_text_and_typed_header() {
        let msg = reply_message(Reply::refused(Refusal::ShutDown, "stopping"));
        assert_eq!(
            from_wire(&msg.return_code()),
            ReturnCode::ServiceUnavailable
        );
        assert_eq!(msg.error_text(), Some("stopping"));
        assert_eq!(refusal(&msg), Some(Refusal::ShutDown));
        assert_eq!(refusal(&Message::new()), None);
    }

    #[test]
    fn return_codes_map_both_ways() {
        for rc in [
            ReturnCode::Ok,
            ReturnCode::Timeout,
            ReturnCode::InvalidRequest,
            ReturnCode::ProcessException,
            ReturnCode::CommError,
        ] {
            assert_eq!(from_wire(&to_wire(rc)), rc);
        }
    }
}
