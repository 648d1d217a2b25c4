//! The envelope of a DATA message: its `cn__*` headers (f3-wire.md §2.2), typed.
//!
//! Inbound, [`Envelope::parse`] reads once what the cell acts on (message type, origin,
//! destination) and keeps the whole header map for the handler. Outbound, every message this
//! cell makes goes through [`Stamp`]: a request, a reply, a RETURN that bounces a message, a
//! forwarded message, and the `sm__*` stream messages ([`stream`]) are all stamped here, with
//! the keys in NVFlare's order, and [`seal`] turns the result into a frame for the next hop.
//!
//! Pure: no sockets, no clock (the caller passes the send time), no state.

mod stamped;
pub(crate) mod stream;

pub(crate) use stamped::{Field, Shape, Stamped, Typed};

use bytes::Bytes;
use rmpv::Value;
use smallvec::{smallvec, SmallVec};

use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::frame::{FrameType, OutFrame, APP_ID_CELLNET};
use crate::headers::{keys, Headers, Slot};
use crate::joined::Joined;
use crate::message::encoding;
use crate::request_id::RequestId;
use crate::return_code::ReturnCode;
use crate::segment::Segment;

/// `cn__msg_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MsgType {
    /// `req`: a request or a fire-and-forget message.
    Req,
    /// `reply`: the answer to a request.
    Reply,
    /// `return`: a request bounced by a hop that could not deliver it.
    Return,
    /// Anything else: forwarded untouched, dropped at its destination.
    Other(String),
}

impl MsgType {
    const REQ: &'static str = "req";
    const REPLY: &'static str = "reply";
    const RETURN: &'static str = "return";

    /// The type whose wire string has the bytes `b`; `None` if they are not UTF-8 (as
    /// [`Headers::str_at`] would then give none). The known types are matched on the bytes,
    /// so the usual message's type costs no UTF-8 check.
    fn parse(b: &[u8]) -> Option<MsgType> {
        Some(match b {
            b"req" => MsgType::Req,
            b"reply" => MsgType::Reply,
            b"return" => MsgType::Return,
            other => MsgType::Other(std::str::from_utf8(other).ok()?.to_string()),
        })
    }

    /// The wire string.
    pub fn as_str(&self) -> &str {
        match self {
            MsgType::Req => Self::REQ,
            MsgType::Reply => Self::REPLY,
            MsgType::Return => Self::RETURN,
            MsgType::Other(s) => s,
        }
    }
}

/// A received DATA message's headers, with the keys every message must have read out.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    /// `cn__msg_type`.
    pub msg_type: MsgType,
    /// `cn__origin` and `cn__destination`.
    pub names: Names,
    /// The whole map as received, application headers included.
    pub headers: Headers,
}

/// A received message's origin and destination, read out of its headers once, kept in one
/// string: one allocation per message rather than two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names(Joined<2>);

impl Names {
    /// The names of a message from `origin` to `destination`.
    pub fn new(origin: &str, destination: &str) -> Names {
        Names(Joined::new([origin, destination]))
    }

    /// `cn__origin`: who claims to have sent it (checked against the connection by the cell).
    pub fn origin(&self) -> &str {
        self.0.part(0)
    }

    /// `cn__destination`: the cell it is for.
    pub fn destination(&self) -> &str {
        self.0.part(1)
    }
}

impl Envelope {
    /// Read the required keys; a map without them is not a CellNet message.
    pub fn parse(headers: Headers) -> Result<Envelope, &'static str> {
        let (Some(t), Some(o), Some(d)) = (
            headers.str_bytes_at(Slot::MsgType).and_then(MsgType::parse),
            headers.str_at(Slot::Origin),
            headers.str_at(Slot::Destination),
        ) else {
            return Err("message without cn__msg_type/cn__origin/cn__destination");
        };
        Ok(Envelope {
            msg_type: t,
            names: Names::new(o, d),
            headers,
        })
    }

    /// `cn__channel` is `channel` (compared without making the received text a `&str`).
    pub fn channel_is(&self, channel: &str) -> bool {
        self.headers.str_bytes_at(Slot::Channel).unwrap_or_default() == channel.as_bytes()
    }

    /// `cn__origin`: who claims to have sent it (checked against the connection by the cell).
    pub fn origin(&self) -> &str {
        self.names.origin()
    }

    /// `cn__destination`: the cell it is for.
    pub fn destination(&self) -> &str {
        self.names.destination()
    }

    /// `cn__channel` (empty if absent).
    pub fn channel(&self) -> &str {
        self.headers.str_at(Slot::Channel).unwrap_or_default()
    }

    /// `cn__topic` (empty if absent).
    pub fn topic(&self) -> &str {
        self.headers.str_at(Slot::Topic).unwrap_or_default()
    }

    /// `cn__reply_expected` is true.
    pub fn reply_expected(&self) -> bool {
        self.headers.bool_at(Slot::ReplyExpected) == Some(true)
    }

    /// The `cn__req_id` of a request (a str).
    pub fn req_id(&self) -> Option<&str> {
        self.headers.str_at(Slot::ReqId)
    }

    /// The request ids a reply answers: `cn__req_id` as a str, or a list of them (RETURN).
    /// An id that is not of the form this cell makes ([`RequestId::parse`]) answers nothing
    /// here; its text is kept for the log. One id (a plain reply's) is kept inline.
    pub fn reply_ids(&self) -> SmallVec<[Result<RequestId, String>; 1]> {
        // a plain reply's id of the form made here: parsed where it lies, no `&str` made
        if let Some(id) = self
            .headers
            .str_bytes_at(Slot::ReqId)
            .and_then(RequestId::parse_ascii)
        {
            return smallvec![Ok(id)];
        }
        let id = |s: &str| RequestId::parse(s).ok_or_else(|| s.to_string());
        if let Some(s) = self.headers.str_at(Slot::ReqId) {
            // a plain reply: read where it lies, no value made
            return smallvec![id(s)];
        }
        match self.headers.get_at(Slot::ReqId) {
            Some(Value::String(s)) => s.as_str().map(|s| smallvec![id(s)]).unwrap_or_default(),
            Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(id)).collect(),
            _ => SmallVec::new(),
        }
    }

    /// `cn__payload_encoding`, if present (a str).
    pub fn payload_encoding(&self) -> Option<&str> {
        // every message names one of the few encodings: its text is the constant, no
        // `&str` made of the received bytes (an equal str either way)
        match self.headers.str_bytes_at(Slot::PayloadEncoding)? {
            b"fobs" => Some(encoding::FOBS),
            b"bytes" => Some(encoding::BYTES),
            b"none" => Some(encoding::NONE),
            _ => self.headers.str_at(Slot::PayloadEncoding),
        }
    }

    /// Hops travelled so far (`cn__route` entries).
    pub fn hops(&self) -> usize {
        self.headers.array_len_at(Slot::Route).unwrap_or(0)
    }

    /// `cn__encrypted`: an end-to-end encrypted payload (not supported).
    pub fn encrypted(&self) -> bool {
        self.headers.bool_at(Slot::Encrypted) == Some(true)
    }
}

/// Where a message goes: the final cell and the application channel and topic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Address<'a> {
    /// `cn__destination`.
    pub destination: &'a str,
    /// `cn__channel`.
    pub channel: &'a str,
    /// `cn__topic`.
    pub topic: &'a str,
}

/// What the payload is: `cn__payload_encoding` and `cn__payload_len`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Body<'a> {
    /// Encoding name (see [`crate::encoding`]).
    pub encoding: &'a str,
    /// Bytes on the wire.
    pub len: usize,
}

impl Body<'_> {
    /// No payload.
    pub const NONE: Body<'static> = Body {
        encoding: encoding::NONE,
        len: 0,
    };
}

/// Total length of payload segments.
pub(crate) fn seg_len(s: &[Segment]) -> usize {
    s.iter().map(Segment::len).sum()
}

/// The sender's stamp on what it sends: its name (origin, previous hop, first route entry)
/// and the send time, seconds since the epoch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stamp<'a> {
    /// This cell.
    pub me: &'a Fqcn,
    /// `cn__send_time` and the time of this cell's route entry.
    pub at: f64,
}

impl<'a> Stamp<'a> {
    fn route_entry(&self) -> Value {
        Value::Array(vec![self.me.as_str().into(), Value::F64(self.at)])
    }

    /// A REQ: `app` headers, then the `cn__*` keys in the order NVFlare writes them (§7).
    /// `req_id` makes it a request that expects a reply; without it the message is
    /// fire-and-forget. `cn__to` is left empty for [`seal`] to fill in.
    pub fn request<'s>(
        &self,
        app: Headers,
        to: Address<'s>,
        req_id: Option<&'s str>,
        optional: bool,
        body: Body<'s>,
    ) -> Stamped<'s>
    where
        'a: 's,
    {
        if let Some(req_id) = req_id {
            return Stamped::typed(app, self.typed(Shape::Request, to, req_id, optional, body));
        }
        let mut h = Stamped::for_stamp(app);
        h.set_new(keys::TOPIC, Field::Str(to.topic));
        h.set_new(keys::CHANNEL, Field::Str(to.channel));
        h.set_new(keys::DESTINATION, Field::Str(to.destination));
        h.set_new(keys::REPLY_EXPECTED, Field::Bool(false));
        h.set_new(keys::SECURE, Field::Bool(false));
        h.set_new(keys::OPTIONAL, Field::Bool(optional));
        self.tail(h, MsgType::REQ, body)
    }

    /// A REPLY to request `req_id`: the reply's own headers (`cn__return_code` defaults to
    /// `ok`), then the `cn__*` keys in NVFlare's order (§7).
    pub fn reply<'s>(
        &self,
        app: Headers,
        to: Address<'s>,
        req_id: &'s str,
        body: Body<'s>,
    ) -> Stamped<'s>
    where
        'a: 's,
    {
        if !app.contains(keys::RETURN_CODE) {
            return Stamped::typed(app, self.typed(Shape::Reply, to, req_id, false, body));
        }
        let mut h = Stamped::for_stamp(app);
        h.set_new(keys::SECURE, Field::Bool(false));
        h.set_new(keys::OPTIONAL, Field::Bool(false));
        h.set_new(keys::CHANNEL, Field::Str(to.channel));
        h.set_new(keys::TOPIC, Field::Str(to.topic));
        h.set_new(keys::FROM, Field::Str(self.me.as_str()));
        h.set_new(keys::TO, Field::Str(""));
        h.set_new(keys::ORIGIN, Field::Str(self.me.as_str()));
        h.set_new(keys::DESTINATION, Field::Str(to.destination));
        h.set_new(keys::REQ_ID, Field::Str(req_id));
        h.set_new(keys::MSG_TYPE, Field::Str(MsgType::REPLY));
        h.set_new(keys::ROUTE, Field::Route(self.me.as_str(), self.at));
        h.set_new(keys::PAYLOAD_ENCODING, Field::Str(body.encoding));
        h.set_new(keys::PAYLOAD_LEN, Field::U64(body.len as u64));
        h.set_new(keys::SEND_TIME, Field::F64(self.at));
        h
    }

    /// The stamp of a REQ that expects a reply or of a REPLY with its own return code.
    fn typed<'s>(
        &self,
        shape: Shape,
        to: Address<'s>,
        req_id: &'s str,
        optional: bool,
        body: Body<'s>,
    ) -> Typed<'s>
    where
        'a: 's,
    {
        Typed {
            shape,
            topic: to.topic,
            channel: to.channel,
            destination: to.destination,
            req_id,
            optional,
            me: self.me.as_str(),
            to: "",
            encoding: body.encoding,
            len: body.len as u64,
            at: self.at,
        }
    }

    /// `cn__from`, `cn__to`, `cn__origin`, `cn__msg_type`, `cn__route`, payload and time.
    fn tail<'s>(&self, mut h: Stamped<'s>, t: &'static str, body: Body<'s>) -> Stamped<'s>
    where
        'a: 's,
    {
        h.set_new(keys::FROM, Field::Str(self.me.as_str()));
        h.set_new(keys::TO, Field::Str(""));
        h.set_new(keys::ORIGIN, Field::Str(self.me.as_str()));
        h.set_new(keys::MSG_TYPE, Field::Str(t));
        h.set_new(keys::ROUTE, Field::Route(self.me.as_str(), self.at));
        h.set_new(keys::PAYLOAD_ENCODING, Field::Str(body.encoding));
        h.set_new(keys::PAYLOAD_LEN, Field::U64(body.len as u64));
        h.set_new(keys::SEND_TIME, Field::F64(self.at));
        h
    }

    /// The RETURN for a request this cell will not deliver (NVFlare's shape: `cn__req_id`
    /// as a list, `cn__original_headers`, `cn__return_reason`), addressed to `to`. A RETURN
    /// is matched by request id whatever its origin, so the requester learns at once. `None` if the message is not a request that
    /// waits for a reply: those are dropped without a word.
    pub fn bounce(&self, refused: &Envelope, to: &str, why: Refusal<'_>) -> Option<Stamped<'a>> {
        if refused.msg_type != MsgType::Req || !refused.reply_expected() {
            return None;
        }
        let orig = &refused.headers;
        let mut h = Headers::with_capacity(16);
        for k in [keys::CHANNEL, keys::TOPIC] {
            if let Some(v) = orig.get(k) {
                h.insert(k, v.clone());
            }
        }
        let req_ids = match orig.get(keys::REQ_ID) {
            Some(Value::Array(a)) => a.clone(),
            Some(v) => vec![v.clone()],
            None => Vec::new(),
        };
        h.insert(keys::REQ_ID, Value::Array(req_ids));
        h.insert(keys::RETURN_CODE, why.code.as_str());
        h.insert(keys::ERROR, why.error);
        h.insert(keys::RETURN_REASON, why.reason);
        h.insert(keys::ORIGINAL_HEADERS, orig.to_value());
        h.insert(keys::DESTINATION, to);
        Some(self.tail(h.into(), MsgType::RETURN, Body::NONE))
    }

    /// A message this cell relays: it becomes the previous hop and adds itself to the route.
    pub fn forward(&self, headers: &mut Headers) {
        headers.insert(keys::FROM, self.me.as_str());
        let mut route = match headers.remove(keys::ROUTE) {
            Some(Value::Array(r)) => r,
            _ => Vec::new(),
        };
        route.push(self.route_entry());
        headers.insert(keys::ROUTE, Value::Array(route));
    }

    /// A request this cell sends to itself, as its handler sees it.
    pub fn local_request(&self, headers: &mut Headers, channel: &str, topic: &str) {
        headers.insert(keys::ORIGIN, self.me.as_str());
        headers.insert(keys::DESTINATION, self.me.as_str());
        headers.insert(keys::CHANNEL, channel);
        headers.insert(keys::TOPIC, topic);
    }

    /// The reply of a handler to a request this cell sent to itself.
    pub fn local_reply(&self, headers: &mut Headers) {
        if !headers.contains(keys::RETURN_CODE) {
            headers.insert(keys::RETURN_CODE, ReturnCode::Ok.as_str());
        }
        headers.insert(keys::ORIGIN, self.me.as_str());
    }
}

/// Why a message is bounced: the RETURN's code, `cn__error` and `cn__return_reason`.
#[derive(Clone, Debug)]
pub(crate) struct Refusal<'a> {
    /// `cn__return_code`.
    pub code: ReturnCode,
    /// `cn__error`, for the requester.
    pub error: &'a str,
    /// `cn__return_reason` (`cant_forward`, `unauthenticated_origin`).
    pub reason: &'a str,
}

/// The DATA frame of a message for the connection to `next_hop` (which becomes `cn__to`),
/// or an error if the header map is larger than `max_header_size`.
pub(crate) fn seal(
    headers: Stamped<'_>,
    next_hop: &str,
    payload: Vec<Segment>,
    max_header_size: usize,
) -> Result<OutFrame, CellnetError> {
    let mut headers = headers;
    headers.set(keys::TO, Field::Str(next_hop));
    let hb = headers.encode();
    if hb.len() > max_header_size {
        return Err(CellnetError::Headers(format!(
            "header map of {} bytes exceeds the limit of {max_header_size}",
            hb.len(),
        )));
    }
    Ok(OutFrame {
        frame_type: FrameType::Data,
        app_id: APP_ID_CELLNET,
        headers: Bytes::from(hb),
        payload,
    })
}

#[cfg(test)]
mod tests;
