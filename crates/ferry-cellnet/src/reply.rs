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
use crate::joined::Joined;
use crate::log_limit::limited;
use crate::message::{Message, Payload};
use crate::outbound::Outbound;
use crate::return_code::ReturnCode;
use crate::segment::Segment;
use crate::streams::{Outgoing, Streams};

/// Where the reply to a request goes (the id it answers is the [`Asker`]'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyTo {
    /// Fire-and-forget: no reply.
    Nobody,
    /// A plain REPLY with [`Asker::reply_id`] as `cn__req_id`.
    Plain,
    /// A streamed reply on `return_only` with [`Asker::reply_id`] as `sm__ri`.
    Stream,
}

/// Who asked, on which channel and topic, and the id the reply answers.
///
/// The four are kept beyond the request's headers (its handler owns them) in one string:
/// one allocation per request rather than one each.
#[derive(Clone, Debug)]
pub(crate) struct Asker(Joined<4>);

impl Asker {
    /// The asker of a request from `origin` on `channel` and `topic`, whose reply answers
    /// `reply_id` (`cn__req_id` or `sm__ri`; empty if none).
    pub fn new(origin: &str, channel: &str, topic: &str, reply_id: &str) -> Asker {
        Asker(Joined::new([origin, channel, topic, reply_id]))
    }

    /// The requester's FQCN (`cn__origin` of the request).
    pub fn origin(&self) -> &str {
        self.0.part(0)
    }

    /// The request's channel.
    pub fn channel(&self) -> &str {
        self.0.part(1)
    }

    /// The request's topic.
    pub fn topic(&self) -> &str {
        self.0.part(2)
    }

    /// The id the reply answers: the request's `cn__req_id` or `sm__ri`.
    pub fn reply_id(&self) -> &str {
        self.0.part(3)
    }
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
        destination: asker.origin(),
        channel: asker.channel(),
        topic: asker.topic(),
    };
    let body = Body {
        encoding,
        len: seg_len(&segs),
    };
    let req_id = asker.reply_id();
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
    match reply_to {
        ReplyTo::Nobody => return None,
        ReplyTo::Plain => {}
        ReplyTo::Stream => return Some(Later::Reply(reply_to, reply)),
    }
    let origin = asker.origin();
    let (h, segs) = plain(out, asker, reply);
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
    let origin = asker.origin();
    match reply_to {
        ReplyTo::Nobody => {}
        ReplyTo::Plain => {
            let (h, segs) = plain(out, asker, reply);
            if let Err(e) = out.send(origin, h, segs, Some(conn)).await {
                limited!(conn.log, warn, %origin, "reply not sent: {e}");
            }
        }
        ReplyTo::Stream => {
            let mut blob = reply.headers;
            if !blob.contains(keys::RETURN_CODE) {
                blob.insert(keys::RETURN_CODE, ReturnCode::Ok.as_str());
            }
            let topic = reply_topic(asker.channel(), asker.topic());
            let stream = |blob, payload| Outgoing {
                target: origin,
                blob,
                channel: stream_keys::RETURN_ONLY,
                topic: &topic,
                payload,
                ri: Some(asker.reply_id()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_asker_gives_back_its_four_parts() {
        let a = Asker::new("site-1", "ch", "tópic", "8c2d-id");
        let parts = (a.origin(), a.channel(), a.topic(), a.reply_id());
        assert_eq!(parts, ("site-1", "ch", "tópic", "8c2d-id"));
        let b = Asker::new("", "", "x", "");
        assert_eq!(
            (b.origin(), b.channel(), b.topic(), b.reply_id()),
            ("", "", "x", "")
        );
        let c = Asker::new("o", "", "", "");
        assert_eq!(
            (c.origin(), c.channel(), c.topic(), c.reply_id()),
            ("o", "", "", "")
        );
    }
}
