//! The `sm__*` headers of the byte-stream protocol (f3-wire.md §4.2), typed: what a message on
//! `sm__STREAM` says ([`StreamMsg::parse`]), the stream messages this cell sends (chunks, ACKs,
//! ERRORs, stamped by [`Stamp`]), and the headers a reassembled blob gives its handler.

use crate::headers::{keys, stream_keys as sk, Headers};
use crate::message::encoding;

use super::{Address, Body, Stamp};

/// `sm__dt` values.
pub mod data_type {
    /// A chunk that is not the last.
    pub const CHUNK: u64 = 1;
    /// The last chunk.
    pub const FINAL: u64 = 2;
    /// Receiver → sender acknowledgement.
    pub const ACK: u64 = 3;
    /// Abort (either direction).
    pub const ERROR: u64 = 6;
}

/// What a chunk says about itself and its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkHead {
    /// `sm__id`.
    pub sid: u64,
    /// `sm__sq`.
    pub seq: u64,
    /// `sm__dt` is FINAL: the last chunk.
    pub last: bool,
    /// `sm__sz`: the size the sender claims for the whole blob (0: unknown). A claim only:
    /// nothing is reserved for it.
    pub size: u64,
    /// `sm__ws`: the sender's window, if it says.
    pub window: Option<u64>,
}

/// A message on `sm__STREAM`, as the cell acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StreamMsg {
    /// `sm__DATA`: a chunk of a stream.
    Chunk(ChunkHead),
    /// `sm__DATA` with `sm__dt` ERROR: the sender aborts its stream.
    SenderAbort {
        /// `sm__id`.
        sid: u64,
        /// `sm__em`.
        why: String,
    },
    /// `sm__ACK`: the receiver consumed `offset` bytes.
    Ack {
        /// `sm__id`.
        sid: u64,
        /// `sm__os`.
        offset: u64,
    },
    /// `sm__ACK` or `sm__ERROR` with `sm__dt` ERROR: the receiver aborts the stream.
    ReceiverAbort {
        /// `sm__id`.
        sid: u64,
        /// `sm__em`.
        why: String,
        /// `sm__ri`: the streamed request it concerns, if the receiver says.
        ri: Option<String>,
    },
    /// `sm__ERROR` without `sm__dt` ERROR: nothing to do.
    Stray {
        /// `sm__id`.
        sid: u64,
    },
}

impl StreamMsg {
    /// Read a message on topic `topic` of `sm__STREAM`.
    pub fn parse(topic: &str, h: &Headers) -> Result<StreamMsg, String> {
        let Some(sid) = h.get_u64(sk::ID) else {
            return Err("stream message without sm__id".into());
        };
        let dt = h.get_u64(sk::DATA_TYPE).unwrap_or(0);
        let why = |default: &str| h.get_str(sk::ERROR_MSG).unwrap_or(default).to_string();
        Ok(match topic {
            sk::TOPIC_DATA if dt == data_type::ERROR => StreamMsg::SenderAbort {
                sid,
                why: why("aborted by sender"),
            },
            sk::TOPIC_DATA => StreamMsg::Chunk(ChunkHead {
                sid,
                seq: h.get_u64(sk::SEQ).unwrap_or(0),
                last: dt == data_type::FINAL,
                size: h.get_u64(sk::SIZE).unwrap_or(0),
                window: h.get_u64(sk::WINDOW),
            }),
            sk::TOPIC_ACK | sk::TOPIC_ERROR if dt == data_type::ERROR => StreamMsg::ReceiverAbort {
                sid,
                why: why("stream rejected by receiver"),
                ri: h.get_str(sk::REQ_ID).map(str::to_string),
            },
            sk::TOPIC_ACK => StreamMsg::Ack {
                sid,
                offset: h.get_u64(sk::OFFSET).unwrap_or(0),
            },
            sk::TOPIC_ERROR => StreamMsg::Stray { sid },
            other => return Err(format!("unknown stream topic {other:?}")),
        })
    }
}

/// One chunk this cell sends: its place in the stream and what the blob is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChunkOut<'a> {
    /// `sm__id`.
    pub sid: u64,
    /// `sm__sq`.
    pub seq: u64,
    /// The last chunk (`sm__dt` FINAL).
    pub last: bool,
    /// `sm__os`: the chunk's offset in the blob.
    pub offset: u64,
    /// `sm__sz`: the blob's size.
    pub total: u64,
    /// `sm__pe`: the blob's payload encoding.
    pub encoding: &'a str,
    /// `sm__ch`, `sm__tp`: the blob's channel and topic.
    pub channel: &'a str,
    /// See `channel`.
    pub topic: &'a str,
    /// `sm__ri` of a streamed request or reply.
    pub ri: Option<&'a str>,
    /// `sm__cs` and `sm__ws` (chunk size, window), sent with chunk 0.
    pub first: Option<(u64, u64)>,
    /// Bytes in this chunk.
    pub len: usize,
}

impl Stamp<'_> {
    /// A chunk for `target`: the blob's own headers, the `sm__*` keys, then the cellnet keys
    /// of a fire-and-forget REQ on `sm__STREAM`/`sm__DATA` (which overwrite any the blob
    /// carried).
    pub fn stream_chunk(&self, blob: &Headers, target: &str, c: &ChunkOut<'_>) -> Headers {
        let mut h = blob.clone();
        if let Some(ri) = c.ri {
            h.insert(sk::REQ_ID, ri);
        }
        h.insert(sk::PAYLOAD_ENCODING, c.encoding);
        h.insert(sk::CHANNEL, c.channel);
        h.insert(sk::TOPIC, c.topic);
        h.insert(sk::ID, c.sid);
        h.insert(sk::SEQ, c.seq);
        h.insert(
            sk::DATA_TYPE,
            if c.last {
                data_type::FINAL
            } else {
                data_type::CHUNK
            },
        );
        h.insert(sk::OFFSET, c.offset);
        h.insert(sk::SIZE, c.total);
        h.insert(sk::RELIABLE, false);
        if let Some((cs, ws)) = c.first {
            h.insert(sk::CHUNK_SIZE, cs);
            h.insert(sk::WINDOW, ws);
        }
        let body = Body {
            encoding: encoding::BYTES,
            len: c.len,
        };
        self.request(h, stream_address(target, sk::TOPIC_DATA), None, false, body)
            .into_headers()
    }

    /// An ACK to `target`: `offset` bytes consumed, chunks up to `seq` in order.
    pub fn stream_ack(&self, target: &str, sid: u64, offset: u64, seq: u64) -> Headers {
        let mut h = Headers::new();
        h.insert(sk::ID, sid);
        h.insert(sk::DATA_TYPE, data_type::ACK);
        h.insert(sk::OFFSET, offset);
        h.insert(sk::SEQ, seq);
        let to = stream_address(target, sk::TOPIC_ACK);
        self.request(h, to, None, false, Body::NONE).into_headers()
    }

    /// The two ERROR messages that reject stream `sid` of `target`: on `sm__ERROR` (2.9)
    /// and the same on `sm__ACK` (≤ 2.8). `chunk` is the chunk that made us reject it (its
    /// channel, topic and `sm__ri` are echoed, so a requester can fail at once).
    pub fn stream_errors(
        &self,
        target: &str,
        sid: u64,
        why: &str,
        chunk: &Headers,
    ) -> [Headers; 2] {
        [sk::TOPIC_ERROR, sk::TOPIC_ACK].map(|topic| {
            let mut h = Headers::new();
            h.insert(sk::ID, sid);
            h.insert(sk::DATA_TYPE, data_type::ERROR);
            h.insert(sk::ERROR_MSG, why);
            h.insert(sk::ERROR_TYPE, "StreamError");
            for k in [sk::CHANNEL, sk::TOPIC, sk::REQ_ID] {
                if let Some(v) = chunk.get(k) {
                    h.insert(k, v.clone());
                }
            }
            self.request(h, stream_address(target, topic), None, false, Body::NONE)
                .into_headers()
        })
    }
}

fn stream_address<'a>(target: &'a str, topic: &'a str) -> Address<'a> {
    Address {
        destination: target,
        channel: sk::STREAM_CHANNEL,
        topic,
    }
}

/// The topic of a streamed reply to a request on (`channel`, `topic`), on `return_only`.
pub(crate) fn reply_topic(channel: &str, topic: &str) -> String {
    format!("{channel}:{topic}")
}

/// A reassembled blob, as its handler (or the requester waiting for it) sees it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Blob {
    /// The blob's own headers plus `cn__origin`, `cn__channel`, `cn__topic` and
    /// `cn__payload_encoding`; the per-chunk stream and routing keys are gone.
    pub headers: Headers,
    /// `sm__ch`.
    pub channel: String,
    /// `sm__tp`.
    pub topic: String,
    /// `sm__pe`, if the sender said.
    pub encoding: Option<String>,
    /// `sm__ri`: a streamed request (or, on `return_only`, the reply to one).
    pub ri: Option<String>,
}

impl Blob {
    /// From the headers of a stream's chunk 0 (or the first chunk that came), sent by
    /// `origin`.
    pub fn from_chunk_headers(mut h: Headers, origin: &str) -> Blob {
        let channel = h.get_str(sk::CHANNEL).unwrap_or_default().to_string();
        let topic = h.get_str(sk::TOPIC).unwrap_or_default().to_string();
        let encoding = h.get_str(sk::PAYLOAD_ENCODING).map(str::to_string);
        let ri = h.get_str(sk::REQ_ID).map(str::to_string);
        h.retain(|k, _| !k.starts_with("sm__") || k == sk::REQ_ID);
        for k in [
            keys::MSG_TYPE,
            keys::FROM,
            keys::TO,
            keys::REPLY_EXPECTED,
            keys::REQ_ID,
            keys::PAYLOAD_LEN,
        ] {
            h.remove(k);
        }
        h.insert(keys::CHANNEL, channel.as_str());
        h.insert(keys::TOPIC, topic.as_str());
        h.insert(keys::ORIGIN, origin);
        h.insert(
            keys::PAYLOAD_ENCODING,
            encoding.as_deref().unwrap_or(encoding::BYTES),
        );
        Blob {
            headers: h,
            channel,
            topic,
            encoding,
            ri,
        }
    }

    /// Whether this blob is a streamed reply (channel `return_only`).
    pub fn is_reply(&self) -> bool {
        self.channel == sk::RETURN_ONLY
    }
}
