//! Requests this cell sends to other cells, and fire-and-forget messages: one path for both
//! wire forms (one DATA frame, or an `sm__` stream), with the reply waited for in the router
//! under the request's id (`cn__req_id` or `sm__ri`).

use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

use crate::connection::Conn;
use crate::envelope::{seg_len, Address, Body};
use crate::error::CellnetError;
use crate::headers::{stream_keys, Headers};
use crate::message::{Message, Payload};
use crate::outbound::Outbound;
use crate::request_id::{self, RequestId};
use crate::return_code::ReturnCode;
use crate::router::WaitKey;
use crate::segment::Segment;
use crate::streams::{Outgoing, Streams};

/// Options of [`crate::Cell::send_request_with`] and [`crate::Cell::fire_and_forget_with`].
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// How long to wait for the reply (and, for streams, to send the request).
    pub timeout: Duration,
    /// Send the request as an `sm__*` byte stream (NVFlare `Cell` style) instead of one DATA
    /// frame (the CoreCell path, the default). The reply then comes back as a stream too.
    pub streamed: bool,
    /// Set `cn__optional` (only lowers log levels on the peer).
    pub optional: bool,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            timeout: Duration::from_secs(30),
            streamed: false,
            optional: false,
        }
    }
}

impl RequestOptions {
    /// Default options with this timeout.
    pub fn timeout(timeout: Duration) -> Self {
        RequestOptions {
            timeout,
            ..Default::default()
        }
    }

    /// Builder: stream the request.
    pub fn streamed(mut self, yes: bool) -> Self {
        self.streamed = yes;
        self
    }
}

/// A message in the wire form it will travel in.
enum Prepared {
    /// One DATA frame: the app headers, the payload encoding and its segments.
    Frame(Headers, &'static str, Vec<Segment>),
    /// A stream: the blob's headers and its payload.
    Stream(Headers, Payload),
}

impl Prepared {
    /// Encode `m` for the wire `opts` ask for; a plain message over
    /// `Limits::max_message_size` is refused here (a stream checks its own limit as it starts).
    fn new(out: &Outbound, m: Message, opts: &RequestOptions) -> Result<Prepared, CellnetError> {
        if opts.streamed {
            let mut blob = m.headers;
            if opts.optional {
                blob.insert(stream_keys::OPTIONAL, true);
            }
            return Ok(Prepared::Stream(blob, m.payload));
        }
        let encoding = m.payload.encoding();
        let segments = m.payload.into_segments();
        out.check_size(&segments)?;
        Ok(Prepared::Frame(m.headers, encoding, segments))
    }
}

/// Where a message goes and what it answers to.
struct Route<'a> {
    to: Address<'a>,
    optional: bool,
    /// The request's id (`cn__req_id` of a frame, `sm__ri` of a stream); `None`:
    /// fire-and-forget.
    id: Option<&'a str>,
    /// The connection the request was routed to when its waiter was registered.
    via: Option<&'a Arc<Conn>>,
}

/// Send a prepared message.
async fn transmit(
    out: &Outbound,
    streams: &Streams,
    p: Prepared,
    r: Route<'_>,
) -> Result<(), CellnetError> {
    let target = r.to.destination;
    match p {
        Prepared::Frame(app, encoding, segments) => {
            let body = Body {
                encoding,
                len: seg_len(&segments),
            };
            let h = out.stamp().request(app, r.to, r.id, r.optional, body);
            out.send(target, h, segments, r.via).await.map(drop)
        }
        Prepared::Stream(blob, payload) => {
            let s = Outgoing {
                target,
                blob,
                channel: r.to.channel,
                topic: r.to.topic,
                payload,
                ri: r.id,
                fallback: r.via,
            };
            streams.send(out, s).await
        }
    }
}

/// Send a request to another cell and wait for its reply. Never fails: what went wrong is
/// the reply's return code.
pub(crate) async fn request(
    out: &Outbound,
    streams: &Streams,
    to: Address<'_>,
    message: Message,
    opts: &RequestOptions,
) -> Message {
    let prepared = match Prepared::new(out, message, opts) {
        Ok(p) => p,
        Err(e) => return Message::error(e.return_code(), e.to_string()),
    };
    let target = to.destination;
    let Some(conn) = out.router.route(target, None) else {
        return Message::error(
            ReturnCode::TargetUnreachable,
            format!("no connection leads to {target}"),
        );
    };
    let id = RequestId::new();
    let key = if opts.streamed {
        WaitKey::StreamReply(id)
    } else {
        WaitKey::Reply(id)
    };
    let mut text = [0; request_id::TEXT_LEN];
    let id = id.text(&mut text);
    let rx = out.router.wait(key, target, conn.id);
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let route = Route {
        to,
        optional: opts.optional,
        id: Some(id),
        via: Some(&conn),
    };
    let sent = tokio::time::timeout_at(deadline, transmit(out, streams, prepared, route)).await;
    let reply = match sent {
        Ok(Ok(())) => match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => Message::error(ReturnCode::CommError, "request abandoned"),
            Err(_) => {
                debug!(%id, "no reply in {:?}", opts.timeout);
                Message::error(
                    ReturnCode::Timeout,
                    format!("no reply from {target} in {:?}", opts.timeout),
                )
            }
        },
        Ok(Err(e)) => Message::error(e.return_code(), e.to_string()),
        Err(_) if opts.streamed => {
            Message::error(ReturnCode::Timeout, "timed out sending the request stream")
        }
        Err(_) => Message::error(ReturnCode::Timeout, "timed out sending the request"),
    };
    out.router.forget(&key);
    reply
}

/// Send a message that expects no reply to another cell. A stream must be sent within
/// `opts.timeout`; a frame waits for room in its connection's queue.
pub(crate) async fn fire_and_forget(
    out: &Outbound,
    streams: &Streams,
    to: Address<'_>,
    message: Message,
    opts: &RequestOptions,
) -> Result<(), CellnetError> {
    let prepared = Prepared::new(out, message, opts)?;
    let route = Route {
        to,
        optional: opts.optional,
        id: None,
        via: None,
    };
    let sending = transmit(out, streams, prepared, route);
    if !opts.streamed {
        return sending.await;
    }
    tokio::time::timeout(opts.timeout, sending)
        .await
        .unwrap_or_else(|_| Err(CellnetError::Timeout("sending the stream".into())))
}
