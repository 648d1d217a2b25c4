//! Download-service messages on cellnet `Message`s.
//!
//! Requests are small msgpack maps. Data replies are built as segments so that the chunk bytes
//! are never copied on the sender: the map header and the small keys are encoded into one
//! buffer, the chunk (`Bytes`, carrying its byte-budget permit) follows as its own segment, and
//! the connection writes them with one vectored write. `data` is put last in the map; NVFlare
//! decodes the map into a dict, so key order does not matter to it.

use bytes::{Bytes, BytesMut};
use ferry_cellnet::{Message, MsgpackBody, ReturnCode as WireCode};
use ferry_core::message::{Reply, ReplyBody};
use ferry_core::refusal::REFUSAL_HEADER;
use ferry_core::{ChunkData, Refusal, ReturnCode};
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
        Some(body) => Message::from_msgpack(encode_body(body)),
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

/// The typed refusal of a reply from a ferry sender (`None` from NVFlare, or for a code this
/// version does not know).
pub(crate) fn refusal(msg: &Message) -> Option<Refusal> {
    msg.headers.get_str(REFUSAL_HEADER).and_then(Refusal::parse)
}

/// Encode a reply body with the chunk bytes as separate segments.
pub(crate) fn encode_body(body: ReplyBody) -> MsgpackBody {
    let mut head = Vec::with_capacity(256);
    let n = 1 // status
        + body.state.is_some() as u32
        + body.cancel_capable.is_some() as u32
        + body.confirm_expected.is_some() as u32
        + body.confirm_nonce.is_some() as u32
        + body.ferry_plan.is_some() as u32
        + body.data.is_some() as u32;
    // Writing into a Vec cannot fail: the io::Write of Vec is infallible.
    let _ = rmp::encode::write_map_len(&mut head, n);
    let _ = rmp::encode::write_str(&mut head, "status");
    let _ = rmp::encode::write_str(&mut head, body.status.as_str());
    if let Some(state) = &body.state {
        let _ = rmp::encode::write_str(&mut head, "state");
        let _ = rmp_serde::encode::write_named(&mut head, state);
    }
    if let Some(v) = body.cancel_capable {
        let _ = rmp::encode::write_str(&mut head, "cancel_capable");
        let _ = rmp::encode::write_bool(&mut head, v);
    }
    if let Some(v) = body.confirm_expected {
        let _ = rmp::encode::write_str(&mut head, "confirm_expected");
        let _ = rmp::encode::write_bool(&mut head, v);
    }
    if let Some(nonce) = &body.confirm_nonce {
        let _ = rmp::encode::write_str(&mut head, "confirm_nonce");
        let _ = rmp::encode::write_str(&mut head, nonce);
    }
    if let Some(plan) = &body.ferry_plan {
        let _ = rmp::encode::write_str(&mut head, "ferry_plan");
        let _ = rmp_serde::encode::write_named(&mut head, plan);
    }
    let mut segments = Vec::with_capacity(4);
    match body.data {
        None => segments.push(Bytes::from(head)),
        Some(ChunkData::Bytes(b)) => {
            let _ = rmp::encode::write_str(&mut head, "data");
            let _ = rmp::encode::write_bin_len(&mut head, b.len() as u32);
            segments.push(Bytes::from(head));
            segments.push(b);
        }
        Some(ChunkData::Items(items)) => {
            let _ = rmp::encode::write_str(&mut head, "data");
            let _ = rmp::encode::write_array_len(&mut head, items.len() as u32);
            let mut pending = BytesMut::from(&head[..]);
            for it in items {
                let mut h = Vec::with_capacity(5);
                let _ = rmp::encode::write_bin_len(&mut h, it.len() as u32);
                pending.extend_from_slice(&h);
                segments.push(pending.split().freeze());
                segments.push(it);
            }
            if !pending.is_empty() {
                segments.push(pending.freeze());
            }
        }
    }
    MsgpackBody::from_segments(segments)
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

/// Decode a reply body without copying the chunk: `data` (a `bin`, or a list of `bin`) comes
/// out as slices of `body`, the buffer the frame was read into. The other keys are small and go
/// through serde. Unknown keys are skipped, as NVFlare does.
pub(crate) fn decode_reply(body: &Bytes) -> Result<ReplyBody, String> {
    use ferry_core::message::ReplyStatus;
    let mut rd: &[u8] = &body[..];
    let offset = |rd: &[u8]| body.len() - rd.len();
    let n = rmp::decode::read_map_len(&mut rd).map_err(|e| format!("reply is not a map: {e}"))?;
    let mut status: Option<ReplyStatus> = None;
    let mut out = ReplyBody::terminal(ReplyStatus::Ok);
    for _ in 0..n {
        let klen =
            rmp::decode::read_str_len(&mut rd).map_err(|e| format!("reply key: {e}"))? as usize;
        if klen > rd.len() {
            return Err("truncated reply key".into());
        }
        let key = std::str::from_utf8(&rd[..klen])
            .map_err(|_| "reply key is not UTF-8".to_string())?
            .to_string();
        rd = &rd[klen..];
        if key == "data" {
            out.data = decode_data(body, &mut rd)?;
            continue;
        }
        let start = offset(rd);
        rmpv::decode::read_value_ref(&mut rd)
            .map_err(|e| format!("reply value of {key:?}: {e}"))?;
        let v = &body[start..offset(rd)];
        let bad = |e: rmp_serde::decode::Error| format!("reply value of {key:?}: {e}");
        match key.as_str() {
            "status" => status = Some(rmp_serde::from_slice(v).map_err(bad)?),
            "state" => out.state = rmp_serde::from_slice(v).map_err(bad)?,
            "cancel_capable" => out.cancel_capable = rmp_serde::from_slice(v).map_err(bad)?,
            "confirm_expected" => out.confirm_expected = rmp_serde::from_slice(v).map_err(bad)?,
            "confirm_nonce" => out.confirm_nonce = rmp_serde::from_slice(v).map_err(bad)?,
            "ferry_plan" => out.ferry_plan = rmp_serde::from_slice(v).map_err(bad)?,
            _ => {}
        }
    }
    out.status = status.ok_or_else(|| "reply without status".to_string())?;
    Ok(out)
}

/// `data`: nil, a `bin`, or an array of `bin`, sliced out of `body`.
fn decode_data(body: &Bytes, rd: &mut &[u8]) -> Result<Option<ChunkData>, String> {
    let bin = |rd: &mut &[u8]| -> Result<Bytes, String> {
        let len =
            rmp::decode::read_bin_len(rd).map_err(|e| format!("data must be bytes: {e}"))? as usize;
        if len > rd.len() {
            return Err("truncated data".into());
        }
        let start = body.len() - rd.len();
        *rd = &rd[len..];
        Ok(body.slice(start..start + len))
    };
    match rd.first() {
        Some(0xc0) => {
            *rd = &rd[1..];
            Ok(None)
        }
        Some(0xc4..=0xc6) => Ok(Some(ChunkData::Bytes(bin(rd)?))),
        Some(0x90..=0x9f | 0xdc | 0xdd) => {
            let n =
                rmp::decode::read_array_len(rd).map_err(|e| format!("data list: {e}"))? as usize;
            // Every item takes at least one byte: a hostile count cannot make us allocate more.
            if n > rd.len() {
                return Err("data list longer than the message".into());
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(bin(rd)?);
            }
            Ok(Some(ChunkData::Items(items)))
        }
        _ => Err("data must be bytes or a list of bytes".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::message::ReplyStatus;
    use ferry_core::State;

    fn concat(body: &MsgpackBody) -> Vec<u8> {
        body.segments()
            .iter()
            .flat_map(|b| b.iter().copied())
            .collect()
    }

    #[test]
    fn segmented_bodies_decode_to_the_same_reply() {
        for data in [
            ChunkData::Bytes(Bytes::from(vec![9u8; 70_000])),
            ChunkData::Items(vec![
                Bytes::from_static(b"ab"),
                Bytes::new(),
                Bytes::from(vec![1u8; 300]),
            ]),
            ChunkData::Items(vec![]),
        ] {
            let body = ReplyBody::data(State::new().with("received_bytes", 70_000u64), data);
            let enc = encode_body(body.clone());
            let flat = concat(&enc);
            assert_eq!(ReplyBody::decode(&flat).unwrap(), body);
            let flat = Bytes::from(flat);
            let fast = decode_reply(&flat).unwrap();
            assert_eq!(fast, body);
            if let Some(ChunkData::Bytes(b)) = &fast.data {
                assert!(
                    flat.as_ptr_range().contains(&b.as_ptr()),
                    "sliced, not copied"
                );
            }
            // and the serde encoding (other key order) decodes the same
            assert_eq!(decode_reply(&Bytes::from(body.encode())).unwrap(), body);
            // same bytes as the serde encoding modulo key order: same length
            assert_eq!(flat.len(), body.encode().len());
        }
        let term = ReplyBody {
            confirm_expected: Some(true),
            confirm_nonce: Some("abc".into()),
            ..ReplyBody::terminal(ReplyStatus::Eof)
        };
        assert_eq!(
            ReplyBody::decode(&concat(&encode_body(term.clone()))).unwrap(),
            term
        );
    }

    #[test]
    fn hostile_reply_bodies_are_refused() {
        for bad in [
            &[0x92u8, 0x01, 0x02][..],                                // not a map
            &[0x81, 0xa4, b'd', b'a', b't', b'a', 0xc4, 0x09, 1][..], // bin longer than the message
            &[
                0x81, 0xa4, b'd', b'a', b't', b'a', 0xdd, 0xff, 0xff, 0xff, 0xff,
            ][..], // huge list
            &[0x81, 0xa4, b'd', b'a', b't', b'a', 0x92, 0x01, 0x02][..], // list of integers
            &[0x81, 0xa4, b'd', b'a', b't', b'a', 0xa1, b'x'][..],    // a string
            &[0x80][..],                                              // no status
            &[
                0x81, 0xa6, b's', b't', b'a', b't', b'u', b's', 0xa3, b'b', b'a', b'd',
            ][..],
        ] {
            assert!(
                decode_reply(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn chunk_bytes_are_not_copied() {
        let chunk = Bytes::from(vec![5u8; 4096]);
        let ptr = chunk.as_ptr();
        let enc = encode_body(ReplyBody::data(State::new(), ChunkData::Bytes(chunk)));
        assert!(enc.segments().iter().any(|s| s.as_ptr() == ptr));
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
