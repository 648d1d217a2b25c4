//! One connection: a reader task that splits frames off the socket ([`crate::reader`]),
//! decodes the envelope of each DATA message and hands it up through the narrow [`Inbound`]
//! interface; a writer task ([`crate::writer`]); the HELLO/READY handshake
//! ([`crate::handshake`]) and heartbeats (f3-wire.md §1.3, §1.4). A connection knows its
//! cell only through [`Inbound`] and the [`Context`] it was given.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::admission::Admitted;
use crate::driver::Transport;
use crate::envelope::{Envelope, MsgType};
use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::frame::{Frame, FrameType, OutFrame, APP_ID_CELLNET};
use crate::handshake::{self, control, hello_payload, nil_payload, Handshake};
use crate::headers::memo::DecodeMemo;
use crate::held::{AccountHandle, HeldBudget};
use crate::limits::Limits;
use crate::log_limit::{limited, LogLimiter};
use crate::reader::{FrameReader, ReadLimits};
use crate::router::Link;
use crate::writer::{writer, writer_task, WriteQueue};
use alarm::Alarm;

/// Frames queued for the writer before senders wait (backpressure).
const WRITE_QUEUE: usize = 64;
/// Small control frames (PONG, ACK, ERROR, RETURN) queued ahead of data; beyond this the
/// peer is not reading and further control frames are dropped.
const CONTROL_QUEUE: usize = 1024;
/// How often the heartbeat monitor looks at a connection (NVFlare ticks every 5 s).
const HEARTBEAT_TICK: Duration = Duration::from_secs(5);
/// After a write failed, how long the reader may go on reading what the peer sent before it
/// went. A peer that reset the connection ends the read at once (its data, then the reset);
/// this bounds a peer that shut only its reading side.
const DRAIN_AFTER_WRITE_FAILURE: Duration = Duration::from_secs(5);

/// A connection after the handshake: the cell's routing-table entry for a peer.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Unique per cell; tells an evicted connection from its replacement.
    pub id: u64,
    /// The peer's FQCN (from HELLO or READY).
    pub peer: String,
    /// Peer socket address, for logs.
    pub peer_addr: String,
    /// The way to the socket: data frames (bounded by [`WRITE_QUEUE`]), control frames
    /// ahead of them (bounded by [`CONTROL_QUEUE`]).
    out: WriteQueue,
    /// Cancelled to close the connection (the writer flushes what is queued first).
    pub close: CancellationToken,
    /// Permits for requests from this peer whose handlers are running.
    pub in_flight: Arc<Semaphore>,
    /// True if this cell opened the connection (the peer is our parent and routes for
    /// others); false if the peer connected to us. Decides which origins it may carry.
    pub outbound: bool,
    /// Frames received so far: a liveness probe watches it move.
    rx_frames: AtomicU64,
    /// Liveness probes waiting; while there are any the reader signals `rx_event` per frame
    /// (and only then, so the hot path pays one atomic load).
    probing: AtomicU32,
    rx_event: Notify,
    /// Rate limit of every complaint about this peer's input (bad frames, undecodable
    /// headers, messages in names it cannot vouch for, ...): one log line per period,
    /// shared by the connections from the same address.
    pub log: Arc<LogLimiter>,
    /// This connection's account with the cell's held-memory budget (stream reassembly
    /// charges to it).
    pub account: AccountHandle,
    /// What its handlers see of it ([`ConnectionInfo::current`]), made once: every request
    /// would otherwise copy the peer's name and address.
    info: Arc<ConnectionInfo>,
}

tokio::task_local! {
    static CURRENT: Arc<ConnectionInfo>;
}

/// The connection a request arrived on, as its handler sees it: [`ConnectionInfo::current`].
///
/// A peer's proven name can stand for many cells (a cell speaks for the cells below it), and
/// the same name can come back on a new connection; the connection id is what tells one
/// socket from another (a sender's byte budget gives each connection its own share).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ferry_cellnet::CellnetError> {
/// use std::time::Duration;
/// use ferry_cellnet::{Cell, ConnectionInfo, Message};
///
/// let server = Cell::new("server")?;
/// server.register_request_handler("t", "who", |_m: Message| async move {
///     let c = ConnectionInfo::current().expect("inside a handler");
///     Message::from_value(c.peer)
/// });
/// let url = server.listen("tcp://127.0.0.1:0").await?;
/// let site = Cell::new("site-1")?;
/// site.connect(&url).await?;
/// let r = site.send_request("t", "who", "server", Message::new(), Duration::from_secs(5)).await;
/// assert_eq!(r.value()?.as_str(), Some("site-1"));
/// assert!(ConnectionInfo::current().is_none(), "outside a handler");
/// # site.shutdown().await; server.shutdown().await; Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Unique among the connections of this process.
    pub id: u64,
    /// The peer's name as proven in HELLO/READY (bound to its certificate under TLS).
    pub peer: String,
    /// The peer's socket address.
    pub addr: String,
}

impl ConnectionInfo {
    /// The connection of the request being handled by the current task, `None` outside a
    /// handler (or for a request a cell sent to itself).
    pub fn current() -> Option<ConnectionInfo> {
        CURRENT.try_with(|c| ConnectionInfo::clone(c)).ok()
    }

    /// Run `f` with `info` as the current connection.
    pub(crate) async fn scope<F: std::future::Future>(
        info: Arc<ConnectionInfo>,
        f: F,
    ) -> F::Output {
        CURRENT.scope(info, f).await
    }

    /// Run `f` (synchronous: a handler's first step) with `info` as the current connection.
    pub(crate) fn sync_scope<R>(info: Arc<ConnectionInfo>, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(info, f)
    }
}

impl Link for Conn {
    fn id(&self) -> u64 {
        self.id
    }
    fn peer(&self) -> &str {
        &self.peer
    }
}

impl Conn {
    /// What a handler may know of this connection.
    pub(crate) fn info(&self) -> Arc<ConnectionInfo> {
        Arc::clone(&self.info)
    }

    /// Count a received frame (the reader calls this for every frame).
    fn saw_frame(&self) {
        self.rx_frames.fetch_add(1, Ordering::Relaxed);
        if self.probing.load(Ordering::Relaxed) > 0 {
            self.rx_event.notify_waiters();
        }
    }

    /// Is the peer still there? Sends a PING and waits up to `timeout` for any frame to
    /// arrive (a PONG, or whatever the peer was sending anyway). A peer that is busy pulling
    /// answers at once; one whose machine died or whose network is gone answers nothing.
    pub async fn is_alive(&self, timeout: Duration) -> bool {
        if self.close.is_cancelled() {
            return false;
        }
        let seen = self.rx_frames.load(Ordering::Relaxed);
        self.probing.fetch_add(1, Ordering::Relaxed);
        self.send_detached(control(FrameType::Ping, nil_payload()));
        let deadline = Instant::now() + timeout;
        let alive = loop {
            let event = self.rx_event.notified();
            if self.rx_frames.load(Ordering::Relaxed) != seen {
                break true;
            }
            tokio::select! {
                _ = event => {}
                _ = tokio::time::sleep_until(deadline) => break false,
                _ = self.close.cancelled() => break false,
            }
        };
        self.probing.fetch_sub(1, Ordering::Relaxed);
        alive
    }

    /// Queue a frame if there is room right now (READY, into a queue nothing else uses yet).
    pub fn try_send(&self, f: OutFrame) -> Result<(), CellnetError> {
        self.out.try_send(f).map_err(|_| self.closed())
    }

    /// Send a frame: written at once when nothing is queued and the socket takes it, else
    /// queued, waiting while the queue is full.
    pub async fn send(&self, f: OutFrame) -> Result<(), CellnetError> {
        self.out.send(f).await.map_err(|_| self.closed())
    }

    /// Send a frame if that needs no waiting (see [`Conn::send`]); `Some(f)` back if the
    /// queue is full.
    pub fn offer(&self, f: OutFrame) -> Result<Option<OutFrame>, CellnetError> {
        self.out.offer(f).map_err(|_| self.closed())
    }

    fn closed(&self) -> CellnetError {
        CellnetError::ConnectionClosed(format!("connection to {} is closed", self.peer))
    }

    /// Queue a control frame without waiting (from the reader: PONGs, ACKs, ERRORs, RETURNs),
    /// ahead of queued data, so the reader never blocks on its own writer. If even the
    /// control queue is full the peer is not reading at all; the frame is dropped rather than
    /// buffered without bound (a dropped ACK is repeated later, a dropped RETURN makes the
    /// requester time out).
    pub fn send_detached(&self, f: OutFrame) {
        match self.out.send_control(f) {
            Ok(true) => {}
            Ok(false) => warn!(peer = %self.peer, "write queue full; control frame dropped"),
            Err(_) => debug!(peer = %self.peer, "dropping frame for a closed connection"),
        }
    }
}

/// What flows up from a connection to its cell. A connection calls nothing else of the cell:
/// it admits or registers itself, hands up each decoded DATA message, and says when it closed.
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A peer that opened a connection to us proved `conn.peer` in HELLO: take the name in
    /// the routing table and queue `ready` in the same step (so nothing routed to the peer
    /// overtakes it), or say why not (the connection then sends a refusal and closes).
    fn admit(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        ready: OutFrame,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// A connection this cell opened is established (READY received).
    fn opened(self: &Arc<Self>, conn: &Arc<Conn>);

    /// A DATA message from `conn`, its envelope read. The reader waits for this to return
    /// (backpressure), so it must not wait for anything but memory to keep what it holds.
    fn message(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        env: Envelope,
        payload: Bytes,
    ) -> impl Future<Output = ()> + Send;

    /// `conn` closed; nothing more comes from it.
    fn closed(self: &Arc<Self>, conn: &Arc<Conn>);
}

/// What a connection gets from its cell besides the [`Inbound`] interface.
pub(crate) struct Context {
    /// The cell's name (HELLO/READY).
    pub me: Fqcn,
    /// The limits in force.
    pub limits: Limits,
    /// Where the writer task runs (joined at shutdown).
    pub tasks: TaskTracker,
    /// Cancelled to close every connection (each one's token is a child of it).
    pub close_all: CancellationToken,
    /// The budget of unfinished data; each connection has an account with it.
    pub held: Arc<HeldBudget>,
}

/// The outcome of a connection this cell opened: the peer's name, and whether it announced
/// `ferry_sync` (else DATA right behind READY may be dropped by the peer, and the caller
/// should probe before it reports the connection usable).
pub(crate) type Opened = Result<(Fqcn, bool), CellnetError>;

/// Run a connection until it closes. `active`: this cell opened it; `ready` then receives
/// the handshake's outcome.
///
/// `admitted` is the place an accepted connection holds under the cell's connection limits
/// (`None` for connections this cell opened); it is freed when the connection ends.
pub(crate) async fn run<I: Inbound>(
    inbound: Arc<I>,
    ctx: Arc<Context>,
    t: Transport,
    active: bool,
    ready: Option<oneshot::Sender<Opened>>,
    admitted: Option<Admitted>,
) {
    static IDS: AtomicU64 = AtomicU64::new(1);
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        id,
        cell = %ctx.me,
        addr = %t.peer_addr,
        dir = if active { "out" } else { "in" },
        peer = tracing::field::Empty
    );
    let log = admitted
        .as_ref()
        .map(|a| Arc::clone(&a.log))
        .unwrap_or_default();
    run_inner(&inbound, &ctx, t, active, ready, id, log)
        .instrument(span)
        .await;
    drop(admitted);
}

async fn run_inner<I: Inbound>(
    inbound: &Arc<I>,
    ctx: &Context,
    t: Transport,
    active: bool,
    mut ready: Option<oneshot::Sender<Opened>>,
    id: u64,
    log: Arc<LogLimiter>,
) {
    let limits = &ctx.limits;
    let (out, w) = writer(t.wr, WRITE_QUEUE, CONTROL_QUEUE);
    let close = ctx.close_all.child_token();
    // Cancelled by the writer when a write fails; the reader then drains what arrived.
    let broken = CancellationToken::new();
    ctx.tasks.spawn(
        writer_task(w, close.clone(), broken.clone(), limits.send_timeout).in_current_span(),
    );
    // Everything this connection holds of unfinished data is charged here, and given back
    // when the account is dropped at the end of this function.
    let account = ctx.held.register(id, close.clone(), &t.peer_addr);
    let mut reader = FrameReader::new(
        t.rd,
        ReadLimits {
            max_frame_size: limits.max_frame_size,
            max_header_size: limits.max_header_size,
            stall_timeout: limits.frame_stall_timeout,
        },
        Some(limits.max_handshake_frame_size),
        Some(account.handle()),
        Arc::clone(&log),
    );

    let hs = tokio::select! {
        r = tokio::time::timeout(
            limits.handshake_timeout,
            handshake::handshake(&ctx.me, &mut reader, &out, active, t.peer_cn.as_deref(), &log),
        ) => r.unwrap_or_else(|_| Err(CellnetError::Timeout("handshake".into()))),
        _ = close.cancelled() => Err(CellnetError::Shutdown),
    };
    let (peer, sync) = match hs {
        Ok(Handshake::Peer(p, sync)) => (p, sync),
        Ok(Handshake::OwnName) => {
            // keep the socket open (NVFlare does) but never route to it
            handshake::idle_unregistered(&mut reader, &out, &close).await;
            close.cancel();
            return;
        }
        Err(e) => {
            match &e {
                CellnetError::Handshake(_) => limited!(log, warn, "{e}; closing"),
                _ => limited!(log, warn, "handshake failed: {e}; closing"),
            }
            if let Some(r) = ready.take() {
                let _ = r.send(Err(e));
            }
            close.cancel();
            return;
        }
    };
    let conn = Arc::new(Conn {
        id,
        peer: peer.clone(),
        peer_addr: t.peer_addr.clone(),
        out,
        close: close.clone(),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight_per_peer)),
        outbound: active,
        rx_frames: AtomicU64::new(0),
        probing: AtomicU32::new(0),
        rx_event: Notify::new(),
        log,
        account: account.handle(),
        info: Arc::new(ConnectionInfo {
            id,
            peer: peer.clone(),
            addr: t.peer_addr.clone(),
        }),
    });
    reader.handshake_done();
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    if active {
        inbound.opened(&conn);
    } else {
        // The name is ours only if no live connection holds it; READY goes out as the name
        // is taken, so nothing routed to the peer can overtake it.
        let ready = control(FrameType::Ready, hello_payload(&ctx.me, None));
        let admitted = tokio::select! {
            r = inbound.admit(&conn, ready) => r,
            _ = close.cancelled() => Err("shutting down".to_string()),
        };
        if let Err(why) = admitted {
            limited!(conn.log, warn, peer = %peer, addr = %conn.peer_addr, "connection refused: {why}");
            let refusal = hello_payload(&ctx.me, Some(&why));
            let _ = conn.send(control(FrameType::Ready, refusal)).await;
            close.cancel();
            return;
        }
    }
    info!(peer = %peer, "connected");
    if let Some(r) = ready.take() {
        // peer was validated in the handshake
        let _ = r.send(Fqcn::new(peer.clone()).map(|f| (f, sync)));
    }

    let alarm = Alarm::watch(&ctx.tasks, &close, &broken);
    let reason = read_loop(inbound, limits, &conn, &mut reader, &alarm).await;
    info!(peer = %peer, addr = %conn.peer_addr, "connection closed: {reason}");
    close.cancel();
    inbound.closed(&conn);
    drop(reader);
    drop(account);
}

/// After handing on a reply with at least this much payload, the read loop lets the task
/// waiting for it run before it reads the next frame. Otherwise, on a one-thread runtime, it
/// reads every reply already in the socket (a download's whole window, megabytes) before the
/// caller that consumes them runs, and the caller then writes bytes that have gone cold in
/// the cache (the page-cache copy of a receiver writing files costs several times as much).
/// Small frames (the requests and replies of round trips) never yield, and neither do
/// requests: a stream chunk wakes nobody until its stream is whole, and yielding between the
/// chunks of many connections only reorders who fills the held-bytes budget first.
const YIELD_AFTER_PAYLOAD: usize = 64 << 10;

async fn read_loop<I: Inbound>(
    inbound: &Arc<I>,
    limits: &Limits,
    conn: &Arc<Conn>,
    reader: &mut FrameReader,
    alarm: &Alarm,
) -> String {
    let hb = limits.heartbeat_interval;
    let mut tick = tokio::time::interval(HEARTBEAT_TICK.min(hb / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When a frame was last seen, to the tick: each tick stamps it if a frame came since
    // the one before, so a frame costs a flag rather than a clock read. A PING may go out up
    // to one tick (at most half the heartbeat interval) later than an exact stamp would send it.
    let mut last_rx = Instant::now();
    let mut rx_since_tick = false;
    let mut last_ping = Instant::now();
    // Armed when the writer failed: read on (what the peer sent before it went) until then.
    let mut drain: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut armed = None;
    // The last header blocks decoded (of two lengths), so that the next one like one of them
    // is checked only where it differs (consecutive requests or replies differ in a few
    // values).
    let mut memo = DecodeMemo::default();
    loop {
        // One future per frame (the reader's); the alarm is an atomic, the heartbeat's and
        // the drain's timers live across frames. The alarm is looked at first, so a peer
        // flooding frames cannot keep a closed connection reading.
        let next = {
            let frame = reader.next();
            tokio::pin!(frame);
            std::future::poll_fn(|cx| {
                let raised = alarm.poll(cx, &mut armed);
                if raised & alarm::CLOSED != 0 {
                    return Poll::Ready(Next::Closed);
                }
                if raised & alarm::BROKEN != 0 && drain.is_none() {
                    drain = Some(Box::pin(tokio::time::sleep(DRAIN_AFTER_WRITE_FAILURE)));
                }
                if let Poll::Ready(r) = frame.as_mut().poll(cx) {
                    return Poll::Ready(Next::Frame(r));
                }
                if let Some(d) = drain.as_mut() {
                    if d.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Next::Drained);
                    }
                }
                while tick.poll_tick(cx).is_ready() {
                    let now = Instant::now();
                    if std::mem::take(&mut rx_since_tick) {
                        last_rx = now;
                    }
                    if now.duration_since(last_rx) >= hb && now.duration_since(last_ping) >= hb {
                        debug!("idle for {:?}; sending PING", now.duration_since(last_rx));
                        last_ping = now;
                        conn.send_detached(control(FrameType::Ping, nil_payload()));
                    }
                }
                Poll::Pending
            })
            .await
        };
        let frame = match next {
            Next::Frame(r) => r,
            Next::Closed => return "closed locally".into(),
            Next::Drained => return "writing to the peer failed, and it sent nothing more".into(),
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return "peer closed the connection".into(),
            Err(e) => {
                match e {
                    CellnetError::Frame(_) => {
                        limited!(conn.log, error, "bad frame, closing the connection: {e}")
                    }
                    CellnetError::Timeout(_) | CellnetError::LimitReached(_) => {
                        limited!(conn.log, warn, "closing the connection: {e}")
                    }
                    _ => {}
                }
                return e.to_string();
            }
        };
        rx_since_tick = true;
        conn.saw_frame();
        match frame.frame_type() {
            Some(FrameType::Data) => {
                if frame.prefix.app_id != APP_ID_CELLNET {
                    limited!(
                        conn.log,
                        warn,
                        "DATA frame for app_id {}; dropped",
                        frame.prefix.app_id
                    );
                    continue;
                }
                if let Some(env) = envelope(conn, &frame, &mut memo) {
                    let hand_off = frame.payload.len() >= YIELD_AFTER_PAYLOAD
                        && matches!(env.msg_type, MsgType::Reply | MsgType::Return);
                    inbound.message(conn, env, frame.payload).await;
                    if hand_off {
                        tokio::task::yield_now().await;
                    }
                }
            }
            Some(FrameType::Ping) => conn.send_detached(control(FrameType::Pong, nil_payload())),
            Some(FrameType::Pong) => {}
            Some(t) => debug!("{t:?} frame after the handshake; dropped"),
            None => limited!(
                conn.log,
                error,
                "received unsupported frame type {}; dropped",
                frame.prefix.frame_type
            ),
        }
    }
}

/// What woke the read loop.
enum Next {
    Frame(Result<Option<Frame>, CellnetError>),
    /// The connection was closed here.
    Closed,
    /// The writer failed and the peer sent nothing more within the drain time.
    Drained,
}

/// The envelope of a DATA frame, or `None` (logged) if it is not a CellNet message.
fn envelope(conn: &Conn, frame: &Frame, memo: &mut DecodeMemo) -> Option<Envelope> {
    // The headers keep their block (as `Headers::decode_bytes`). A frame's headers and payload
    // share one buffer: a map that outlives the payload (a handler keeps the headers, a
    // stream its chunk 0's) must not pin much more than itself, so the map shares the buffer
    // only when the payload is no larger than the header block (a small request or reply:
    // no copy), else gets a copy of the block.
    let block = if frame.payload.len() <= frame.headers.len() {
        frame.headers.clone()
    } else {
        Bytes::copy_from_slice(&frame.headers)
    };
    let headers = match memo.decode(block) {
        Ok(h) => h,
        Err(e) => {
            limited!(conn.log, error, peer = %conn.peer, "error processing frame: {e}; dropped");
            return None;
        }
    };
    match Envelope::parse(headers) {
        Ok(env) => Some(env),
        Err(why) => {
            limited!(conn.log, warn, peer = %conn.peer, "{why}; dropped");
            None
        }
    }
}

mod alarm;
#[cfg(test)]
mod tests;
