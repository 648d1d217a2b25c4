//! One connection: a reader task that splits frames off the socket ([`crate::reader`]) and
//! hands them to the cell, a writer task ([`crate::writer`]), the HELLO/READY handshake and
//! heartbeats (f3-wire.md §1.3, §1.4).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rmpv::Value;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::admission::Admitted;
use crate::cell::CellInner;
use crate::driver::Transport;
use crate::error::CellnetError;
use crate::fqcn::{self, Fqcn};
use crate::frame::{FrameType, OutFrame, APP_ID_CELLNET};
use crate::held::AccountHandle;
use crate::log_limit::{limited, LogLimiter};
use crate::msgpack;
use crate::reader::{FrameReader, ReadLimits};
use crate::router::Link;
use crate::writer::writer_task;

/// Frames queued for the writer before senders wait (backpressure).
const WRITE_QUEUE: usize = 64;
/// Small control frames (PONG, ACK, ERROR, RETURN) queued ahead of data; beyond this the
/// peer is not reading and further control frames are dropped.
const CONTROL_QUEUE: usize = 1024;
/// How often the heartbeat monitor looks at a connection (NVFlare ticks every 5 s).
const HEARTBEAT_TICK: Duration = Duration::from_secs(5);

/// A connection after the handshake: the cell's routing-table entry for a peer.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Unique per cell; tells an evicted connection from its replacement.
    pub id: u64,
    /// The peer's FQCN (from HELLO or READY).
    pub peer: String,
    /// Peer socket address, for logs.
    pub peer_addr: String,
    tx: mpsc::Sender<OutFrame>,
    /// Control frames, written before queued data (bounded by [`CONTROL_QUEUE`]).
    ctl_tx: mpsc::Sender<OutFrame>,
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
}

tokio::task_local! {
    static CURRENT: ConnectionInfo;
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
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Run `f` with `info` as the current connection.
    pub(crate) async fn scope<F: std::future::Future>(info: ConnectionInfo, f: F) -> F::Output {
        CURRENT.scope(info, f).await
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
    pub(crate) fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            peer: self.peer.clone(),
            addr: self.peer_addr.clone(),
        }
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
        self.tx.try_send(f).map_err(|_| {
            CellnetError::ConnectionClosed(format!("connection to {} is closed", self.peer))
        })
    }

    /// Queue a frame, waiting while the queue is full.
    pub async fn send(&self, f: OutFrame) -> Result<(), CellnetError> {
        self.tx.send(f).await.map_err(|_| {
            CellnetError::ConnectionClosed(format!("connection to {} is closed", self.peer))
        })
    }

    /// Queue a control frame without waiting (from the reader: PONGs, ACKs, ERRORs, RETURNs),
    /// ahead of queued data, so the reader never blocks on its own writer. If even the
    /// control queue is full the peer is not reading at all; the frame is dropped rather than
    /// buffered without bound (a dropped ACK is repeated later, a dropped RETURN makes the
    /// requester time out).
    pub fn send_detached(&self, f: OutFrame) {
        match self.ctl_tx.try_send(f) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(peer = %self.peer, "write queue full; control frame dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(peer = %self.peer, "dropping frame for a closed connection");
            }
        }
    }
}

/// Extra HELLO/READY key: "this endpoint registers a peer before it reads the peer's next
/// frame", i.e. DATA may follow READY at once. NVFlare keeps unknown keys as endpoint
/// properties and ignores them.
const SYNC_KEY: &str = "ferry_sync";

/// Channel/topic of the probe a connecting cell sends to a peer that does not announce
/// [`SYNC_KEY`] (NVFlare): its reply proves the peer has registered us.
pub(crate) const PROBE_TOPIC: &str = "ferry_probe";

/// Extra READY key: the accepting side refuses this connection, and says why (a live cell
/// already has the name, the certificate is for another name, ...). The connection closes
/// right after. NVFlare ignores unknown keys; a ferry cell reports the reason as
/// [`CellnetError::Refused`].
const REFUSED_KEY: &str = "ferry_refused";

/// Extra READY key next to [`REFUSED_KEY`]: the refusal is about load (too many
/// connections), not about who we are; a ferry cell reports it as [`CellnetError::Busy`].
const BUSY_KEY: &str = "ferry_busy";

/// The payload of HELLO and READY (READY with `refused` set says no).
fn hello_payload(own: &Fqcn, refused: Option<&str>) -> Bytes {
    refusal_payload(own, refused, false)
}

fn refusal_payload(own: &Fqcn, refused: Option<&str>, busy: bool) -> Bytes {
    let n = 4 + refused.is_some() as u32 + busy as u32;
    let mut w = msgpack::MsgpackWriter::new();
    w.map_len(n)
        .str("endpoint_name")
        .str(own.as_str())
        .str("timestamp")
        .f64(crate::clock::unix_now())
        .str("fqcn")
        .str(own.as_str())
        .str(SYNC_KEY)
        .bool(true);
    if let Some(why) = refused {
        w.str(REFUSED_KEY).str(why);
    }
    if busy {
        w.str(BUSY_KEY).bool(true);
    }
    w.finish().to_contiguous()
}

/// The wire bytes of a READY that refuses a connection because this cell is busy (sent
/// before the peer's HELLO is read; see [`crate::admission`]).
pub(crate) fn busy_ready(own: &Fqcn, why: &str) -> Bytes {
    control(FrameType::Ready, refusal_payload(own, Some(why), true))
        .to_bytes(1, 1)
        .unwrap_or_default()
}

/// The refusal a READY payload carries, if any, as the error to report.
fn hello_refusal(payload: &[u8]) -> Option<CellnetError> {
    match msgpack::decode_value(payload, payload.len().max(1)) {
        Ok(Value::Map(entries)) => {
            let why = entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(REFUSED_KEY))
                .map(|(_, v)| v.as_str().unwrap_or("refused").to_string())?;
            let busy = entries
                .iter()
                .any(|(k, v)| k.as_str() == Some(BUSY_KEY) && v.as_bool() == Some(true));
            Some(if busy {
                CellnetError::Busy(why)
            } else {
                CellnetError::Refused(why)
            })
        }
        _ => None,
    }
}

/// True if a READY/HELLO payload announces [`SYNC_KEY`].
fn hello_sync(payload: &[u8]) -> bool {
    match msgpack::decode_value(payload, payload.len().max(1)) {
        Ok(Value::Map(entries)) => entries
            .iter()
            .any(|(k, v)| k.as_str() == Some(SYNC_KEY) && v.as_bool() == Some(true)),
        _ => false,
    }
}

/// The `endpoint_name` of a HELLO/READY payload.
fn hello_name(payload: &[u8]) -> Result<String, CellnetError> {
    let v = msgpack::decode_value(payload, payload.len().max(1))
        .map_err(|e| CellnetError::Handshake(format!("undecodable HELLO/READY payload: {e}")))?;
    let Value::Map(entries) = v else {
        return Err(CellnetError::Handshake(
            "HELLO/READY payload is not a map".into(),
        ));
    };
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("endpoint_name"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| CellnetError::Handshake("HELLO/READY without endpoint_name".into()))
}

fn control(frame_type: FrameType, payload: Bytes) -> OutFrame {
    OutFrame {
        frame_type,
        app_id: 0,
        headers: Bytes::new(),
        payload: vec![payload],
    }
}

fn nil_payload() -> Bytes {
    Bytes::from_static(&[0xc0])
}

/// What the handshake learnt.
enum Handshake {
    /// The peer's validated FQCN, and whether it may receive DATA right away (always true
    /// on the accepting side; on the connecting side only if READY announced [`SYNC_KEY`]).
    /// On the accepting side READY is not sent yet: admission ([`CellInner::admit`]) decides
    /// between READY and a refusal.
    Peer(String, bool),
    /// The peer claimed our own name: keep the socket, never register it (NVFlare).
    OwnName,
}

async fn handshake(
    cell: &CellInner,
    reader: &mut FrameReader,
    tx: &mpsc::Sender<OutFrame>,
    active: bool,
    peer_cn: Option<&str>,
    log: &LogLimiter,
) -> Result<Handshake, CellnetError> {
    let closed = || CellnetError::ConnectionClosed("closed during handshake".into());
    if active {
        tx.send(control(FrameType::Hello, hello_payload(&cell.out.me, None)))
            .await
            .map_err(|_| closed())?;
    }
    loop {
        let Some(frame) = reader.next().await? else {
            return Err(closed());
        };
        match (frame.frame_type(), active) {
            (Some(FrameType::Ready), true) => {
                if let Some(refusal) = hello_refusal(&frame.payload) {
                    return Err(refusal);
                }
                let name = hello_name(&frame.payload)?;
                fqcn::validate(&name).map_err(|r| {
                    CellnetError::Handshake(format!("READY with invalid FQCN {name:?}: {r}"))
                })?;
                check_cn(peer_cn, &name)?;
                return Ok(Handshake::Peer(name, hello_sync(&frame.payload)));
            }
            (Some(FrameType::Hello), false) => {
                let checked = hello_name(&frame.payload).and_then(|name| {
                    fqcn::validate(&name).map_err(|r| {
                        CellnetError::Handshake(format!("HELLO with invalid FQCN {name:?}: {r}"))
                    })?;
                    check_cn(peer_cn, &name)?;
                    Ok(name)
                });
                let name = match checked {
                    Ok(name) => name,
                    Err(e) => {
                        // tell the peer why before closing (a ferry cell reports it)
                        let why = e.to_string();
                        let _ = tx
                            .send(control(
                                FrameType::Ready,
                                hello_payload(&cell.out.me, Some(&why)),
                            ))
                            .await;
                        return Err(e);
                    }
                };
                if name == cell.out.me.as_str() {
                    limited!(
                        log,
                        error,
                        "peer claims this cell's own name {name:?}; not registered"
                    );
                    // NVFlare answers READY and keeps the socket
                    tx.send(control(FrameType::Ready, hello_payload(&cell.out.me, None)))
                        .await
                        .map_err(|_| closed())?;
                    return Ok(Handshake::OwnName);
                }
                return Ok(Handshake::Peer(name, true));
            }
            (Some(FrameType::Ping), _) => {
                let _ = tx.try_send(control(FrameType::Pong, nil_payload()));
            }
            (Some(FrameType::Data), _) => {
                limited!(
                    log,
                    error,
                    "DATA frame before the handshake completed; dropped"
                );
            }
            (Some(t), _) => debug!("{t:?} frame during the handshake; dropped"),
            (None, _) => limited!(
                log,
                error,
                "received unsupported frame type {}; dropped",
                frame.prefix.frame_type
            ),
        }
    }
}

/// Under TLS: the certificate CN must be the first segment of the FQCN the peer claims.
fn check_cn(peer_cn: Option<&str>, name: &str) -> Result<(), CellnetError> {
    match peer_cn {
        Some(cn) if name.split('.').next() != Some(cn) => Err(CellnetError::PeerIdentity {
            certificate: cn.to_string(),
            claimed: name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Run a connection until it closes. `ready` receives the handshake outcome (the peer FQCN).
///
/// `admitted` is the place an accepted connection holds under the cell's connection limits
/// (`None` for connections this cell opened); it is freed when the connection ends.
pub(crate) async fn run(
    cell: Arc<CellInner>,
    t: Transport,
    active: bool,
    ready: Option<oneshot::Sender<Result<Fqcn, CellnetError>>>,
    admitted: Option<Admitted>,
) {
    static IDS: AtomicU64 = AtomicU64::new(1);
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!(
        "conn",
        id,
        cell = %cell.out.me,
        addr = %t.peer_addr,
        dir = if active { "out" } else { "in" },
        peer = tracing::field::Empty
    );
    let log = admitted
        .as_ref()
        .map(|a| Arc::clone(&a.log))
        .unwrap_or_default();
    run_inner(cell, t, active, ready, id, log)
        .instrument(span)
        .await;
    drop(admitted);
}

async fn run_inner(
    cell: Arc<CellInner>,
    t: Transport,
    active: bool,
    mut ready: Option<oneshot::Sender<Result<Fqcn, CellnetError>>>,
    id: u64,
    log: Arc<LogLimiter>,
) {
    let limits = &cell.out.limits;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let close = cell.conns_token.child_token();
    cell.io_tasks
        .spawn(writer_task(t.wr, rx, ctl_rx, close.clone(), limits.send_timeout).in_current_span());
    // Everything this connection holds of unfinished data is charged here, and given back
    // when the account is dropped at the end of this function.
    let account = cell.held.register(id, close.clone(), &t.peer_addr);
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
            handshake(&cell, &mut reader, &tx, active, t.peer_cn.as_deref(), &log),
        ) => r.unwrap_or_else(|_| Err(CellnetError::Timeout("handshake".into()))),
        _ = close.cancelled() => Err(CellnetError::Shutdown),
    };
    let (peer, sync) = match hs {
        Ok(Handshake::Peer(p, sync)) => (p, sync),
        Ok(Handshake::OwnName) => {
            // keep the socket open (NVFlare does) but never route to it
            idle_unregistered(&mut reader, &tx, &close).await;
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
        tx,
        ctl_tx,
        close: close.clone(),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight_per_peer)),
        outbound: active,
        rx_frames: AtomicU64::new(0),
        probing: AtomicU32::new(0),
        rx_event: Notify::new(),
        log,
        account: account.handle(),
    });
    reader.handshake_done();
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    if active {
        cell.register_agent(conn.clone());
    } else {
        // The name is ours only if no live connection holds it; READY goes out as the name
        // is taken, so nothing routed to the peer can overtake it.
        let admitted = tokio::select! {
            r = cell.admit(&conn, control(FrameType::Ready, hello_payload(&cell.out.me, None))) => r,
            _ = close.cancelled() => Err("shutting down".to_string()),
        };
        if let Err(why) = admitted {
            limited!(conn.log, warn, peer = %peer, addr = %conn.peer_addr, "connection refused: {why}");
            let _ = conn
                .send(control(
                    FrameType::Ready,
                    hello_payload(&cell.out.me, Some(&why)),
                ))
                .await;
            close.cancel();
            return;
        }
    }
    info!(peer = %peer, "connected");
    if let Some(r) = ready.take() {
        // peer was validated in the handshake
        let fqcn = Fqcn::new(peer.clone());
        if sync {
            let _ = r.send(fqcn);
        } else {
            // NVFlare sends READY before it registers us and handles frames on a thread
            // pool: a DATA frame right behind READY can be dropped. Report the connection
            // only once a probe request got a reply (any reply) through it.
            let cell2 = cell.clone();
            let peer2 = peer.clone();
            let budget = cell.out.limits.handshake_timeout;
            cell.io_tasks.spawn(
                async move {
                    cell2.probe(&peer2, budget).await;
                    let _ = r.send(fqcn);
                }
                .in_current_span(),
            );
        }
    }

    let reason = read_loop(&cell, &conn, &mut reader).await;
    info!(peer = %peer, addr = %conn.peer_addr, "connection closed: {reason}");
    close.cancel();
    cell.unregister_agent(&conn);
    drop(reader);
    drop(account);
}

async fn read_loop(cell: &Arc<CellInner>, conn: &Arc<Conn>, reader: &mut FrameReader) -> String {
    let hb = cell.out.limits.heartbeat_interval;
    let mut tick = tokio::time::interval(HEARTBEAT_TICK.min(hb / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        let frame = tokio::select! {
            r = reader.next() => r,
            _ = conn.close.cancelled() => return "closed locally".into(),
            _ = tick.tick() => {
                let now = Instant::now();
                if now.duration_since(last_rx) >= hb && now.duration_since(last_ping) >= hb {
                    debug!("idle for {:?}; sending PING", now.duration_since(last_rx));
                    last_ping = now;
                    conn.send_detached(control(FrameType::Ping, nil_payload()));
                }
                continue;
            }
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
        last_rx = Instant::now();
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
                cell.on_data(conn, frame).await;
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

/// A peer that claimed our own name: answer PINGs, drop everything else, until it leaves.
async fn idle_unregistered(
    reader: &mut FrameReader,
    tx: &mpsc::Sender<OutFrame>,
    close: &CancellationToken,
) {
    loop {
        let f = tokio::select! {
            r = reader.next() => r,
            _ = close.cancelled() => return,
        };
        match f {
            Ok(Some(f)) if f.frame_type() == Some(FrameType::Ping) => {
                let _ = tx.try_send(control(FrameType::Pong, nil_payload()));
            }
            Ok(Some(_)) => debug!("frame from an unregistered peer dropped"),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use bytes::BytesMut;

    #[test]
    fn hello_capture_parses() {
        // f3-wire.md §1.3: HELLO site-1 → server, 69 bytes
        let mut wire = vec![
            0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x01, 0x83, 0xad,
        ];
        wire.extend_from_slice(b"endpoint_name");
        wire.push(0xa6);
        wire.extend_from_slice(b"site-1");
        wire.push(0xa9);
        wire.extend_from_slice(b"timestamp");
        wire.extend_from_slice(&[0xcb, 0x41, 0xda, 0xc2, 0x86, 0x77, 0xde, 0xf7, 0x74, 0xa4]);
        wire.extend_from_slice(b"fqcn");
        wire.push(0xa6);
        wire.extend_from_slice(b"site-1");
        assert_eq!(wire.len(), 69);
        let mut buf = BytesMut::from(&wire[..]);
        let f = FrameDecoder::new(1 << 20, 65535)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(f.frame_type(), Some(FrameType::Hello));
        assert_eq!(hello_name(&f.payload).unwrap(), "site-1");
        // our own HELLO has the same shape and length for the same name
        let ours = control(
            FrameType::Hello,
            hello_payload(&Fqcn::new("site-1").unwrap(), None),
        )
        .to_bytes(1, 1)
        .unwrap();
        // plus the ferry_sync key: 83 -> 84 map, 12 more bytes
        assert_eq!(ours.len(), 69 + 12);
        assert_eq!(&ours[4..16], &wire[4..16]);
        assert_eq!(ours[16], 0x84);
        assert_eq!(&ours[17..36], &wire[17..36]);
        assert!(hello_sync(&ours[16..]));
        assert!(!hello_sync(&wire[16..]));
    }

    #[test]
    fn hello_name_rejects_garbage() {
        assert!(hello_name(&[0xc0]).is_err());
        assert!(hello_name(&[0x80]).is_err());
        assert!(hello_name(&[0xc1]).is_err());
        assert!(hello_name(&[0x81, 0xad]).is_err());
    }
}
