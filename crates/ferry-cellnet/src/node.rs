//! What a cell does with messages, apart from sockets: the [`Inbound`] side of every
//! connection (attribution, forwarding, RETURNs, replies to our requests, streams, running
//! handlers) and the requests the cell's user sends. [`Node`] composes the state each part
//! owns — the way out and the router ([`Outbound`]), the streams ([`Streams`]), the handlers
//! ([`Handlers`]) — and the handler tasks; `cell.rs` owns the sockets around it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::connection::{Conn, ConnectionInfo, Inbound};
use crate::envelope::stream::Blob;
use crate::envelope::{Address, Envelope, MsgType, Refusal};
use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::frame::OutFrame;
use crate::handlers::{self, Handlers, Started};
use crate::headers::{keys, stream_keys, Headers};
use crate::log_limit::limited;
use crate::message::{Message, Payload};
use crate::outbound::Outbound;
use crate::reply::{self, Asker, Later, ReplyTo};
use crate::request::{self, RequestOptions};
use crate::request_id::RequestId;
use crate::return_code::ReturnCode;
use crate::router::{Claim, ReplyFrom, WaitKey};
use crate::segment::Segment;
use crate::streams::{StreamEvent, Streams};
use crate::trust::{self, Forwarding};

/// Channel of cellnet-internal messages.
pub const CELLNET_CHANNEL: &str = "cellnet.channel";
/// Topic a Python cell sends to its peers when it stops.
pub const BYE_TOPIC: &str = "bye";
/// Topic of the probe a connecting cell sends to a peer that does not announce
/// `ferry_sync` (NVFlare): its reply proves the peer has registered us.
pub(crate) const PROBE_TOPIC: &str = "ferry_probe";

/// A cell's message handling.
pub(crate) struct Node {
    /// Name, limits, routes and reply waiters.
    pub out: Outbound,
    /// `sm__` streams, both ways.
    pub streams: Streams,
    /// Request handlers.
    pub handlers: Handlers,
    /// Whether this cell relays messages for others.
    pub forwarding: Forwarding,
    /// Running handlers, and replies being sent.
    pub tasks: TaskTracker,
    /// Cancelled when the shutdown grace is over: handlers still running are abandoned.
    pub abandon: CancellationToken,
    /// Set by shutdown: new requests are refused.
    pub stopping: AtomicBool,
}

impl Node {
    /// A node with these parts and no handler.
    pub fn new(out: Outbound, streams: Streams, forwarding: Forwarding) -> Self {
        Node {
            out,
            streams,
            handlers: Handlers::default(),
            forwarding,
            tasks: TaskTracker::new(),
            abandon: CancellationToken::new(),
            stopping: AtomicBool::new(false),
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Send a request to `target` and wait for the reply (see [`crate::Cell::send_request`]).
    pub async fn request(
        &self,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        opts: &RequestOptions,
    ) -> Message {
        // checked in place: no owned name per request
        if let Err(why) = crate::fqcn::validate(target) {
            let e = CellnetError::InvalidFqcn {
                fqcn: target.to_string(),
                reason: why,
            };
            return Message::error(ReturnCode::InvalidTarget, e.to_string());
        }
        if self.stopping() {
            return Message::error(ReturnCode::CommError, "cell is shut down");
        }
        if target == self.out.me.as_str() {
            return self
                .request_local(channel, topic, message, opts.timeout)
                .await;
        }
        let to = Address {
            destination: target,
            channel,
            topic,
        };
        request::request(&self.out, &self.streams, to, message, opts).await
    }

    /// Send a message that expects no reply (see [`crate::Cell::fire_and_forget`]).
    pub async fn fire_and_forget(
        &self,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        opts: &RequestOptions,
    ) -> Result<(), CellnetError> {
        let target = Fqcn::new(target)?;
        if self.stopping() {
            return Err(CellnetError::Shutdown);
        }
        if target == self.out.me {
            self.dispatch_local(channel, topic, message);
            return Ok(());
        }
        let to = Address {
            destination: target.as_str(),
            channel,
            topic,
        };
        request::fire_and_forget(&self.out, &self.streams, to, message, opts).await
    }

    /// A request to this cell itself: run the handler in place.
    async fn request_local(
        &self,
        channel: &str,
        topic: &str,
        mut message: Message,
        timeout: Duration,
    ) -> Message {
        let stamp = self.out.stamp();
        stamp.local_request(&mut message.headers, channel, topic);
        let Some(h) = self.handlers.lookup(channel, topic) else {
            return Message::error(ReturnCode::ProcessException, "no callback");
        };
        match tokio::time::timeout(timeout, handlers::run(h, message)).await {
            Ok(Some(mut m)) => {
                stamp.local_reply(&mut m.headers);
                m
            }
            Ok(None) => Message::error(ReturnCode::Timeout, "handler sent no reply"),
            Err(_) => Message::error(ReturnCode::Timeout, "handler did not finish in time"),
        }
    }

    fn dispatch_local(&self, channel: &str, topic: &str, mut m: Message) {
        self.out
            .stamp()
            .local_request(&mut m.headers, channel, topic);
        if let Some(h) = self.handlers.lookup(channel, topic) {
            self.tasks.spawn(async move {
                let _ = handlers::run(h, m).await;
            });
        } else {
            warn!(%channel, %topic, "no callback for a local fire-and-forget message");
        }
    }

    /// Answer a message that is not handled with a RETURN (to `to`) on the connection it came
    /// by, if it is a request that waits for a reply; anything else is just dropped.
    fn bounce(&self, conn: &Conn, env: &Envelope, to: &str, why: Refusal<'_>) {
        if let Some(h) = self.out.stamp().bounce(env, to, why) {
            self.out.send_detached_on(conn, h);
        }
    }

    async fn forward(&self, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        let dest = env.destination();
        let hops = env.hops();
        let next = if hops >= self.out.limits.max_route_hops {
            limited!(conn.log, warn, %dest, hops, "route too long; not forwarding");
            None
        } else {
            self.out.router.route(dest, Some(&conn.peer))
        };
        if let Some(next) = next {
            let mut headers = env.headers.clone();
            self.out.stamp().forward(&mut headers);
            match self
                .out
                .send_on(&next, headers, vec![Segment::Bytes(payload)])
                .await
            {
                Ok(()) => {
                    debug!(%dest, via = %next.peer, "forwarded");
                    return;
                }
                Err(e @ CellnetError::Headers(_)) => warn!("cannot forward: {e}"),
                Err(_) => {}
            }
        }
        let mtype = env.msg_type.as_str();
        limited!(conn.log, warn, %dest, "no path; cannot forward {mtype} message");
        let why = Refusal {
            code: ReturnCode::CommError,
            error: "cannot forward",
            reason: "cant_forward",
        };
        self.bounce(conn, &env, env.origin(), why);
    }

    /// Send a reply without waiting (from a reader task): at once if the connection takes it,
    /// else from a task of its own.
    fn reply_later(self: &Arc<Self>, conn: &Arc<Conn>, asker: Asker, to: ReplyTo, m: Message) {
        if let Some(later) = reply::send_now(&self.out, conn, &asker, to, m) {
            self.finish_reply(conn, asker, later, None);
        }
    }

    /// Send what [`reply::send_now`] could not, on a task of its own (holding `permit`, the
    /// request's in-flight place, until it is sent).
    fn finish_reply(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        asker: Asker,
        later: Later,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let me = self.clone();
        let conn = conn.clone();
        self.tasks.spawn(async move {
            let _permit = permit;
            match later {
                Later::Frame(via, frame) => {
                    if let Err(e) = via.send(frame).await {
                        let origin = asker.origin();
                        limited!(conn.log, warn, %origin, "reply not sent: {e}");
                    }
                }
                Later::Reply(to, m) => {
                    reply::send(&me.out, &me.streams, &conn, &asker, to, m).await;
                }
            }
        });
    }

    async fn on_request(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        if env.channel_is(stream_keys::STREAM_CHANNEL) {
            let (out, origin) = (&self.out, env.origin().to_string());
            let topic = env.topic().to_string();
            let ev = self
                .streams
                .on_message(out, conn, origin, &topic, env.headers, payload)
                .await;
            match ev {
                Some(StreamEvent::Blob {
                    conn,
                    origin,
                    headers,
                    blob,
                }) => self.on_blob(&conn, origin, headers, blob),
                Some(StreamEvent::Aborted { ri, why }) => {
                    if let Some(id) = RequestId::parse(&ri) {
                        let failed = Message::error(ReturnCode::CommError, why);
                        let key = WaitKey::StreamReply(id);
                        self.out.router.resolve(&key, ReplyFrom::Anyone, failed);
                    }
                }
                None => {}
            }
            return;
        }
        let (origin, channel, topic) = (env.origin(), env.channel(), env.topic());
        let (reply_to, id) = match (env.reply_expected(), env.req_id()) {
            (true, Some(id)) => (ReplyTo::Plain, id),
            (true, None) => {
                limited!(conn.log, warn, %origin, "request expects a reply but has no cn__req_id; treated as fire-and-forget");
                (ReplyTo::Nobody, "")
            }
            _ => (ReplyTo::Nobody, ""),
        };
        let asker = Asker::new(origin, channel, topic, id);
        if env.encrypted() {
            limited!(conn.log, warn, %origin, %channel, %topic, "end-to-end encrypted payload; not supported");
            let e = Message::error(
                ReturnCode::InvalidRequest,
                "end-to-end encrypted payloads (cn__secure) are not supported by this cell",
            );
            self.reply_later(conn, asker, reply_to, e);
            return;
        }
        match Payload::from_wire(env.payload_encoding(), payload) {
            Ok(payload) => {
                let m = Message {
                    headers: env.headers,
                    payload,
                };
                self.dispatch(conn, asker, m, reply_to);
            }
            Err(e) => {
                limited!(conn.log, warn, %origin, %channel, %topic, "undecodable payload: {e}");
                let e = Message::error(ReturnCode::InvalidRequest, e.to_string());
                self.reply_later(conn, asker, reply_to, e);
            }
        }
    }

    /// A stream arrived complete: a streamed reply for a waiter, or a request to dispatch.
    fn on_blob(self: &Arc<Self>, conn: &Arc<Conn>, origin: String, chunk0: Headers, blob: Bytes) {
        let b = Blob::from_chunk_headers(chunk0, &origin);
        let payload = Payload::from_wire(b.encoding.as_deref(), blob);
        if b.is_reply() {
            let Some(ri) = b.ri else {
                limited!(conn.log, warn, %origin, "streamed reply without sm__ri; dropped");
                return;
            };
            let msg = match payload {
                Ok(payload) => Message {
                    headers: b.headers,
                    payload,
                },
                Err(e) => Message::error(ReturnCode::CommError, format!("bad reply payload: {e}")),
            };
            let resolved = RequestId::parse(&ri).is_some_and(|id| {
                let key = WaitKey::StreamReply(id);
                self.out.router.resolve(&key, ReplyFrom::Anyone, msg)
            });
            if !resolved {
                limited!(conn.log, warn, %origin, %ri, "unexpected streamed reply (nobody waits for it); dropped");
            }
            return;
        }
        let reply_to = match b.ri {
            Some(_) => ReplyTo::Stream,
            None => ReplyTo::Nobody,
        };
        let ri = b.ri.as_deref().unwrap_or_default();
        let asker = Asker::new(&origin, &b.channel, &b.topic, ri);
        match payload {
            Ok(payload) => {
                let m = Message {
                    headers: b.headers,
                    payload,
                };
                self.dispatch(conn, asker, m, reply_to);
            }
            Err(e) => {
                limited!(conn.log, warn, origin = %asker.origin(), "undecodable streamed payload: {e}");
                let e = Message::error(ReturnCode::InvalidRequest, e.to_string());
                self.reply_later(conn, asker, reply_to, e);
            }
        }
    }

    /// Run the handler of a complete request (plain or reassembled from a stream).
    fn dispatch(self: &Arc<Self>, conn: &Arc<Conn>, asker: Asker, msg: Message, to: ReplyTo) {
        let (origin, channel, topic) = (asker.origin(), asker.channel(), asker.topic());
        if channel == CELLNET_CHANNEL && (topic == BYE_TOPIC || topic == PROBE_TOPIC) {
            debug!(%origin, %topic, "cellnet message");
            let ok = Message::new().with_return_code(ReturnCode::Ok);
            self.reply_later(conn, asker, to, ok);
            return;
        }
        if self.stopping() {
            let e = Message::error(ReturnCode::ServiceUnavailable, "cell is shutting down");
            self.reply_later(conn, asker, to, e);
            return;
        }
        let Some(handler) = self.handlers.lookup(channel, topic) else {
            limited!(conn.log, warn, %origin, %channel, %topic, "no callback registered");
            let e = Message::error(ReturnCode::ProcessException, "no callback");
            self.reply_later(conn, asker, to, e);
            return;
        };
        let Ok(permit) = conn.in_flight.clone().try_acquire_owned() else {
            limited!(conn.log, warn, %origin, "too many in-flight requests from this peer");
            let max = self.out.limits.max_in_flight_per_peer;
            let e = Message::error(
                ReturnCode::ServiceUnavailable,
                format!("more than {max} in-flight requests"),
            );
            self.reply_later(conn, asker, to, e);
            return;
        };
        // The handler's first step runs here, on the reader: a handler that answers at once
        // (most small requests) costs no task, and its reply is written from here if the
        // connection takes it without waiting. One that waits for something goes on on a
        // task of its own, holding the in-flight place until its reply is sent. (A handler
        // with heavy synchronous work should await something first: its first step would
        // hold up this connection's next message.)
        let span = tracing::debug_span!("handler", %origin, %channel, %topic);
        let info = conn.info();
        let started = span.in_scope(|| {
            ConnectionInfo::sync_scope(Arc::clone(&info), || handlers::start(&*handler, msg))
        });
        let fut = match started {
            Started::Done(None) => return,
            Started::Done(Some(reply)) => {
                if let Some(later) = reply::send_now(&self.out, conn, &asker, to, reply) {
                    self.finish_reply(conn, asker, later, Some(permit));
                }
                return;
            }
            Started::Pending(fut) => fut,
        };
        let me = self.clone();
        let conn = conn.clone();
        let abandon = self.abandon.clone();
        self.tasks.spawn(
            async move {
                let _permit = permit;
                let reply = tokio::select! {
                    r = ConnectionInfo::scope(info, handlers::finish(fut)) => r,
                    _ = abandon.cancelled() => Some(Message::error(ReturnCode::CommError, "cell shut down before the handler finished")),
                };
                if let Some(reply) = reply {
                    reply::send(&me.out, &me.streams, &conn, &asker, to, reply).await;
                }
            }
            .instrument(span),
        );
    }

    fn on_reply(&self, conn: &Conn, env: Envelope, payload: Bytes) {
        let ids = env.reply_ids();
        let payload = Payload::from_wire(env.payload_encoding(), payload);
        let Envelope {
            msg_type,
            names,
            headers,
        } = env;
        let origin = names.origin();
        if ids.is_empty() {
            limited!(conn.log, warn, peer = %conn.peer, %origin, "reply without cn__req_id; dropped");
            return;
        }
        // A plain reply must come from the cell the request went to (NVFlare's origin
        // check); a RETURN comes from whichever hop could not forward.
        let from = match msg_type {
            MsgType::Return => ReplyFrom::Anyone,
            _ => ReplyFrom::Target(origin),
        };
        let msg = match payload {
            Ok(payload) => Message { headers, payload },
            Err(e) => {
                limited!(conn.log, warn, %origin, "undecodable reply payload: {e}");
                let mut m =
                    Message::error(ReturnCode::CommError, format!("bad reply payload: {e}"));
                m.headers.insert(keys::ORIGIN, origin);
                for id in ids.into_iter().flatten() {
                    let key = WaitKey::Reply(id);
                    self.out.router.resolve(&key, ReplyFrom::Anyone, m.clone());
                }
                return;
            }
        };
        // a RETURN may answer several requests; the last (usually the only) one gets the
        // message itself, not a copy of its headers
        let (mut msg, mut ids) = (msg, ids.into_iter().peekable());
        while let Some(id) = ids.next() {
            let m = match ids.peek() {
                Some(_) => msg.clone(),
                None => std::mem::take(&mut msg),
            };
            let resolved = match &id {
                Ok(ours) => self.out.router.resolve(&WaitKey::Reply(*ours), from, m),
                Err(_) => false,
            };
            if !resolved {
                let id = match id {
                    Ok(ours) => ours.to_text(),
                    Err(text) => text,
                };
                limited!(conn.log, warn, %origin, req_id = %id, "unexpected reply (nobody waits for it); dropped")
            }
        }
    }
}

impl Inbound for Node {
    async fn admit(self: &Arc<Self>, conn: &Arc<Conn>, ready: OutFrame) -> Result<(), String> {
        let mut ready = Some(ready);
        // Each round either takes the name or finds a holder; a dead holder is removed
        // before the next round. Three rounds: two newcomers racing for a dead name.
        for _ in 0..3 {
            let claim = self.out.router.claim(conn, || match ready.take() {
                Some(f) => conn.try_send(f).map_err(|e| e.to_string()),
                None => Ok(()),
            })?;
            let old = match claim {
                Claim::Taken => return Ok(()),
                Claim::Held(old) => old,
            };
            let (peer, holder, newcomer) = (&conn.peer, &old.peer_addr, &conn.peer_addr);
            let probe = self.out.limits.name_probe_timeout;
            if old.is_alive(probe).await {
                warn!(%peer, %holder, %newcomer, "a second connection claims the name of a live peer; refused");
                return Err(format!(
                    "a live connection already holds the name {peer:?} on {}; use another name, or stop the other cell first",
                    self.out.me
                ));
            }
            warn!(%peer, %holder, %newcomer, "the connection holding this name sent nothing within {probe:?} of a PING; replacing it");
            old.close.cancel();
            self.out.router.evict(&old);
        }
        Err(format!(
            "several connections are competing for the name {:?}; try again",
            conn.peer
        ))
    }

    fn opened(self: &Arc<Self>, conn: &Arc<Conn>) {
        // We chose to connect again: the new connection replaces an older one.
        if let Some(old) = self.out.router.insert(conn.clone()) {
            if old.id != conn.id {
                tracing::info!(peer = %conn.peer, "new connection replaces the old one");
                old.close.cancel();
            }
        }
    }

    async fn message(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        // Attribution: the origin a message claims must be one this connection can vouch
        // for, so handlers (and forwarding) only ever see proven origins.
        let me = &self.out.me;
        if !trust::vouches(me, &conn.peer, conn.outbound, env.origin()) {
            let (origin, peer) = (env.origin(), &conn.peer);
            limited!(conn.log, warn, %peer, %origin, "message claims an origin this connection cannot speak for; refused");
            let error = format!(
                "refused by {me}: the connection from {peer:?} cannot send messages as {origin:?} (a cell speaks only for itself and the cells below it)",
            );
            // back toward the requester, on the connection it came by (a relay in between
            // forwards it); a RETURN is matched by request id whatever its origin
            let why = Refusal {
                code: ReturnCode::Unauthenticated,
                error: &error,
                reason: "unauthenticated_origin",
            };
            self.bounce(conn, &env, origin, why);
            return;
        }
        if env.destination() != me.as_str() {
            if self.forwarding == Forwarding::Off {
                let (peer, dest) = (&conn.peer, env.destination());
                limited!(conn.log, warn, %peer, %dest, "message for another cell; this cell does not forward");
                let error = format!("cannot forward: {me} does not relay messages for other cells");
                let why = Refusal {
                    code: ReturnCode::CommError,
                    error: &error,
                    reason: "cant_forward",
                };
                self.bounce(conn, &env, env.origin(), why);
                return;
            }
            self.forward(conn, env, payload).await;
            return;
        }
        match env.msg_type {
            MsgType::Req => self.on_request(conn, env, payload).await,
            MsgType::Reply | MsgType::Return => self.on_reply(conn, env, payload),
            MsgType::Other(ref other) => {
                limited!(conn.log, warn, peer = %conn.peer, "unknown cn__msg_type {other:?}; dropped")
            }
        }
    }

    fn closed(self: &Arc<Self>, conn: &Arc<Conn>) {
        self.out.router.remove(conn);
        self.streams.drop_connection(conn.id);
    }
}
