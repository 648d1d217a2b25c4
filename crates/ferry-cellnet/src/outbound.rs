//! The way out of a cell: pick the connection a message leaves on ([`Router::route`]), seal
//! it into a frame ([`crate::envelope::seal`]) and queue it, waiting for room or not.

use std::sync::Arc;

use tracing::{debug, warn};

use crate::clock::unix_now;
use crate::connection::Conn;
use crate::envelope::{self, seg_len, Stamp, Stamped};
use crate::error::CellnetError;
use crate::fqcn::Fqcn;
use crate::frame::OutFrame;
use crate::limits::Limits;
use crate::router::Router;
use crate::segment::Segment;

/// A cell's name, limits and routes: what sending needs.
pub(crate) struct Outbound {
    /// This cell.
    pub me: Fqcn,
    /// The limits in force (sanitized).
    pub limits: Limits,
    /// Routing table, parent and reply waiters.
    pub router: Router<Conn>,
}

impl Outbound {
    /// This cell's stamp for a message sent now.
    pub fn stamp(&self) -> Stamp<'_> {
        Stamp {
            me: &self.me,
            at: unix_now(),
        }
    }

    /// Refuse a payload over `Limits::max_message_size`.
    pub fn check_size(&self, payload: &[Segment]) -> Result<(), CellnetError> {
        let size = seg_len(payload);
        if size > self.limits.max_message_size {
            return Err(CellnetError::MessageTooBig {
                size,
                max: self.limits.max_message_size,
            });
        }
        Ok(())
    }

    /// The connection a message for `target` leaves on, else `fallback`.
    fn pick(
        &self,
        target: &str,
        fallback: Option<&Arc<Conn>>,
        exclude: Option<&str>,
    ) -> Option<Arc<Conn>> {
        self.router
            .route(target, exclude)
            .or_else(|| fallback.cloned())
    }

    /// Route and queue one message, waiting while the connection's queue is full. Returns
    /// the connection it left on.
    pub async fn send<'h>(
        &self,
        target: &str,
        headers: impl Into<Stamped<'h>>,
        payload: Vec<Segment>,
        fallback: Option<&Arc<Conn>>,
    ) -> Result<Arc<Conn>, CellnetError> {
        let conn = self
            .pick(target, fallback, None)
            .ok_or_else(|| CellnetError::NoRoute(target.to_string()))?;
        self.send_on(&conn, headers.into(), payload).await?;
        Ok(conn)
    }

    /// Route and send one message if that needs no waiting (from a reader task): written at
    /// once or queued. If the connection's queue is full the sealed frame comes back with
    /// its connection, for a task of its own to send ([`Conn::send`]).
    pub fn offer<'h>(
        &self,
        target: &str,
        headers: impl Into<Stamped<'h>>,
        payload: Vec<Segment>,
        fallback: Option<&Arc<Conn>>,
    ) -> Result<Option<(Arc<Conn>, OutFrame)>, CellnetError> {
        let conn = self
            .pick(target, fallback, None)
            .ok_or_else(|| CellnetError::NoRoute(target.to_string()))?;
        let frame = envelope::seal(
            headers.into(),
            &conn.peer,
            payload,
            self.limits.max_header_size,
        )?;
        Ok(conn.offer(frame)?.map(|f| (conn, f)))
    }

    /// Queue one message on `conn`, waiting while its queue is full.
    pub async fn send_on<'h>(
        &self,
        conn: &Conn,
        headers: impl Into<Stamped<'h>>,
        payload: Vec<Segment>,
    ) -> Result<(), CellnetError> {
        let headers = headers.into();
        let frame = envelope::seal(headers, &conn.peer, payload, self.limits.max_header_size)?;
        conn.send(frame).await
    }

    /// Route and queue one small message without waiting (from a reader task: ACKs,
    /// ERRORs); dropped if no route leads to `target`.
    pub fn send_detached<'h>(
        &self,
        target: &str,
        headers: impl Into<Stamped<'h>>,
        fallback: Option<&Arc<Conn>>,
    ) {
        let Some(conn) = self.pick(target, fallback, None) else {
            debug!(%target, "no route; message dropped");
            return;
        };
        self.send_detached_on(&conn, headers.into());
    }

    /// Queue one small message without payload on `conn` without waiting (a RETURN goes back
    /// the way its request came).
    pub fn send_detached_on<'h>(&self, conn: &Conn, headers: impl Into<Stamped<'h>>) {
        match envelope::seal(
            headers.into(),
            &conn.peer,
            Vec::new(),
            self.limits.max_header_size,
        ) {
            Ok(f) => conn.send_detached(f),
            Err(e) => warn!("message not sent: {e}"),
        }
    }
}
