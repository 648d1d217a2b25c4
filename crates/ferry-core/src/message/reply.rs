//! Replies to a pull, and their one codec.
//!
//! A reply body is a msgpack map in NVFlare's key order (`status`, `state`, `data`,
//! `cancel_capable`, `confirm_expected`, `confirm_nonce`, then ferry's `ferry_plan`); optional
//! keys are omitted when absent, never `nil`. The encoder never copies the chunk:
//! [`ReplyBody::into_parts`] gives the map around the chunk as small buffers and the chunk
//! bytes as their own parts, for one vectored write (a [`FileChunk`] stays a region of its
//! file, for the connection to send from the file). The decoder never copies it either:
//! [`ReplyBody::decode`] slices `data` (a `bin`, or a list of `bin`) out of the buffer the
//! message was read into. The other keys are small and go through serde; unknown keys are
//! skipped, as NVFlare does. Every sender and receiver of the workspace — the tokio glue, the
//! simulator, the tests — uses these two functions.

use crate::plan::WirePlan;
use crate::{ChunkData, FileChunk, Refusal, ReturnCode, State};
use bytes::Bytes;

/// The `status` of a reply (NVFlare's `ProduceRC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyStatus {
    /// A chunk follows.
    Ok,
    /// The receiver has everything.
    Eof,
    /// The producer failed logically.
    Error,
}

impl ReplyStatus {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Eof => "eof",
            Self::Error => "error",
        }
    }

    /// The status named by a wire string.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Ok, Self::Eof, Self::Error]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One part of an encoded reply body; the parts are concatenated on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyPart {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file chunk's bytes, still in the file.
    File(FileChunk),
}

impl BodyPart {
    /// Length on the wire.
    pub fn len(&self) -> usize {
        match self {
            Self::Bytes(b) => b.len(),
            Self::File(f) => f.len(),
        }
    }

    /// True if the part puts nothing on the wire.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The body of a reply to a pull.
///
/// Shapes: data `{status:"ok", state, data, cancel_capable:true[, ferry_plan]}`; terminal
/// `{status:"eof"|"error"[, confirm_expected:true, confirm_nonce]}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplyBody {
    /// What this reply is.
    pub status: ReplyStatus,
    /// The state to send back for the next chunk (data replies).
    pub state: Option<State>,
    /// The chunk (data replies). Each `bin` holds at most 4 GiB (msgpack's limit; chunks are
    /// far smaller).
    pub data: Option<ChunkData>,
    /// `true` on every data reply: the producer understands `cancel`.
    pub cancel_capable: Option<bool>,
    /// `true` on a provisional terminal reply: send a confirm.
    pub confirm_expected: Option<bool>,
    /// The nonce to confirm with.
    pub confirm_nonce: Option<String>,
    /// Ferry extension on the first data reply: how the states advance.
    pub ferry_plan: Option<WirePlan>,
}

/// Why a reply body could not be decoded. The download fails with it as a bad reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyDecodeError {
    /// The body is not a msgpack map.
    #[error("reply is not a map: {0}")]
    NotAMap(String),
    /// A key is not a UTF-8 string, or runs past the end.
    #[error("reply key: {0}")]
    Key(String),
    /// A known key holds a value of the wrong shape, or a value runs past the end.
    #[error("reply value of {key:?}: {why}")]
    Value {
        /// The key.
        key: String,
        /// What is wrong with its value.
        why: String,
    },
    /// `data` is not nil, a `bin` or a list of `bin`, or is cut short.
    #[error("reply data: {0}")]
    Data(String),
    /// The map has no `status`.
    #[error("reply without status")]
    NoStatus,
}

impl ReplyBody {
    /// A bare terminal body `{status}` (legacy terminal serve, tombstone replay).
    pub fn terminal(status: ReplyStatus) -> Self {
        Self {
            status,
            state: None,
            data: None,
            cancel_capable: None,
            confirm_expected: None,
            confirm_nonce: None,
            ferry_plan: None,
        }
    }

    /// A data body `{status:"ok", state, data, cancel_capable:true}`.
    pub fn data(state: State, data: ChunkData) -> Self {
        Self {
            state: Some(state),
            data: Some(data),
            cancel_capable: Some(true),
            ..Self::terminal(ReplyStatus::Ok)
        }
    }

    /// The msgpack map as segments in memory (a [`FileChunk`] is read): what
    /// [`into_parts`](Self::into_parts) gives, for writers that cannot send from a file.
    /// `UnexpectedEof` if a file chunk's file no longer holds it.
    pub fn into_segments(self) -> std::io::Result<Vec<Bytes>> {
        self.into_parts()
            .into_iter()
            .map(|p| match p {
                BodyPart::Bytes(b) => Ok(b),
                BodyPart::File(f) => f.read(),
            })
            .collect()
    }

    /// The msgpack map as parts to write one after the other: the keys and small values in
    /// a few buffers, each chunk `bin` as the very `Bytes` it came in (never copied), or as
    /// the region of its file.
    pub fn into_parts(self) -> Vec<BodyPart> {
        let n = 1 // status
            + u32::from(self.state.is_some())
            + u32::from(self.data.is_some())
            + u32::from(self.cancel_capable.is_some())
            + u32::from(self.confirm_expected.is_some())
            + u32::from(self.confirm_nonce.is_some())
            + u32::from(self.ferry_plan.is_some());
        let mut w = SegmentWriter::default();
        // Writing into a Vec cannot fail (its io::Write is infallible), nor can serializing
        // the plain maps and integers of a state or a plan: the results are ignored.
        let _ = rmp::encode::write_map_len(&mut w.head, n);
        w.str("status");
        w.str(self.status.as_str());
        if let Some(state) = &self.state {
            w.str("state");
            let _ = rmp_serde::encode::write_named(&mut w.head, state);
        }
        match self.data {
            None => {}
            Some(ChunkData::Bytes(b)) => {
                w.str("data");
                w.bin(b);
            }
            Some(ChunkData::File(f)) => {
                w.str("data");
                w.bin_file(f);
            }
            Some(ChunkData::Items(items)) => {
                w.str("data");
                let _ = rmp::encode::write_array_len(&mut w.head, len32(items.len()));
                for it in items {
                    w.bin(it);
                }
            }
            Some(ChunkData::ItemParts(items)) => {
                w.str("data");
                let _ = rmp::encode::write_array_len(&mut w.head, len32(items.len()));
                for parts in items {
                    w.bin_parts(parts);
                }
            }
        }
        if let Some(v) = self.cancel_capable {
            w.str("cancel_capable");
            let _ = rmp::encode::write_bool(&mut w.head, v);
        }
        if let Some(v) = self.confirm_expected {
            w.str("confirm_expected");
            let _ = rmp::encode::write_bool(&mut w.head, v);
        }
        if let Some(nonce) = &self.confirm_nonce {
            w.str("confirm_nonce");
            w.str(nonce);
        }
        if let Some(plan) = &self.ferry_plan {
            w.str("ferry_plan");
            let _ = rmp_serde::encode::write_named(&mut w.head, plan);
        }
        w.finish()
    }

    /// The msgpack map in one buffer (the segments of [`into_segments`](Self::into_segments)
    /// joined; the chunk is copied once). Fails only for a [`FileChunk`] whose file no longer
    /// holds it.
    pub fn encode(&self) -> std::io::Result<Vec<u8>> {
        let segments = self.clone().into_segments()?;
        let mut out = Vec::with_capacity(segments.iter().map(Bytes::len).sum());
        for s in &segments {
            out.extend_from_slice(s);
        }
        Ok(out)
    }

    /// Decode a reply body. `data` comes out as slices of `body` (no copy); anything but a map
    /// with a known `status` and well-shaped known keys is an error. Sizes the peer claims are
    /// checked against what it sent before anything is allocated.
    pub fn decode(body: &Bytes) -> Result<Self, ReplyDecodeError> {
        let mut rd: &[u8] = &body[..];
        let n = rmp::decode::read_map_len(&mut rd)
            .map_err(|e| ReplyDecodeError::NotAMap(e.to_string()))?;
        let mut status: Option<ReplyStatus> = None;
        let mut out = Self::terminal(ReplyStatus::Ok);
        for _ in 0..n {
            let key = read_key(&mut rd)?;
            if key == "data" {
                out.data = decode_data(body, &mut rd)?;
                continue;
            }
            let start = body.len() - rd.len();
            let bad = |why: String| ReplyDecodeError::Value {
                key: key.to_string(),
                why,
            };
            rmpv::decode::read_value_ref(&mut rd).map_err(|e| bad(e.to_string()))?;
            let v = &body[start..body.len() - rd.len()];
            let de = |e: rmp_serde::decode::Error| bad(e.to_string());
            match key {
                "status" => {
                    let s: String = rmp_serde::from_slice(v).map_err(de)?;
                    status = Some(
                        ReplyStatus::parse(&s)
                            .ok_or_else(|| bad(format!("unknown status {s:?}")))?,
                    );
                }
                "state" => out.state = rmp_serde::from_slice(v).map_err(de)?,
                "cancel_capable" => out.cancel_capable = rmp_serde::from_slice(v).map_err(de)?,
                "confirm_expected" => {
                    out.confirm_expected = rmp_serde::from_slice(v).map_err(de)?
                }
                "confirm_nonce" => out.confirm_nonce = rmp_serde::from_slice(v).map_err(de)?,
                "ferry_plan" => out.ferry_plan = rmp_serde::from_slice(v).map_err(de)?,
                _ => {}
            }
        }
        out.status = status.ok_or(ReplyDecodeError::NoStatus)?;
        Ok(out)
    }
}

/// Builds the segments of an encoded body: small writes go to `head`; a chunk closes `head`
/// as a segment and follows as its own.
#[derive(Default)]
struct SegmentWriter {
    head: Vec<u8>,
    segments: Vec<BodyPart>,
}

impl SegmentWriter {
    fn str(&mut self, s: &str) {
        let _ = rmp::encode::write_str(&mut self.head, s);
    }

    fn bin(&mut self, b: Bytes) {
        let _ = rmp::encode::write_bin_len(&mut self.head, len32(b.len()));
        self.cut();
        if !b.is_empty() {
            self.segments.push(BodyPart::Bytes(b));
        }
    }

    /// One `bin` whose content stays in its file.
    fn bin_file(&mut self, f: FileChunk) {
        let _ = rmp::encode::write_bin_len(&mut self.head, len32(f.len()));
        self.cut();
        if !f.is_empty() {
            self.segments.push(BodyPart::File(f));
        }
    }

    /// Close `head` as a part of its own.
    fn cut(&mut self) {
        self.segments
            .push(BodyPart::Bytes(Bytes::from(std::mem::take(&mut self.head))));
    }

    /// One `bin` whose content is `parts` one after the other, each its own segment.
    fn bin_parts(&mut self, parts: Vec<Bytes>) {
        let len = parts.iter().map(Bytes::len).sum();
        let _ = rmp::encode::write_bin_len(&mut self.head, len32(len));
        self.cut();
        self.segments.extend(
            parts
                .into_iter()
                .filter(|p| !p.is_empty())
                .map(BodyPart::Bytes),
        );
    }

    fn finish(mut self) -> Vec<BodyPart> {
        if !self.head.is_empty() {
            self.segments.push(BodyPart::Bytes(Bytes::from(self.head)));
        }
        self.segments
    }
}

/// A msgpack length. Chunks are checked far below 4 GiB where they are made; past it the
/// length saturates and the receiver refuses the reply as truncated.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A map key: a UTF-8 string within the body.
fn read_key<'a>(rd: &mut &'a [u8]) -> Result<&'a str, ReplyDecodeError> {
    let len =
        rmp::decode::read_str_len(rd).map_err(|e| ReplyDecodeError::Key(e.to_string()))? as usize;
    if len > rd.len() {
        return Err(ReplyDecodeError::Key("truncated".into()));
    }
    let (key, rest) = rd.split_at(len);
    *rd = rest;
    std::str::from_utf8(key).map_err(|_| ReplyDecodeError::Key("not UTF-8".into()))
}

/// `data`: nil, a `bin`, or an array of `bin`, sliced out of `body`.
fn decode_data(body: &Bytes, rd: &mut &[u8]) -> Result<Option<ChunkData>, ReplyDecodeError> {
    let bin = |rd: &mut &[u8]| -> Result<Bytes, ReplyDecodeError> {
        let len = rmp::decode::read_bin_len(rd)
            .map_err(|e| ReplyDecodeError::Data(format!("must be bytes: {e}")))?
            as usize;
        if len > rd.len() {
            return Err(ReplyDecodeError::Data("truncated".into()));
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
            let n = rmp::decode::read_array_len(rd)
                .map_err(|e| ReplyDecodeError::Data(format!("list: {e}")))?
                as usize;
            // Every item takes at least one byte: a hostile count cannot make us allocate more.
            if n > rd.len() {
                return Err(ReplyDecodeError::Data(
                    "list longer than the message".into(),
                ));
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(bin(rd)?);
            }
            Ok(Some(ChunkData::Items(items)))
        }
        _ => Err(ReplyDecodeError::Data(
            "must be bytes or a list of bytes".into(),
        )),
    }
}

/// A reply from the producer engine: a return code and, for `ok`, usually a body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// `cn__return_code`.
    pub rc: ReturnCode,
    /// The payload map; `None` for error codes and for confirm/cancel acknowledgements.
    pub body: Option<ReplyBody>,
    /// Why, for `invalid_request`/`process_exception` (log text, `cn__error`).
    pub error: Option<String>,
    /// The typed reason of a refusal (ferry's [`REFUSAL_HEADER`](crate::refusal::REFUSAL_HEADER)).
    pub refusal: Option<Refusal>,
}

impl Reply {
    /// `ok` with a body.
    pub fn ok(body: ReplyBody) -> Self {
        Self {
            rc: ReturnCode::Ok,
            body: Some(body),
            error: None,
            refusal: None,
        }
    }

    /// `ok` without a body (confirm/cancel acknowledgement).
    pub fn ack() -> Self {
        Self {
            rc: ReturnCode::Ok,
            body: None,
            error: None,
            refusal: None,
        }
    }

    /// An error code with a reason and no body.
    pub fn error(rc: ReturnCode, why: impl Into<String>) -> Self {
        Self {
            rc,
            body: None,
            error: Some(why.into()),
            refusal: None,
        }
    }

    /// A refusal: `invalid_request` (`service_unavailable` for [`Refusal::ShutDown`]) with
    /// the words and the typed code.
    pub fn refused(refusal: Refusal, why: impl Into<String>) -> Self {
        let rc = match refusal {
            Refusal::ShutDown => ReturnCode::ServiceUnavailable,
            _ => ReturnCode::InvalidRequest,
        };
        Self {
            refusal: Some(refusal),
            ..Self::error(rc, why)
        }
    }
}

#[cfg(test)]
mod tests;
