//! Requests this cell sends to other cells, and fire-and-forget messages: one path for both
//! wire forms (one DATA frame, or an `sm__` stream), with the reply waited for in the router
//! under the request's id (`cn__req_id` or `sm__ri`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::error::Elapsed;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::connection::Conn;
use crate::envelope::{seg_len, Address, Body};
use crate::error::CellnetError;
use crate::headers::{stream_keys, Headers};
use crate::message::{Message, Payload};
use crate::outbound::Outbound;
use crate::request_id::{self, RequestId};
use crate::return_code::ReturnCode;
use crate::router::{Expiry, WaitKey};
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

/// Requests with a timeout of at least this long are timed by the cell's sweeper
/// ([`run_sweeper`]) rather than a timer of their own, and so time out up to one
/// [`SWEEP_TICK`] late (at most 5%).
pub(crate) const SWEPT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the sweeper looks for waiters past their deadline.
pub(crate) const SWEEP_TICK: Duration = Duration::from_millis(100);

/// The reply on `rx`; `Err` if `deadline` passed first. Without a deadline the waiter is the
/// sweeper's to time out ([`run_sweeper`]).
async fn wait_reply(
    rx: oneshot::Receiver<Message>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Result<Message, oneshot::error::RecvError>, Elapsed> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, rx).await,
        None => Ok(rx.await),
    }
}

/// The cell's sweeper: fails the waiters of requests past their deadline ([`SWEPT_TIMEOUT`])
/// every [`SWEEP_TICK`] until `stop`. When it ends, however it ends (a runtime shut down drops
/// it), the waiters that rely on it fail at once.
pub(crate) async fn run_sweeper(out: &Outbound, stop: CancellationToken) {
    struct Stopped<'a>(&'a Outbound);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            self.0
                .router
                .stop_sweeping("the cell's request timer stopped");
        }
    }
    out.router.start_sweeping();
    let _stopped = Stopped(out);
    let mut tick = tokio::time::interval(SWEEP_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => out.router.expire(tokio::time::Instant::now()),
            _ = stop.cancelled() => return,
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
    let deadline = tokio::time::Instant::now() + opts.timeout;
    // A long timeout is left to the cell's sweeper: no timer registered and cleared per
    // request. A short one (or one with no sweeper running) keeps its own, exact timer.
    let expires = (opts.timeout >= SWEPT_TIMEOUT).then_some(Expiry {
        at: deadline,
        after: opts.timeout,
    });
    let rx = out.router.wait(key, target, conn.id, expires);
    let swept = expires.is_some() && out.router.sweeping();
    let route = Route {
        to,
        optional: opts.optional,
        id: Some(id),
        via: Some(&conn),
    };
    let sent = tokio::time::timeout_at(deadline, transmit(out, streams, prepared, route)).await;
    let reply = match sent {
        Ok(Ok(())) => match wait_reply(rx, (!swept).then_some(deadline)).await {
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
