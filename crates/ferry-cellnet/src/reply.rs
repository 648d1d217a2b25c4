//! Replies to requests this cell received, in the form the request asked for: a plain REPLY
//! (one frame, `cn__req_id`) or a streamed reply on `return_only` (`sm__ri`, NVFlare `Cell`
//! style). A reply too big to send becomes a `msg_too_big` reply, so the requester hears
//! why instead of timing out.

use std::sync::Arc;

use tracing::warn;

use crate::connection::Conn;
use crate::envelope::stream::reply_topic;
use crate::envelope::{seg_len, Address, Body, Stamped};
use crate::error::CellnetError;
use crate::frame::OutFrame;
use crate::headers::{keys, stream_keys};
use crate::log_limit::limited;
use crate::message::{Message, Payload};
use crate::outbound::Outbound;
use crate::return_code::ReturnCode;
use crate::segment::Segment;
use crate::streams::{Outgoing, Streams};

/// Where the reply to a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ReplyTo {
    /// Fire-and-forget: no reply.
    Nobody,
    /// A plain REPLY with this `cn__req_id`.
    Plain(String),
    /// A streamed reply on `return_only` with this `sm__ri`.
    Stream(String),
}

/// Who asked, on which channel and topic.
#[derive(Clone, Debug)]
pub(crate) struct Asker {
    /// The requester's FQCN (`cn__origin` of the request).
    pub origin: String,
    /// The request's channel.
    pub channel: String,
    /// The request's topic.
    pub topic: String,
}

/// What [`send_now`] left to a task of its own: it would have had to wait.
pub(crate) enum Later {
    /// A plain reply's frame, for a connection whose queue is full.
    Frame(Arc<Conn>, OutFrame),
    /// A streamed reply (it waits for the requester's ACKs): [`send`] it.
    Reply(ReplyTo, Message),
}

/// A plain reply's stamped headers and payload (a reply too big to send becomes a
/// `msg_too_big` reply).
fn plain<'s>(
    out: &'s Outbound,
    asker: &'s Asker,
    req_id: &'s str,
    mut reply: Message,
) -> (Stamped<'s>, Vec<Segment>) {
    let mut encoding = reply.payload.encoding();
    let mut segs = std::mem::take(&mut reply.payload).into_segments();
    if let Err(e) = out.check_size(&segs) {
        warn!("reply too big: {e}");
        reply = Message::error(ReturnCode::MsgTooBig, e.to_string());
        encoding = Payload::None.encoding();
        segs = Vec::new();
    }
    let to = Address {
        destination: &asker.origin,
        channel: &asker.channel,
        topic: &asker.topic,
    };
    let body = Body {
        encoding,
        len: seg_len(&segs),
    };
    (out.stamp().reply(reply.headers, to, req_id, body), segs)
}

/// Send `reply` without waiting, from the connection's reader (a handler that answered in its
/// first step): a plain reply is written at once or queued. What would have to wait — a full
/// queue, a streamed reply — comes back for a task of its own ([`Later`]); the reader never
/// waits for its own connection's writer.
pub(crate) fn send_now(
    out: &Outbound,
    conn: &Arc<Conn>,
    asker: &Asker,
    reply_to: ReplyTo,
    reply: Message,
) -> Option<Later> {
    let req_id = match reply_to {
        ReplyTo::Nobody => return None,
        ReplyTo::Plain(req_id) => req_id,
        stream @ ReplyTo::Stream(_) => return Some(Later::Reply(stream, reply)),
    };
    let origin = asker.origin.as_str();
    let (h, segs) = plain(out, asker, &req_id, reply);
    match out.offer(origin, h, segs, Some(conn)) {
        Ok(None) => None,
        Ok(Some((conn, frame))) => Some(Later::Frame(conn, frame)),
        Err(e) => {
            limited!(conn.log, warn, %origin, "reply not sent: {e}");
            None
        }
    }
}

/// Send `reply` to `asker` as `reply_to` says; `conn` (the request's connection) is the way
/// back when no route leads to the requester.
pub(crate) async fn send(
    out: &Outbound,
    streams: &Streams,
    conn: &Arc<Conn>,
    asker: &Asker,
    reply_to: ReplyTo,
    reply: Message,
) {
    let origin = asker.origin.as_str();
    match reply_to {
        ReplyTo::Nobody => {}
        ReplyTo::Plain(req_id) => {
            let (h, segs) = plain(out, asker, &req_id, reply);
            if let Err(e) = out.send(origin, h, segs, Some(conn)).await {
                limited!(conn.log, warn, %origin, "reply not sent: {e}");
            }
        }
        ReplyTo::Stream(ri) => {
            let mut blob = reply.headers;
            if !blob.contains(keys::RETURN_CODE) {
                blob.insert(keys::RETURN_CODE, ReturnCode::Ok.as_str());
            }
            let topic = reply_topic(&asker.channel, &asker.topic);
            let stream = |blob, payload| Outgoing {
                target: origin,
                blob,
                channel: stream_keys::RETURN_ONLY,
                topic: &topic,
                payload,
                ri: Some(&ri),
                fallback: Some(conn),
            };
            match streams.send(out, stream(blob, reply.payload)).await {
                Ok(()) => {}
                Err(e @ CellnetError::MessageTooBig { .. }) => {
                    // tell the requester instead of letting it time out
                    warn!(%origin, "streamed reply too big: {e}");
                    let err = Message::error(ReturnCode::MsgTooBig, e.to_string());
                    let _ = streams.send(out, stream(err.headers, Payload::None)).await;
                }
                Err(e) => limited!(conn.log, warn, %origin, "streamed reply not sent: {e}"),
            }
        }
    }
}
