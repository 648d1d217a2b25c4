//! Connecting to a parent: open the transport for a URL (TCP, TLS, in-process), run the
//! connection, wait for its handshake, probe a peer that does not announce `ferry_sync`,
//! make the peer the parent; and keep that connection, reconnecting with backoff.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection::{self, Context};
use crate::driver::{self, Url};
use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::message::Message;
use crate::node::{Node, CELLNET_CHANNEL, PROBE_TOPIC};
use crate::request::RequestOptions;
use crate::return_code::ReturnCode;

/// What connecting needs: the node the connection serves, the connections' context, and the
/// certificates for `stcp://`.
pub(crate) struct Connector {
    pub node: Arc<Node>,
    pub ctx: Arc<Context>,
    #[cfg(feature = "tls")]
    pub tls: Option<crate::driver::tls::TlsConfig>,
}

impl Connector {
    /// Send probe requests to a freshly connected `peer` until one is answered (with any
    /// return code) or `budget` is spent; attempts time out after 100 ms, doubling.
    async fn probe(&self, peer: &str, budget: Duration) {
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
                .node
                .request(CELLNET_CHANNEL, PROBE_TOPIC, peer, Message::new(), &opts)
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
    /// cell's parent (one attempt of [`crate::Cell::connect`] and of the reconnect loop).
    pub async fn connect(&self, url: &str) -> Result<Fqcn, CellnetError> {
        let t = self.establish(url).await?;
        let (tx, rx) = oneshot::channel();
        let run = connection::run(self.node.clone(), self.ctx.clone(), t, true, Some(tx), None);
        self.ctx.tasks.spawn(run);
        let (peer, sync) = rx
            .await
            .map_err(|_| CellnetError::Handshake("connection ended during handshake".into()))??;
        if !sync {
            // NVFlare sends READY before it registers us and handles frames on a thread
            // pool: a DATA frame right behind READY can be dropped. Report the connection
            // only once a probe request got a reply (any reply) through it.
            self.probe(peer.as_str(), self.node.out.limits.handshake_timeout)
                .await;
        }
        self.node.out.router.set_parent(peer.clone());
        Ok(peer)
    }

    /// Open the transport for `url` (TCP connect, TLS handshake, or an in-process pipe).
    async fn establish(&self, url: &str) -> Result<driver::Transport, CellnetError> {
        tokio::time::timeout(self.node.out.limits.handshake_timeout, async {
            match Url::parse(url)? {
                Url::Tcp(addr) => Ok(driver::tcp::transport(driver::tcp::connect(&addr).await?)),
                #[cfg(feature = "tls")]
                Url::Stcp(addr) => {
                    let tls = self.tls.as_ref().ok_or_else(|| {
                        CellnetError::Tls("stcp:// needs a TlsConfig (CellBuilder::tls)".into())
                    })?;
                    tls.check_identity(&self.node.out.me)?;
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

    /// Reconnect to `url` whenever the connection to `peer` is lost (backoff from 100 ms
    /// doubling to 5 s), until `stop`.
    pub async fn keep(&self, url: &str, peer: Fqcn, stop: CancellationToken) {
        const MIN: Duration = Duration::from_millis(100);
        const MAX: Duration = Duration::from_secs(5);
        let mut backoff = MIN;
        loop {
            // wait until the parent connection is gone
            while self.node.out.router.is_connected(peer.as_str()) {
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
                r = self.connect(url) => r,
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
}
