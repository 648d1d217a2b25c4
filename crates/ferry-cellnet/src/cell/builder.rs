//! [`CellBuilder`]: what a cell is made with, and the making of it.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Cell, CellInner};
use crate::admission::Admission;
use crate::connect::Connector;
use crate::connection::Context;
use crate::fqcn::Fqcn;
use crate::held::HeldBudget;
use crate::limits::Limits;
use crate::node::Node;
use crate::outbound::Outbound;
use crate::router::Router;
use crate::streams::Streams;
use crate::trust::Forwarding;

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
    /// A builder for a cell named `fqcn`: default limits and forwarding, no TLS.
    pub(super) fn new(fqcn: Fqcn) -> Self {
        CellBuilder {
            fqcn,
            limits: Limits::default(),
            forwarding: Forwarding::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

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
        let admission = Admission::new(limits.max_connections, limits.max_connections_per_address);
        let streams = Streams::new(&limits);
        let out = Outbound {
            me: self.fqcn,
            limits,
            router: Router::default(),
        };
        let node = Arc::new(Node::new(out, streams, self.forwarding));
        let connector = Arc::new(Connector {
            node: node.clone(),
            ctx: ctx.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls,
        });
        Cell {
            inner: Arc::new(CellInner {
                node,
                ctx,
                connector,
                io_tasks,
                conns_token,
                listeners_token: CancellationToken::new(),
                admission,
                held,
                inproc_names: Mutex::new(Vec::new()),
                timers: AtomicBool::new(false),
            }),
        }
    }
}
