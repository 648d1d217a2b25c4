//! The cell: the public [`Cell`] and its builder, listeners and their accept loops,
//! connectors (with the probe and the reconnect loop), and graceful shutdown. What the cell
//! does with messages is [`crate::node`]; each socket is a [`crate::connection`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::admission::{self, Admission};
use crate::connect::Connector;
use crate::connection::{self, Context};
use crate::driver::{self, Url};
use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::handlers::IntoReply;
use crate::handshake;
use crate::held::HeldBudget;
use crate::limits::Limits;
#[cfg(feature = "tls")]
use crate::log_limit::limited;
use crate::message::Message;
use crate::node::Node;
use crate::request::RequestOptions;
use crate::router::PeerEvent;

mod builder;

pub use builder::CellBuilder;

/// How long [`Cell::shutdown`] lets running handlers finish before failing their requests.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
            .field("fqcn", &self.inner.node.out.me)
            .field("peers", &self.connected_peers())
            .finish()
    }
}

pub(crate) struct CellInner {
    /// What the cell does with messages: routes, waiters, streams, handlers.
    node: Arc<Node>,
    /// What each connection gets: name, limits, tasks, close token, memory budget.
    ctx: Arc<Context>,
    /// Opens connections to parents (and holds the TLS configuration).
    connector: Arc<Connector>,
    /// Reader, writer, listener, connector and timer tasks.
    io_tasks: TaskTracker,
    /// Cancelled to close every connection (their writers flush first).
    conns_token: CancellationToken,
    listeners_token: CancellationToken,
    /// Connection limits of all listeners together (in all and per address).
    admission: Arc<Admission>,
    /// The budget of unfinished data held for all peers (frames in progress, streams).
    held: Arc<HeldBudget>,
    inproc_names: Mutex<Vec<String>>,
    /// Set once the streams' idle timer runs (started by the first listen or connect).
    timers: AtomicBool,
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
        Ok(CellBuilder::new(Fqcn::new(fqcn)?))
    }

    /// This cell's FQCN.
    pub fn fqcn(&self) -> &Fqcn {
        &self.inner.node.out.me
    }

    /// True if this cell's connections are expected to send file regions
    /// ([`FileRegion`](crate::FileRegion)) straight from the file, without copying them
    /// through memory: the cell has no TLS configuration, so its connections are plain TCP
    /// (`sendfile(2)`). Over TLS or in-process pipes a region is read and written instead —
    /// still correct, only not zero-copy.
    pub fn sends_files_zero_copy(&self) -> bool {
        #[cfg(feature = "tls")]
        {
            self.inner.connector.tls.is_none()
        }
        #[cfg(not(feature = "tls"))]
        {
            true
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.node.out.limits
    }

    /// Bytes of unfinished data this cell holds for its peers right now: frames in progress,
    /// streams in reassembly, idle frame buffers (at most [`Limits::max_held_bytes`]).
    pub fn held_bytes(&self) -> usize {
        self.inner.held.used()
    }

    /// FQCNs of the peers with an established connection.
    pub fn connected_peers(&self) -> Vec<String> {
        self.inner.node.out.router.peers()
    }

    /// True if a connection to `fqcn` is established.
    pub fn is_connected(&self, fqcn: &str) -> bool {
        self.inner.node.out.router.is_connected(fqcn)
    }

    /// Subscribe to peers connecting and disconnecting (direct connections only: a cell
    /// reached through another is not seen). Events from before the call are not replayed;
    /// a subscriber more than 256 events behind misses the oldest (`RecvError::Lagged`).
    pub fn peer_events(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.node.out.router.subscribe()
    }

    /// Register the handler of requests and fire-and-forget messages on (`channel`, `topic`).
    /// Either may be [`ANY`](crate::ANY) (`"*"`). Lookup order is NVFlare's: (channel, topic), then
    /// (channel, `*`), then (`*`, `*`). A second registration replaces the first.
    ///
    /// The handler sees the same [`Message`] whether the request came as one frame or as a
    /// byte stream; what it returns is described by [`IntoReply`].
    ///
    /// The handler's first step (the closure, and its future up to its first `.await` that
    /// waits) runs on the task that reads the request's connection: a handler that answers
    /// at once costs no task of its own, and one that waits goes on on a task of its own. A
    /// handler with heavy synchronous work (reading a file, hashing) should await something
    /// first (`tokio::task::yield_now()`, `spawn_blocking`), or the next messages on its
    /// connection wait for that work.
    pub fn register_request_handler<F, Fut, R>(&self, channel: &str, topic: &str, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.inner.node.handlers.register(channel, topic, handler);
    }

    /// Remove the handler registered on exactly (`channel`, `topic`).
    pub fn unregister_request_handler(&self, channel: &str, topic: &str) {
        self.inner.node.handlers.unregister(channel, topic);
    }

    /// Listen on `tcp://HOST:PORT`, `stcp://HOST:PORT` (mutual TLS) or `inproc://NAME` and
    /// return the bound URL (port 0 is replaced by the port the OS chose).
    pub async fn listen(&self, url: &str) -> Result<String, CellnetError> {
        let inner = &self.inner;
        if inner.node.stopping.load(Ordering::SeqCst) {
            return Err(CellnetError::Shutdown);
        }
        inner.start_timers();
        match Url::parse(url)? {
            Url::Tcp(addr) => {
                let (l, bound) = driver::tcp::bind(&addr).await?;
                info!(cell = %inner.node.out.me, "listening on tcp://{bound}");
                inner.io_tasks.spawn(accept_loop(inner.clone(), l, None));
                Ok(format!("tcp://{bound}"))
            }
            #[cfg(feature = "tls")]
            Url::Stcp(addr) => {
                let tls = inner.connector.tls.as_ref().ok_or_else(|| {
                    CellnetError::Tls("stcp:// needs a TlsConfig (CellBuilder::tls)".into())
                })?;
                tls.check_identity(&inner.node.out.me)?;
                let acceptor = tls.acceptor()?;
                let (l, bound) = driver::tcp::bind(&addr).await?;
                info!(cell = %inner.node.out.me, "listening on stcp://{bound}");
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
        if inner.node.stopping.load(Ordering::SeqCst) {
            return Err(CellnetError::Shutdown);
        }
        inner.start_timers();
        inner.connector.connect(url).await
    }

    /// Like [`Cell::connect`], and keep the connection: whenever it is lost, reconnect in the
    /// background (backoff from 100 ms doubling to 5 s) until [`Cell::shutdown`], as NVFlare
    /// cells do with their parent. Fails only if the first attempt fails.
    pub async fn connect_persistent(&self, url: &str) -> Result<Fqcn, CellnetError> {
        let peer = self.connect(url).await?;
        let inner = self.inner.clone();
        let (url, first) = (url.to_string(), peer.clone());
        let stop = inner.listeners_token.clone();
        let span = tracing::info_span!("reconnect", cell = %inner.node.out.me, %url);
        let keep = async move { inner.connector.keep(&url, first, stop).await };
        self.inner.io_tasks.spawn(keep.instrument(span));
        Ok(peer)
    }

    /// The FQCN of the parent (the peer of the last successful [`Cell::connect`]).
    pub fn parent(&self) -> Option<Fqcn> {
        self.inner.node.out.router.parent()
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
        let node = &self.inner.node;
        let span = tracing::debug_span!("request", cell = %node.out.me, %channel, %topic, %target);
        node.request(channel, topic, target, message, &opts)
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
        let node = &self.inner.node;
        let futs = targets.iter().map(|t| {
            let (m, opts) = (message.clone(), &opts);
            async move {
                (
                    t.to_string(),
                    node.request(channel, topic, t, m, opts).await,
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
        let node = &self.inner.node;
        node.fire_and_forget(channel, topic, target, message, &opts)
            .await
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
        if inner.node.stopping.swap(true, Ordering::SeqCst) {
            // second caller: just wait for the first one to finish
            inner.io_tasks.wait().await;
            return;
        }
        info!(cell = %inner.node.out.me, "shutting down");
        inner.listeners_token.cancel();
        for name in lock(&inner.inproc_names).drain(..) {
            driver::inproc::unlisten(&name);
        }
        inner.node.tasks.close();
        if tokio::time::timeout(grace, inner.node.tasks.wait())
            .await
            .is_err()
        {
            warn!("handlers still running after {grace:?}; failing their requests");
            inner.node.abandon.cancel();
            inner.node.tasks.wait().await;
        }
        inner.node.out.router.fail_all("cell is shut down");
        inner.conns_token.cancel();
        inner.io_tasks.close();
        inner.io_tasks.wait().await;
        inner.node.out.router.clear();
        info!(cell = %inner.node.out.me, "shut down");
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
                    let ready = handshake::busy_ready(&inner.node.out.me, &busy.why);
                    #[cfg(feature = "tls")]
                    let tls = tls.clone();
                    let handshake = inner.node.out.limits.handshake_timeout;
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
                        inner2.node.out.limits.handshake_timeout,
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
            let (node, ctx) = (inner2.node.clone(), inner2.ctx.clone());
            connection::run(node, ctx, t, false, None, Some(admitted)).await;
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
                    let ready = handshake::busy_ready(&inner.node.out.me, &busy.why);
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
            let (node, ctx) = (inner2.node.clone(), inner2.ctx.clone());
            connection::run(node, ctx, t, false, None, Some(admitted)).await;
        });
    }
}

impl CellInner {
    /// Start the streams' idle timer, once (the first listen or connect does).
    fn start_timers(&self) {
        if !self.timers.swap(true, Ordering::SeqCst) {
            let node = self.node.clone();
            let stop = self.conns_token.clone();
            self.io_tasks
                .spawn(async move { node.streams.run_timer(stop).await });
            let node = self.node.clone();
            let stop = self.conns_token.clone();
            self.io_tasks
                .spawn(async move { crate::request::run_sweeper(&node.out, stop).await });
        }
    }
}
