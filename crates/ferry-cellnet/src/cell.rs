//! The cell: routing table, handlers, request/reply correlation, forwarding, listeners and
//! connectors, graceful shutdown (f3-wire.md §2).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::admission::{self, Admission};
use crate::connection::{self, Conn, ConnectionInfo, Context, Inbound};
use crate::driver::{self, Url};
use crate::envelope::stream::{reply_topic, Blob};
use crate::envelope::{self, seg_len, Address, Body, Envelope, MsgType, Refusal};
use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::frame::OutFrame;
use crate::handshake;
use crate::headers::{keys, stream_keys, Headers};
use crate::held::HeldBudget;
use crate::limits::Limits;
use crate::log_limit::limited;
use crate::message::{Message, Payload};
use crate::outbound::Outbound;
use crate::return_code::ReturnCode;
use crate::router::{Claim, PeerEvent, ReplyFrom, Router, WaitKey};
use crate::streams::{Outgoing, StreamEvent, Streams};
use crate::trust::{self, Forwarding};

/// Channel of cellnet-internal messages.
pub const CELLNET_CHANNEL: &str = "cellnet.channel";
/// Topic a Python cell sends to its peers when it stops.
pub const BYE_TOPIC: &str = "bye";
/// Wildcard channel/topic for handler registration.
pub const ANY: &str = "*";

/// How long [`Cell::shutdown`] lets running handlers finish before failing their requests.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What a request handler may return.
///
/// - [`Message`]: the reply (`cn__return_code` defaults to `ok`);
/// - `Option<Message>`: `None` sends no reply at all (the requester times out), as a Python
///   callback returning `None`;
/// - `Result<Message, E>`: `Err(e)` becomes a `process_exception` reply with `e` as text.
pub trait IntoReply {
    /// Convert into the reply to send, `None` for no reply.
    fn into_reply(self) -> Option<Message>;
}

impl IntoReply for Message {
    fn into_reply(self) -> Option<Message> {
        Some(self)
    }
}

impl IntoReply for Option<Message> {
    fn into_reply(self) -> Option<Message> {
        self
    }
}

impl<E: std::fmt::Display> IntoReply for Result<Message, E> {
    fn into_reply(self) -> Option<Message> {
        Some(match self {
            Ok(m) => m,
            Err(e) => Message::error(ReturnCode::ProcessException, e.to_string()),
        })
    }
}

type HandlerFuture = Pin<Box<dyn Future<Output = Option<Message>> + Send>>;

trait Handler: Send + Sync {
    fn call(&self, m: Message) -> HandlerFuture;
}

struct FnHandler<F>(F);

impl<F, Fut, R> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply + 'static,
{
    fn call(&self, m: Message) -> HandlerFuture {
        let fut = (self.0)(m);
        Box::pin(async move { fut.await.into_reply() })
    }
}

/// Options of [`Cell::send_request_with`] and [`Cell::fire_and_forget_with`].
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

/// Where the reply to a dispatched request goes.
pub(crate) enum ReplyTo {
    /// Fire-and-forget: no reply.
    Nobody,
    /// A plain REPLY with this `cn__req_id`.
    Plain(String),
    /// A streamed reply on `return_only` with this `sm__ri`.
    Stream(String),
}

/// Builder of a [`Cell`].
#[derive(Debug)]
pub struct CellBuilder {
    fqcn: Fqcn,
    limits: Limits,
    forwarding: Forwarding,
    #[cfg(feature = "tls")]
    tls: Option<crate::driver::tls::TlsConfig>,
}

impl CellBuilder {
    /// Use these limits (see [`Limits`] for the defaults).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether this cell relays messages addressed to other cells (default
    /// [`Forwarding::Relay`], what NVFlare topologies need; endpoints such as `ferry serve`
    /// use [`Forwarding::Off`]).
    pub fn forwarding(mut self, forwarding: Forwarding) -> Self {
        self.forwarding = forwarding;
        self
    }

    /// Certificates for `stcp://` URLs (listening and connecting).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::driver::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Create the cell. No task runs until it listens or connects.
    pub fn build(self) -> Cell {
        let limits = self.limits.sanitized();
        let held = HeldBudget::new(limits.max_held_bytes);
        let io_tasks = TaskTracker::new();
        let conns_token = CancellationToken::new();
        let ctx = Arc::new(Context {
            me: self.fqcn.clone(),
            limits: limits.clone(),
            tasks: io_tasks.clone(),
            close_all: conns_token.clone(),
            held: held.clone(),
        });
        Cell {
            inner: Arc::new(CellInner {
                admission: Admission::new(
                    limits.max_connections,
                    limits.max_connections_per_address,
                ),
                held,
                ctx,
                streams: Streams::new(&limits),
                out: Outbound {
                    me: self.fqcn,
                    limits,
                    router: Router::default(),
                },
                forwarding: self.forwarding,
                #[cfg(feature = "tls")]
                tls: self.tls,
                handlers: RwLock::new(HashMap::new()),
                timers: AtomicBool::new(false),
                io_tasks,
                handler_tasks: TaskTracker::new(),
                conns_token,
                listeners_token: CancellationToken::new(),
                handlers_token: CancellationToken::new(),
                shutting_down: AtomicBool::new(false),
                inproc_names: Mutex::new(Vec::new()),
            }),
        }
    }
}

/// A cell: a named endpoint that listens and/or connects, serves requests on
/// (channel, topic) pairs and sends requests to other cells, directly or through parents.
///
/// Every message a cell handles or forwards is attributed to the identity its connection
/// proved: a peer that connected to us may speak for itself and the cells below it
/// (`site-1` for `site-1.job7`), our parent for everyone else; under TLS the peer's name is
/// bound to its certificate CN. Anything else is refused with an `unauthenticated` RETURN, so
/// [`Message::origin`] in a handler is always a proven name. Whether the cell relays messages
/// for others is [`CellBuilder::forwarding`].
///
/// Cheap to clone (an `Arc`). Background tasks run until [`Cell::shutdown`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ferry_cellnet::CellnetError> {
/// use std::time::Duration;
/// use ferry_cellnet::{rmpv, Cell, Message, ReturnCode};
///
/// let server = Cell::new("server")?;
/// server.register_request_handler("task", "echo", |req: Message| async move {
///     Message::from_value(req.value().unwrap_or(rmpv::Value::Nil))
/// });
/// let url = server.listen("tcp://127.0.0.1:0").await?;
///
/// let client = Cell::new("site-1")?;
/// client.connect(&url).await?;
/// let reply = client
///     .send_request("task", "echo", "server", Message::from_value("hi"), Duration::from_secs(5))
///     .await;
/// assert_eq!(reply.return_code(), ReturnCode::Ok);
/// assert_eq!(reply.value()?.as_str(), Some("hi"));
/// client.shutdown().await;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cell {
    inner: Arc<CellInner>,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("fqcn", &self.inner.out.me)
            .field("peers", &self.connected_peers())
            .finish()
    }
}

pub(crate) struct CellInner {
    /// Name, limits, routes and reply waiters: the way out.
    pub out: Outbound,
    forwarding: Forwarding,
    #[cfg(feature = "tls")]
    tls: Option<crate::driver::tls::TlsConfig>,
    handlers: RwLock<HashMap<(String, String), Arc<dyn Handler>>>,
    /// `sm__` streams, both ways.
    pub streams: Streams,
    /// Set once the streams' idle timer runs (started by the first listen or connect).
    timers: AtomicBool,
    /// What each connection gets: name, limits, tasks, close token, memory budget.
    ctx: Arc<Context>,
    /// Reader, writer, listener and connector tasks.
    io_tasks: TaskTracker,
    /// Running request handlers.
    handler_tasks: TaskTracker,
    /// Cancelled to close every connection (their writers flush first).
    conns_token: CancellationToken,
    listeners_token: CancellationToken,
    /// Cancelled when the shutdown grace is over: handlers still running are abandoned.
    handlers_token: CancellationToken,
    shutting_down: AtomicBool,
    /// Connection limits of all listeners together (in all and per address).
    admission: Arc<Admission>,
    /// The budget of unfinished data held for all peers (frames in progress, streams).
    held: Arc<HeldBudget>,
    inproc_names: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cell {
    /// A cell named `fqcn` with default limits and no TLS.
    pub fn new(fqcn: &str) -> Result<Cell, CellnetError> {
        Ok(Self::builder(fqcn)?.build())
    }

    /// A builder for a cell named `fqcn` (limits, TLS).
    pub fn builder(fqcn: &str) -> Result<CellBuilder, CellnetError> {
        Ok(CellBuilder {
            fqcn: Fqcn::new(fqcn)?,
            limits: Limits::default(),
            forwarding: Forwarding::default(),
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// This cell's FQCN.
    pub fn fqcn(&self) -> &Fqcn {
        &self.inner.out.me
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.out.limits
    }

    /// Bytes of unfinished data this cell holds for its peers right now: frames in progress,
    /// streams in reassembly, idle frame buffers (at most [`Limits::max_held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.inner.held.used()
    }

    /// FQCNs of the peers with an established connection.
    pub fn connected_peers(&self) -> Vec<String> {
        self.inner.out.router.peers()
    }

    /// True if a connection to `fqcn` is established.
    pub fn is_connected(&self, fqcn: &str) -> bool {
        self.inner.out.router.is_connected(fqcn)
    }

    /// Subscribe to peers connecting and disconnecting (direct connections only: a cell
    /// reached through another is not seen). Events from before the call are not replayed;
    /// a subscriber more than 256 events behind misses the oldest (`RecvError::Lagged`).
    pub fn peer_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.out.router.subscribe()
    }

    /// Register the handler of requests and fire-and-forget messages on (`channel`, `topic`).
    /// Either may be [`ANY`] (`"*"`). Lookup order is NVFlare's: (channel, topic), then
    /// (channel, `*`), then (`*`, `*`). A second registration replaces the first.
    ///
    /// The handler sees the same [`Message`] whether the request came as one frame or as a
    /// byte stream; what it returns is described by [`IntoReply`].
    pub fn register_request_handler<F, Fut, R>(&self, channel: &str, topic: &str, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (channel.to_string(), topic.to_string()),
                Arc::new(FnHandler(handler)),
            );
    }

    /// Remove the handler registered on exactly (`channel`, `topic`).
    pub fn unregister_request_handler(&self, channel: &str, topic: &str) {
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(channel.to_string(), topic.to_string()));
    }

    /// Listen on `tcp://HOST:PORT`, `stcp://HOST:PORT` (mutual TLS) or `inproc://NAME` and
    /// return the bound URL (port 0 is replaced by the port the OS chose).
    pub async fn listen(&self, url: &str) -> Result<String, CellnetError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(CellnetError::Shutdown);
        }
        inner.start_timers();
        match Url::parse(url)? {
            Url::Tcp(addr) => {
                let (l, bound) = driver::tcp::bind(&addr).await?;
                info!(cell = %inner.out.me, "listening on tcp://{bound}");
                inner.io_tasks.spawn(accept_loop(inner.clone(), l, None));
                Ok(format!("tcp://{bound}"))
            }
            #[cfg(feature = "tls")]
            Url::Stcp(addr) => {
                let tls = inner.tls.as_ref().ok_or_else(|| {
                    CellnetError::Tls("stcp:// needs a TlsConfig (CellBuilder::tls)".into())
                })?;
                tls.check_identity(&inner.out.me)?;
                let acceptor = tls.acceptor()?;
                let (l, bound) = driver::tcp::bind(&addr).await?;
                info!(cell = %inner.out.me, "listening on stcp://{bound}");
                inner
                    .io_tasks
                    .spawn(accept_loop(inner.clone(), l, Some(acceptor)));
                Ok(format!("stcp://{bound}"))
            }
            #[cfg(not(feature = "tls"))]
            Url::Stcp(_) => Err(CellnetError::Tls(
                "ferry-cellnet was built without the `tls` feature".into(),
            )),
            Url::Inproc(name) => {
                let rx = driver::inproc::listen(&name)?;
                lock(&inner.inproc_names).push(name.clone());
                inner
                    .io_tasks
                    .spawn(inproc_accept_loop(inner.clone(), rx, name.clone()));
                Ok(format!("inproc://{name}"))
            }
        }
    }

    /// Connect to a parent cell at `url`, do the HELLO/READY handshake and return the peer's
    /// FQCN. The peer becomes this cell's parent: the route of last resort, trusted to route
    /// messages from other cells to this one.
    ///
    /// Fails with [`CellnetError::Refused`] when the listener refuses us (a live connection
    /// holds our name; our certificate is for another name) and, over `stcp://`, with
    /// [`CellnetError::PeerIdentity`] when the listener's certificate CN is not the first
    /// segment of the name it gives in READY, or [`CellnetError::OwnIdentity`] when our own
    /// certificate is for another name than ours.
    pub async fn connect(&self, url: &str) -> Result<Fqcn, CellnetError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(CellnetError::Shutdown);
        }
        inner.connect_parent(url).await
    }

    /// Like [`Cell::connect`], and keep the connection: whenever it is lost, reconnect in the
    /// background (backoff from 100 ms doubling to 5 s) until [`Cell::shutdown`], as NVFlare
    /// cells do with their parent. Fails only if the first attempt fails.
    pub async fn connect_persistent(&self, url: &str) -> Result<Fqcn, CellnetError> {
        let peer = self.connect(url).await?;
        let first = peer.clone();
        let inner = self.inner.clone();
        let url = url.to_string();
        let stop = inner.listeners_token.clone();
        let span = tracing::info_span!("reconnect", cell = %inner.out.me, %url);
        self.inner.io_tasks.spawn(
            async move {
                const MIN: Duration = Duration::from_millis(100);
                const MAX: Duration = Duration::from_secs(5);
                let mut backoff = MIN;
                loop {
                    // wait until the parent connection is gone
                    while inner.out.router.is_connected(peer.as_str()) {
                        tokio::select! {
                            _ = tokio::time::sleep(MIN) => {}
                            _ = stop.cancelled() => return,
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    let r = tokio::select! {
                        r = inner.connect_parent(&url) => r,
                        _ = stop.cancelled() => return,
                    };
                    match r {
                        Ok(p) => {
                            info!(peer = %p, "reconnected");
                            backoff = MIN;
                        }
                        Err(e) => {
                            debug!("reconnect failed: {e}");
                            backoff = (backoff * 2).min(MAX);
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(first)
    }

    /// The FQCN of the parent (the peer of the last successful [`Cell::connect`]).
    pub fn parent(&self) -> Option<Fqcn> {
        self.inner.out.router.parent()
    }

    /// Send a request and wait for the reply, on the plain (one DATA frame) path.
    ///
    /// Never fails: errors come back as a reply whose [`Message::return_code`] says what went
    /// wrong (`timeout`, `target_unreachable`, `comm_error`, `msg_too_big`, ...), as NVFlare.
    pub async fn send_request(
        &self,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        timeout: Duration,
    ) -> Message {
        self.send_request_with(
            channel,
            topic,
            target,
            message,
            RequestOptions::timeout(timeout),
        )
        .await
    }

    /// Send a request with options (e.g. streamed) and wait for the reply.
    pub async fn send_request_with(
        &self,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        opts: RequestOptions,
    ) -> Message {
        let span =
            tracing::debug_span!("request", cell = %self.inner.out.me, %channel, %topic, %target);
        self.inner
            .request(channel, topic, target, message, &opts)
            .instrument(span)
            .await
    }

    /// Send the same request to several targets at once; replies by target FQCN.
    pub async fn broadcast_request(
        &self,
        channel: &str,
        topic: &str,
        targets: &[&str],
        message: Message,
        timeout: Duration,
    ) -> HashMap<String, Message> {
        let opts = RequestOptions::timeout(timeout);
        let futs = targets.iter().map(|t| {
            let m = message.clone();
            let opts = opts.clone();
            async move {
                (
                    t.to_string(),
                    self.inner.request(channel, topic, t, m, &opts).await,
                )
            }
        });
        futures::future::join_all(futs).await.into_iter().collect()
    }

    /// Send a message that expects no reply (the plain path).
    pub async fn fire_and_forget(
        &self,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
    ) -> Result<(), CellnetError> {
        self.fire_and_forget_with(channel, topic, target, message, RequestOptions::default())
            .await
    }

    /// Send a message that expects no reply, with options (e.g. streamed).
    pub async fn fire_and_forget_with(
        &self,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        opts: RequestOptions,
    ) -> Result<(), CellnetError> {
        let inner = &self.inner;
        let target = Fqcn::new(target)?;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(CellnetError::Shutdown);
        }
        if target == inner.out.me {
            inner.dispatch_local(channel, topic, message);
            return Ok(());
        }
        if opts.streamed {
            let mut blob = message.headers;
            if opts.optional {
                blob.insert(stream_keys::OPTIONAL, true);
            }
            let s = Outgoing {
                target: target.as_str(),
                blob,
                channel,
                topic,
                payload: message.payload,
                ri: None,
                fallback: None,
            };
            return tokio::time::timeout(opts.timeout, inner.streams.send(&inner.out, s))
                .await
                .unwrap_or_else(|_| Err(CellnetError::Timeout("sending the stream".into())));
        }
        let payload_encoding = message.payload.encoding();
        let payload = message.payload.into_segments();
        inner.out.check_size(&payload)?;
        let to = Address {
            destination: target.as_str(),
            channel,
            topic,
        };
        let body = Body {
            encoding: payload_encoding,
            len: seg_len(&payload),
        };
        let headers = inner
            .out
            .stamp()
            .request(message.headers, to, None, opts.optional, body);
        inner
            .out
            .send(target.as_str(), headers, payload, None)
            .await
            .map(|_| ())
    }

    /// Stop: refuse new work, let running handlers finish (up to [`DEFAULT_SHUTDOWN_GRACE`])
    /// and send their replies, fail every request still waiting with `comm_error`, close all
    /// connections after flushing what is queued, and join every task.
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(DEFAULT_SHUTDOWN_GRACE).await
    }

    /// [`Cell::shutdown`] with an explicit grace period for running handlers.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let inner = &self.inner;
        if inner.shutting_down.swap(true, Ordering::SeqCst) {
            // second caller: just wait for the first one to finish
            inner.io_tasks.wait().await;
            return;
        }
        info!(cell = %inner.out.me, "shutting down");
        inner.listeners_token.cancel();
        for name in lock(&inner.inproc_names).drain(..) {
            driver::inproc::unlisten(&name);
        }
        inner.handler_tasks.close();
        if tokio::time::timeout(grace, inner.handler_tasks.wait())
            .await
            .is_err()
        {
            warn!("handlers still running after {grace:?}; failing their requests");
            inner.handlers_token.cancel();
            inner.handler_tasks.wait().await;
        }
        inner.out.router.fail_all("cell is shut down");
        inner.conns_token.cancel();
        inner.io_tasks.close();
        inner.io_tasks.wait().await;
        inner.out.router.clear();
        info!(cell = %inner.out.me, "shut down");
    }
}

async fn accept_loop(
    inner: Arc<CellInner>,
    l: tokio::net::TcpListener,
    #[cfg(feature = "tls")] tls: Option<tokio_rustls::TlsAcceptor>,
    #[cfg(not(feature = "tls"))] _tls: Option<()>,
) {
    loop {
        let (s, addr) = tokio::select! {
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = inner.listeners_token.cancelled() => return,
        };
        let peer = addr.to_string();
        let admitted = match inner.admission.admit(Some(addr.ip()), &peer) {
            Ok(a) => a,
            Err(busy) => {
                // Refused before any reader runs: one short task tells the peer why, if the
                // bounded pool of such tasks has room; otherwise the socket just closes.
                if let Some(permit) = busy.permit {
                    let ready = handshake::busy_ready(&inner.out.me, &busy.why);
                    #[cfg(feature = "tls")]
                    let tls = tls.clone();
                    let handshake = inner.out.limits.handshake_timeout;
                    inner.io_tasks.spawn(async move {
                        let _permit = permit;
                        #[cfg(feature = "tls")]
                        if let Some(acc) = tls {
                            if let Ok(Ok(t)) = tokio::time::timeout(handshake, acc.accept(s)).await
                            {
                                admission::deliver_refusal(t, &ready).await;
                            }
                            return;
                        }
                        let _ = handshake;
                        admission::deliver_refusal(s, &ready).await;
                    });
                }
                continue;
            }
        };
        let inner2 = inner.clone();
        #[cfg(feature = "tls")]
        let tls = tls.clone();
        inner.io_tasks.spawn(async move {
            #[cfg(feature = "tls")]
            let t = match tls {
                Some(acc) => {
                    match tokio::time::timeout(
                        inner2.out.limits.handshake_timeout,
                        driver::tls::accept(&acc, s),
                    )
                    .await
                    {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            limited!(admitted.log, warn, %addr, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            limited!(admitted.log, warn, %addr, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => driver::tcp::transport(s),
            };
            #[cfg(not(feature = "tls"))]
            let t = driver::tcp::transport(s);
            let ctx = inner2.ctx.clone();
            connection::run(inner2, ctx, t, false, None, Some(admitted)).await;
        });
    }
}

async fn inproc_accept_loop(
    inner: Arc<CellInner>,
    mut rx: tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>,
    name: String,
) {
    loop {
        let s = tokio::select! {
            s = rx.recv() => match s { Some(s) => s, None => return },
            _ = inner.listeners_token.cancelled() => return,
        };
        let admitted = match inner.admission.admit(None, &name) {
            Ok(a) => a,
            Err(busy) => {
                if let Some(permit) = busy.permit {
                    let ready = handshake::busy_ready(&inner.out.me, &busy.why);
                    inner.io_tasks.spawn(async move {
                        let _permit = permit;
                        admission::deliver_refusal(s, &ready).await;
                    });
                }
                continue;
            }
        };
        let t = driver::inproc::transport(s, &name);
        let inner2 = inner.clone();
        inner.io_tasks.spawn(async move {
            let ctx = inner2.ctx.clone();
            connection::run(inner2, ctx, t, false, None, Some(admitted)).await;
        });
    }
}

impl CellInner {
    /// Start the streams' idle timer, once (the first listen or connect does).
    fn start_timers(self: &Arc<Self>) {
        if !self.timers.swap(true, Ordering::SeqCst) {
            let me = self.clone();
            let stop = self.conns_token.clone();
            self.io_tasks
                .spawn(async move { me.streams.run_timer(stop).await });
        }
    }

    /// Send probe requests to a freshly connected `peer` until one is answered (with any
    /// return code) or `budget` is spent; attempts time out after 100 ms, doubling.
    pub(crate) async fn probe(self: &Arc<Self>, peer: &str, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        let mut wait = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let opts = RequestOptions {
                timeout: wait,
                streamed: false,
                optional: true,
            };
            let r = self
                .request(
                    CELLNET_CHANNEL,
                    handshake::PROBE_TOPIC,
                    peer,
                    Message::new(),
                    &opts,
                )
                .await;
            match r.return_code() {
                ReturnCode::Timeout if tokio::time::Instant::now() < deadline => {
                    debug!(%peer, attempts, "probe unanswered; peer not ready yet");
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                ReturnCode::Timeout => {
                    warn!(%peer, attempts, "peer never answered the connection probe");
                    return;
                }
                rc => {
                    debug!(%peer, attempts, %rc, "peer registered us");
                    return;
                }
            }
        }
    }

    /// Open a connection to `url`, run it, wait for its handshake and make the peer this
    /// cell's parent (one attempt of [`Cell::connect`] and of the reconnect loop).
    async fn connect_parent(self: &Arc<Self>, url: &str) -> Result<Fqcn, CellnetError> {
        self.start_timers();
        let t = self.establish(url).await?;
        let (tx, rx) = oneshot::channel();
        let run = connection::run(self.clone(), self.ctx.clone(), t, true, Some(tx), None);
        self.io_tasks.spawn(run);
        let (peer, sync) = rx
            .await
            .map_err(|_| CellnetError::Handshake("connection ended during handshake".into()))??;
        if !sync {
            // NVFlare sends READY before it registers us and handles frames on a thread
            // pool: a DATA frame right behind READY can be dropped. Report the connection
            // only once a probe request got a reply (any reply) through it.
            self.probe(peer.as_str(), self.out.limits.handshake_timeout)
                .await;
        }
        self.out.router.set_parent(peer.clone());
        Ok(peer)
    }

    /// Open the transport for `url` (TCP connect, TLS handshake, or an in-process pipe).
    async fn establish(&self, url: &str) -> Result<driver::Transport, CellnetError> {
        tokio::time::timeout(self.out.limits.handshake_timeout, async {
            match Url::parse(url)? {
                Url::Tcp(addr) => Ok(driver::tcp::transport(driver::tcp::connect(&addr).await?)),
                #[cfg(feature = "tls")]
                Url::Stcp(addr) => {
                    let tls = self.tls.as_ref().ok_or_else(|| {
                        CellnetError::Tls("stcp:// needs a TlsConfig (CellBuilder::tls)".into())
                    })?;
                    tls.check_identity(&self.out.me)?;
                    let connector = tls.connector()?;
                    let s = driver::tcp::connect(&addr).await?;
                    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(&addr);
                    driver::tls::connect(&connector, host, s).await
                }
                #[cfg(not(feature = "tls"))]
                Url::Stcp(_) => Err(CellnetError::Tls(
                    "ferry-cellnet was built without the `tls` feature".into(),
                )),
                Url::Inproc(name) => Ok(driver::inproc::transport(
                    driver::inproc::connect(&name).await?,
                    &name,
                )),
            }
        })
        .await
        .map_err(|_| CellnetError::Timeout(format!("connecting to {url}")))?
    }

    /// Admit a connection a peer opened to us under the name it proved in HELLO: take the
    /// name in the routing table and queue `ready` in the same step. A name held by another
    /// connection is taken over only if that connection is dead: it is sent a PING and must
    /// show a sign of life (any frame) within `Limits::name_probe_timeout`. A live holder
    /// keeps its name and the newcomer is refused (`Err` says why), so a second connection
    /// under a connected receiver's name can neither evict it nor act for it; a receiver
    /// whose old connection died silently (power loss, broken network) gets its name back on
    /// its first reconnect attempt.
    async fn admit_peer(&self, conn: &Arc<Conn>, ready: OutFrame) -> Result<(), String> {
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
            let probe = self.out.limits.name_probe_timeout;
            if old.is_alive(probe).await {
                warn!(
                    peer = %conn.peer,
                    holder = %old.peer_addr,
                    newcomer = %conn.peer_addr,
                    "a second connection claims the name of a live peer; refused"
                );
                return Err(format!(
                    "a live connection already holds the name {:?} on {}; use another name, or stop the other cell first",
                    conn.peer, self.out.me
                ));
            }
            warn!(
                peer = %conn.peer,
                holder = %old.peer_addr,
                newcomer = %conn.peer_addr,
                "the connection holding this name sent nothing within {probe:?} of a PING; replacing it"
            );
            old.close.cancel();
            self.out.router.evict(&old);
        }
        Err(format!(
            "several connections are competing for the name {:?}; try again",
            conn.peer
        ))
    }

    /// Register a connection this cell opened (the peer is our parent). Replaces an older
    /// connection to the same peer: we chose to connect again.
    fn register_agent(&self, conn: Arc<Conn>) {
        if let Some(old) = self.out.router.insert(conn.clone()) {
            if old.id != conn.id {
                info!(peer = %conn.peer, "new connection replaces the old one");
                old.close.cancel();
            }
        }
    }

    fn unregister_agent(&self, conn: &Arc<Conn>) {
        self.out.router.remove(conn);
        self.streams.drop_connection(conn.id);
    }

    async fn request(
        self: &Arc<Self>,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        opts: &RequestOptions,
    ) -> Message {
        let target = match Fqcn::new(target) {
            Ok(t) => t,
            Err(e) => return Message::error(ReturnCode::InvalidTarget, e.to_string()),
        };
        if self.shutting_down.load(Ordering::SeqCst) {
            return Message::error(ReturnCode::CommError, "cell is shut down");
        }
        if target == self.out.me {
            return self
                .request_local(channel, topic, message, opts.timeout)
                .await;
        }
        if opts.streamed {
            return self
                .request_streamed(channel, topic, target.as_str(), message, opts)
                .await;
        }
        let payload_encoding = message.payload.encoding();
        let payload = message.payload.into_segments();
        if let Err(e) = self.out.check_size(&payload) {
            return Message::error(e.return_code(), e.to_string());
        }
        let req_id = uuid::Uuid::new_v4().to_string();
        let to = Address {
            destination: target.as_str(),
            channel,
            topic,
        };
        let body = Body {
            encoding: payload_encoding,
            len: seg_len(&payload),
        };
        let headers =
            self.out
                .stamp()
                .request(message.headers, to, Some(&req_id), opts.optional, body);
        let Some(conn) = self.out.router.route(target.as_str(), None) else {
            return Message::error(
                ReturnCode::TargetUnreachable,
                format!("no connection leads to {target}"),
            );
        };
        let key = WaitKey::Reply(req_id.clone());
        let rx = self.out.router.wait(key.clone(), target.as_str(), conn.id);
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let sent = tokio::time::timeout_at(
            deadline,
            self.out
                .send(target.as_str(), headers, payload, Some(&conn)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.out.router.forget(&key);
                return Message::error(e.return_code(), e.to_string());
            }
            Err(_) => {
                self.out.router.forget(&key);
                return Message::error(ReturnCode::Timeout, "timed out sending the request");
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => Message::error(ReturnCode::CommError, "request abandoned"),
            Err(_) => {
                self.out.router.forget(&key);
                debug!(%req_id, "no reply in {:?}", opts.timeout);
                Message::error(
                    ReturnCode::Timeout,
                    format!("no reply from {target} in {:?}", opts.timeout),
                )
            }
        }
    }

    async fn request_streamed(
        self: &Arc<Self>,
        channel: &str,
        topic: &str,
        target: &str,
        message: Message,
        opts: &RequestOptions,
    ) -> Message {
        let ri = uuid::Uuid::new_v4().to_string();
        let Some(conn) = self.out.router.route(target, None) else {
            return Message::error(
                ReturnCode::TargetUnreachable,
                format!("no connection leads to {target}"),
            );
        };
        let key = WaitKey::StreamReply(ri.clone());
        let rx = self.out.router.wait(key.clone(), target, conn.id);
        let mut blob = message.headers;
        if opts.optional {
            blob.insert(stream_keys::OPTIONAL, true);
        }
        let deadline = tokio::time::Instant::now() + opts.timeout;
        let s = Outgoing {
            target,
            blob,
            channel,
            topic,
            payload: message.payload,
            ri: Some(&ri),
            fallback: Some(&conn),
        };
        let sent = tokio::time::timeout_at(deadline, self.streams.send(&self.out, s)).await;
        let reply = match sent {
            Ok(Ok(())) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(m)) => m,
                Ok(Err(_)) => Message::error(ReturnCode::CommError, "request abandoned"),
                Err(_) => Message::error(
                    ReturnCode::Timeout,
                    format!("no reply from {target} in {:?}", opts.timeout),
                ),
            },
            Ok(Err(e)) => Message::error(e.return_code(), e.to_string()),
            Err(_) => Message::error(ReturnCode::Timeout, "timed out sending the request stream"),
        };
        self.out.router.forget(&key);
        reply
    }

    /// A request to this cell itself: run the handler in place.
    async fn request_local(
        self: &Arc<Self>,
        channel: &str,
        topic: &str,
        mut message: Message,
        timeout: Duration,
    ) -> Message {
        self.out
            .stamp()
            .local_request(&mut message.headers, channel, topic);
        let Some(h) = self.lookup(channel, topic) else {
            return Message::error(ReturnCode::ProcessException, "no callback");
        };
        match tokio::time::timeout(timeout, run_handler(h, message)).await {
            Ok(Some(mut m)) => {
                self.out.stamp().local_reply(&mut m.headers);
                m
            }
            Ok(None) => Message::error(ReturnCode::Timeout, "handler sent no reply"),
            Err(_) => Message::error(ReturnCode::Timeout, "handler did not finish in time"),
        }
    }

    fn dispatch_local(self: &Arc<Self>, channel: &str, topic: &str, mut m: Message) {
        self.out
            .stamp()
            .local_request(&mut m.headers, channel, topic);
        if let Some(h) = self.lookup(channel, topic) {
            self.handler_tasks.spawn(async move {
                let _ = run_handler(h, m).await;
            });
        } else {
            warn!(%channel, %topic, "no callback for a local fire-and-forget message");
        }
    }

    fn lookup(&self, channel: &str, topic: &str) -> Option<Arc<dyn Handler>> {
        let h = self.handlers.read().unwrap_or_else(|e| e.into_inner());
        h.get(&(channel.to_string(), topic.to_string()))
            .or_else(|| h.get(&(channel.to_string(), ANY.to_string())))
            .or_else(|| h.get(&(ANY.to_string(), ANY.to_string())))
            .cloned()
    }

    /// A DATA message from `conn` (called by its reader task).
    async fn on_message(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        // Attribution: the origin a message claims must be one this connection can vouch
        // for, so handlers (and forwarding) only ever see proven origins.
        if !trust::vouches(&self.out.me, &conn.peer, conn.outbound, &env.origin) {
            let origin = &env.origin;
            limited!(
                conn.log,
                warn,
                peer = %conn.peer,
                %origin,
                "message claims an origin this connection cannot speak for; refused"
            );
            let why = format!(
                "refused by {}: the connection from {:?} cannot send messages as {origin:?} (a cell speaks only for itself and the cells below it)",
                self.out.me, conn.peer
            );
            // back toward the requester, on the connection it came by (a relay in between
            // forwards it); a RETURN is matched by request id whatever its origin
            let to = env.origin.clone();
            let why = Refusal {
                code: ReturnCode::Unauthenticated,
                error: &why,
                reason: "unauthenticated_origin",
            };
            self.bounce(conn, &env, &to, why);
            return;
        }
        if env.destination != self.out.me.as_str() {
            if self.forwarding == Forwarding::Off {
                limited!(conn.log, warn, peer = %conn.peer, dest = %env.destination, "message for another cell; this cell does not forward");
                let why = format!(
                    "cannot forward: {} does not relay messages for other cells",
                    self.out.me
                );
                let why = Refusal {
                    code: ReturnCode::CommError,
                    error: &why,
                    reason: "cant_forward",
                };
                self.bounce(conn, &env, &env.origin, why);
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

    async fn forward(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        let dest = env.destination.as_str();
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
            match envelope::seal(
                headers,
                &next.peer,
                vec![payload],
                self.out.limits.max_header_size,
            ) {
                Ok(f) => {
                    if next.send(f).await.is_ok() {
                        debug!(%dest, via = %next.peer, "forwarded");
                        return;
                    }
                }
                Err(e) => warn!("cannot forward: {e}"),
            }
        }
        limited!(conn.log, warn, %dest, "no path; cannot forward {} message", env.msg_type.as_str());
        let why = Refusal {
            code: ReturnCode::CommError,
            error: "cannot forward",
            reason: "cant_forward",
        };
        self.bounce(conn, &env, &env.origin, why);
    }

    /// Answer a message that is not handled with a RETURN (to `to`) on the connection it came
    /// by, if it is a request that waits for a reply; anything else is just dropped.
    fn bounce(&self, conn: &Arc<Conn>, env: &Envelope, to: &str, why: Refusal<'_>) {
        let Some(h) = self.out.stamp().bounce(env, to, why) else {
            return;
        };
        match envelope::seal(h, &conn.peer, Vec::new(), self.out.limits.max_header_size) {
            Ok(f) => conn.send_detached(f),
            Err(e) => warn!("RETURN not sent: {e}"),
        }
    }

    async fn on_request(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        let origin = env.origin.clone();
        let channel = env.channel().to_string();
        let topic = env.topic().to_string();
        if channel == stream_keys::STREAM_CHANNEL {
            let ev = self
                .streams
                .on_message(&self.out, conn, origin, &topic, env.headers, payload)
                .await;
            match ev {
                Some(StreamEvent::Blob {
                    conn,
                    origin,
                    headers,
                    blob,
                }) => self.on_blob(&conn, origin, headers, blob),
                Some(StreamEvent::Aborted { ri, why }) => {
                    let failed = Message::error(ReturnCode::CommError, why);
                    let key = WaitKey::StreamReply(ri);
                    self.out.router.resolve(&key, ReplyFrom::Anyone, failed);
                }
                None => {}
            }
            return;
        }
        let reply_to = match (env.reply_expected(), env.req_id()) {
            (true, Some(id)) => ReplyTo::Plain(id.to_string()),
            (true, None) => {
                limited!(conn.log, warn, %origin, "request expects a reply but has no cn__req_id; treated as fire-and-forget");
                ReplyTo::Nobody
            }
            _ => ReplyTo::Nobody,
        };
        if env.encrypted() {
            limited!(conn.log, warn, %origin, %channel, %topic, "end-to-end encrypted payload; not supported");
            self.reply(
                conn,
                &origin,
                &channel,
                &topic,
                reply_to,
                Message::error(
                    ReturnCode::InvalidRequest,
                    "end-to-end encrypted payloads (cn__secure) are not supported by this cell",
                ),
            );
            return;
        }
        let payload = match Payload::from_wire(env.payload_encoding(), payload) {
            Ok(p) => p,
            Err(e) => {
                limited!(conn.log, warn, %origin, %channel, %topic, "undecodable payload: {e}");
                self.reply(
                    conn,
                    &origin,
                    &channel,
                    &topic,
                    reply_to,
                    Message::error(ReturnCode::InvalidRequest, e.to_string()),
                );
                return;
            }
        };
        let headers = env.headers;
        self.dispatch_request(conn, Message { headers, payload }, reply_to);
    }

    /// Run the handler of a complete request (plain or reassembled from a stream).
    pub(crate) fn dispatch_request(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        msg: Message,
        reply_to: ReplyTo,
    ) {
        let origin = msg.origin().unwrap_or_default().to_string();
        let channel = msg.channel().unwrap_or_default().to_string();
        let topic = msg.topic().unwrap_or_default().to_string();
        // answers that need no handler, queued without waiting
        let answer = |reply_to: ReplyTo, m: Message| {
            self.reply(conn, &origin, &channel, &topic, reply_to, m);
        };
        if channel == CELLNET_CHANNEL && (topic == BYE_TOPIC || topic == handshake::PROBE_TOPIC) {
            debug!(%origin, %topic, "cellnet message");
            let mut m = Message::new();
            m.headers.insert(keys::RETURN_CODE, "ok");
            answer(reply_to, m);
            return;
        }
        if self.shutting_down.load(Ordering::SeqCst) {
            answer(
                reply_to,
                Message::error(ReturnCode::ServiceUnavailable, "cell is shutting down"),
            );
            return;
        }
        let Some(handler) = self.lookup(&channel, &topic) else {
            limited!(conn.log, warn, %origin, %channel, %topic, "no callback registered");
            answer(
                reply_to,
                Message::error(ReturnCode::ProcessException, "no callback"),
            );
            return;
        };
        let Ok(permit) = conn.in_flight.clone().try_acquire_owned() else {
            limited!(conn.log, warn, %origin, "too many in-flight requests from this peer");
            answer(
                reply_to,
                Message::error(
                    ReturnCode::ServiceUnavailable,
                    format!(
                        "more than {} in-flight requests",
                        self.out.limits.max_in_flight_per_peer
                    ),
                ),
            );
            return;
        };
        let me = self.clone();
        let conn = conn.clone();
        let cancel = self.handlers_token.clone();
        let span = tracing::debug_span!("handler", %origin, %channel, %topic);
        let info = conn.info();
        self.handler_tasks.spawn(
            async move {
                let _permit = permit;
                let reply = tokio::select! {
                    r = ConnectionInfo::scope(info, run_handler(handler, msg)) => r,
                    _ = cancel.cancelled() => Some(Message::error(ReturnCode::CommError, "cell shut down before the handler finished")),
                };
                if let Some(reply) = reply {
                    me.reply_async(&conn, &origin, &channel, &topic, reply_to, reply)
                        .await;
                }
            }
            .instrument(span),
        );
    }

    /// Send a reply from a context that must not wait (the reader task).
    fn reply(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        origin: &str,
        channel: &str,
        topic: &str,
        reply_to: ReplyTo,
        reply: Message,
    ) {
        if matches!(reply_to, ReplyTo::Nobody) {
            return;
        }
        let me = self.clone();
        let conn = conn.clone();
        let (origin, channel, topic) = (origin.to_string(), channel.to_string(), topic.to_string());
        self.handler_tasks.spawn(async move {
            me.reply_async(&conn, &origin, &channel, &topic, reply_to, reply)
                .await
        });
    }

    async fn reply_async(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        origin: &str,
        channel: &str,
        topic: &str,
        reply_to: ReplyTo,
        reply: Message,
    ) {
        match reply_to {
            ReplyTo::Nobody => {}
            ReplyTo::Plain(req_id) => {
                let mut reply = reply;
                let mut encoding = reply.payload.encoding();
                let mut segs = std::mem::take(&mut reply.payload).into_segments();
                if let Err(e) = self.out.check_size(&segs) {
                    warn!("reply too big: {e}");
                    reply = Message::error(ReturnCode::MsgTooBig, e.to_string());
                    encoding = Payload::None.encoding();
                    segs = Vec::new();
                }
                let to = Address {
                    destination: origin,
                    channel,
                    topic,
                };
                let body = Body {
                    encoding,
                    len: seg_len(&segs),
                };
                let h = self.out.stamp().reply(reply.headers, to, &req_id, body);
                if let Err(e) = self.out.send(origin, h, segs, Some(conn)).await {
                    limited!(conn.log, warn, %origin, "reply not sent: {e}");
                }
            }
            ReplyTo::Stream(ri) => {
                let mut blob = reply.headers;
                if !blob.contains(keys::RETURN_CODE) {
                    blob.insert(keys::RETURN_CODE, ReturnCode::Ok.as_str());
                }
                let tp = reply_topic(channel, topic);
                let s = Outgoing {
                    target: origin,
                    blob,
                    channel: stream_keys::RETURN_ONLY,
                    topic: &tp,
                    payload: reply.payload,
                    ri: Some(&ri),
                    fallback: Some(conn),
                };
                match self.streams.send(&self.out, s).await {
                    Ok(()) => {}
                    Err(e @ CellnetError::MessageTooBig { .. }) => {
                        // tell the requester instead of letting it time out
                        warn!(%origin, "streamed reply too big: {e}");
                        let err = Message::error(ReturnCode::MsgTooBig, e.to_string());
                        let s = Outgoing {
                            target: origin,
                            blob: err.headers,
                            channel: stream_keys::RETURN_ONLY,
                            topic: &tp,
                            payload: Payload::None,
                            ri: Some(&ri),
                            fallback: Some(conn),
                        };
                        let _ = self.streams.send(&self.out, s).await;
                    }
                    Err(e) => limited!(conn.log, warn, %origin, "streamed reply not sent: {e}"),
                }
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
            let key = WaitKey::StreamReply(ri);
            if !self.out.router.resolve(&key, ReplyFrom::Anyone, msg) {
                let WaitKey::StreamReply(ri) = key else {
                    return;
                };
                limited!(conn.log, warn, %origin, %ri, "unexpected streamed reply (nobody waits for it); dropped");
            }
            return;
        }
        let reply_to = match b.ri {
            Some(ri) => ReplyTo::Stream(ri),
            None => ReplyTo::Nobody,
        };
        match payload {
            Ok(payload) => {
                let m = Message {
                    headers: b.headers,
                    payload,
                };
                self.dispatch_request(conn, m, reply_to);
            }
            Err(e) => {
                limited!(conn.log, warn, %origin, "undecodable streamed payload: {e}");
                let (channel, topic) = (b.channel, b.topic);
                let mut m = Message::error(ReturnCode::InvalidRequest, e.to_string());
                m.headers.insert(keys::ORIGIN, origin.as_str());
                m.headers.insert(keys::CHANNEL, channel.as_str());
                m.headers.insert(keys::TOPIC, topic.as_str());
                if let ReplyTo::Stream(ri) = reply_to {
                    let me = self.clone();
                    let conn = conn.clone();
                    tokio::spawn(async move {
                        let tp = reply_topic(&channel, &topic);
                        let s = Outgoing {
                            target: &origin,
                            blob: m.headers,
                            channel: stream_keys::RETURN_ONLY,
                            topic: &tp,
                            payload: Payload::None,
                            ri: Some(&ri),
                            fallback: Some(&conn),
                        };
                        let _ = me.streams.send(&me.out, s).await;
                    });
                }
            }
        }
    }

    fn on_reply(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        let is_return = env.msg_type == MsgType::Return;
        let origin = env.origin.clone();
        let ids = env.reply_ids();
        if ids.is_empty() {
            limited!(conn.log, warn, peer = %conn.peer, %origin, "reply without cn__req_id; dropped");
            return;
        }
        let payload = match Payload::from_wire(env.payload_encoding(), payload) {
            Ok(p) => p,
            Err(e) => {
                limited!(conn.log, warn, %origin, "undecodable reply payload: {e}");
                let mut m =
                    Message::error(ReturnCode::CommError, format!("bad reply payload: {e}"));
                m.headers.insert(keys::ORIGIN, origin.as_str());
                for id in ids {
                    self.out
                        .router
                        .resolve(&WaitKey::Reply(id), ReplyFrom::Anyone, m.clone());
                }
                return;
            }
        };
        let msg = Message {
            headers: env.headers,
            payload,
        };
        for id in ids {
            // A plain reply must come from the cell the request went to (NVFlare's origin
            // check); a RETURN comes from whichever hop could not forward.
            let from = if is_return {
                ReplyFrom::Anyone
            } else {
                ReplyFrom::Target(&origin)
            };
            let key = WaitKey::Reply(id);
            if !self.out.router.resolve(&key, from, msg.clone()) {
                let WaitKey::Reply(id) = key else { continue };
                limited!(conn.log, warn, %origin, req_id = %id, "unexpected reply (nobody waits for it); dropped")
            }
        }
    }
}

async fn run_handler(h: Arc<dyn Handler>, m: Message) -> Option<Message> {
    use futures::FutureExt;
    // A panicking handler becomes a process_exception reply. The handler owns nothing that a
    // panic could leave half-updated for us: we only use its output.
    match std::panic::AssertUnwindSafe(h.call(m)).catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            error!("request handler panicked: {what}");
            Some(Message::error(
                ReturnCode::ProcessException,
                format!("handler panicked: {what}"),
            ))
        }
    }
}

impl Inbound for CellInner {
    async fn admit(self: &Arc<Self>, conn: &Arc<Conn>, ready: OutFrame) -> Result<(), String> {
        self.admit_peer(conn, ready).await
    }

    fn opened(self: &Arc<Self>, conn: &Arc<Conn>) {
        self.register_agent(conn.clone());
    }

    async fn message(self: &Arc<Self>, conn: &Arc<Conn>, env: Envelope, payload: Bytes) {
        self.on_message(conn, env, payload).await
    }

    fn closed(self: &Arc<Self>, conn: &Arc<Conn>) {
        self.unregister_agent(conn);
    }
}
