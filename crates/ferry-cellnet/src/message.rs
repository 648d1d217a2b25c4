//! Messages: headers plus a payload.

use bytes::Bytes;
use rmpv::Value;

use crate::error::CellnetError;
use crate::fobs::Fobs;
use crate::headers::{keys, Headers, Slot};
use crate::msgpack::MsgpackBody;
use crate::return_code::ReturnCode;
use crate::segment::Segment;

/// Wire names of `cn__payload_encoding`.
pub mod encoding {
    /// FOBS container.
    pub const FOBS: &str = "fobs";
    /// Raw bytes.
    pub const BYTES: &str = "bytes";
    /// No payload.
    pub const NONE: &str = "none";
}

/// The payload of a [`Message`].
///
/// Received FOBS payloads arrive as [`Payload::Fobs`]: zero-copy slices of the frame, decoded
/// only when asked ([`Message::value`]). Senders pick the form that suits them: a dynamic
/// [`Payload::Value`], or the fast path [`Payload::Fobs`] built from pre-encoded msgpack
/// segments ([`Message::from_msgpack`]) so large `bin` chunks are never copied.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Payload {
    /// No payload (`cn__payload_encoding = "none"`).
    #[default]
    None,
    /// Raw bytes (`"bytes"`, or no encoding header).
    Bytes(Bytes),
    /// A dynamic msgpack value, FOBS-encoded when sent (`"fobs"`).
    Value(Value),
    /// A FOBS container with its msgpack main body already encoded (`"fobs"`).
    Fobs(Fobs),
}

impl Payload {
    /// The `cn__payload_encoding` string of this payload.
    pub fn encoding(&self) -> &'static str {
        match self {
            Payload::None => encoding::NONE,
            Payload::Bytes(_) => encoding::BYTES,
            Payload::Value(_) | Payload::Fobs(_) => encoding::FOBS,
        }
    }

    /// Encode into wire segments (zero-copy where possible).
    pub fn into_segments(self) -> Vec<Segment> {
        match self {
            Payload::None => Vec::new(),
            Payload::Bytes(b) => vec![Segment::Bytes(b)],
            Payload::Value(v) => Fobs::from_value(v).into_segments(),
            Payload::Fobs(f) => f.into_segments(),
        }
    }

    /// Interpret received bytes according to a `cn__payload_encoding` value (absent = raw).
    pub fn from_wire(encoding: Option<&str>, bytes: Bytes) -> Result<Payload, CellnetError> {
        match encoding {
            Some(encoding::FOBS) => Ok(Payload::Fobs(Fobs::parse(bytes)?)),
            Some(encoding::NONE) => Ok(Payload::None),
            _ => Ok(if bytes.is_empty() && encoding.is_none() {
                Payload::None
            } else {
                Payload::Bytes(bytes)
            }),
        }
    }
}

/// A CellNet message: an ordered header map (app headers and `cn__*` keys) and a payload.
///
/// Requests received by a handler carry the sender's headers (`cn__origin`, `cn__channel`, ...)
/// whether the request came as one frame or as a byte stream. Replies carry `cn__return_code`;
/// see [`Message::return_code`].
///
/// ```
/// use ferry_cellnet::{Message, ReturnCode};
/// use rmpv::Value;
/// let m = Message::from_value(Value::Map(vec![("ref_id".into(), "R1".into())]))
///     .with_header("x-app", "hello");
/// assert_eq!(m.headers.get_str("x-app"), Some("hello"));
/// assert_eq!(m.value().unwrap()["ref_id"].as_str(), Some("R1"));
/// assert_eq!(Message::error(ReturnCode::Timeout, "late").return_code(), ReturnCode::Timeout);
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// Header map, in wire order.
    pub headers: Headers,
    /// Payload.
    pub payload: Payload,
}

impl Message {
    /// A message with no headers and no payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// A message whose payload is a dynamic msgpack value (sent as FOBS).
    pub fn from_value(v: impl Into<Value>) -> Self {
        Message {
            headers: Headers::new(),
            payload: Payload::Value(v.into()),
        }
    }

    /// Fast path: a message whose FOBS main body is pre-encoded msgpack (see
    /// [`crate::MsgpackWriter`]); large `bin` segments go to the socket without a copy.
    pub fn from_msgpack(body: MsgpackBody) -> Self {
        Message {
            headers: Headers::new(),
            payload: Payload::Fobs(Fobs::from_msgpack(body)),
        }
    }

    /// A message with a raw bytes payload (`cn__payload_encoding = "bytes"`).
    pub fn from_bytes(b: impl Into<Bytes>) -> Self {
        Message {
            headers: Headers::new(),
            payload: Payload::Bytes(b.into()),
        }
    }

    /// An error reply: a return code and `cn__error` text, no payload.
    pub fn error(rc: ReturnCode, text: impl Into<String>) -> Self {
        let mut m = Message::new();
        m.headers.insert(keys::RETURN_CODE, rc.as_str());
        m.headers.insert(keys::ERROR, text.into());
        m
    }

    /// Builder: set a header.
    pub fn with_header(mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// Builder: set the return code (replies).
    pub fn with_return_code(mut self, rc: ReturnCode) -> Self {
        self.headers.insert(keys::RETURN_CODE, rc.as_str());
        self
    }

    /// The return code (`cn__return_code`); a reply without one counts as `ok`, as NVFlare's
    /// streamed replies may omit it.
    pub fn return_code(&self) -> ReturnCode {
        self.headers
            .str_at(Slot::ReturnCode)
            .map(ReturnCode::parse)
            .unwrap_or(ReturnCode::Ok)
    }

    /// The `cn__error` text, if any.
    pub fn error_text(&self) -> Option<&str> {
        self.headers.str_at(Slot::Error)
    }

    /// The sender's FQCN (`cn__origin`).
    pub fn origin(&self) -> Option<&str> {
        self.headers.str_at(Slot::Origin)
    }

    /// The channel (`cn__channel`).
    pub fn channel(&self) -> Option<&str> {
        self.headers.str_at(Slot::Channel)
    }

    /// The topic (`cn__topic`).
    pub fn topic(&self) -> Option<&str> {
        self.headers.str_at(Slot::Topic)
    }

    /// Decode the payload as a dynamic msgpack value: FOBS is decoded (datums put back), raw
    /// bytes become a `bin`, no payload becomes `nil`. `bin` stays `bin`, str stays str.
    pub fn value(&self) -> Result<Value, CellnetError> {
        match &self.payload {
            Payload::None => Ok(Value::Nil),
            Payload::Bytes(b) => Ok(Value::Binary(b.to_vec())),
            Payload::Value(v) => Ok(v.clone()),
            Payload::Fobs(f) => f.to_value(),
        }
    }

    /// Consume the message and decode its payload (no clone for [`Payload::Value`]).
    pub fn into_value(self) -> Result<Value, CellnetError> {
        match self.payload {
            Payload::Value(v) => Ok(v),
            _ => self.value(),
        }
    }

    /// Fast path: the FOBS main msgpack body as one buffer, without decoding it. For a
    /// received message this is a zero-copy slice of the frame; slice `bin` values out of it
    /// with `rmpv::decode::read_value_ref` and `Bytes::slice_ref`. Datum sections (values
    /// ≥ 10 MiB) are in [`Message::fobs`].
    pub fn msgpack_body(&self) -> Result<Bytes, CellnetError> {
        match &self.payload {
            Payload::Fobs(f) => f
                .main
                .read_contiguous()
                .map_err(|e| CellnetError::Payload(format!("reading the body's file region: {e}"))),
            Payload::Value(v) => Ok(crate::msgpack::encode_value(v.clone())),
            other => Err(CellnetError::Payload(format!(
                "payload is {}, not fobs",
                other.encoding()
            ))),
        }
    }

    /// The FOBS container, if the payload is one.
    pub fn fobs(&self) -> Option<&Fobs> {
        match &self.payload {
            Payload::Fobs(f) => Some(f),
            _ => None,
        }
    }

    /// The raw bytes payload, if the payload is `bytes`.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.payload {
            Payload::Bytes(b) => Some(b),
            _ => None,
        }
    }
}
