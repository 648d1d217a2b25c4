//! Serving one validated pull: take the byte budget, make the chunk (at once when it cannot
//! block, else on the blocking pool), tie the budget to the chunk's bytes, and hand the result
//! back to the engine — giving the ticket back whatever happens to the request.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ferry_core::message::Reply;
use ferry_core::service::PullTicket;
use ferry_core::{ChunkData, ProduceError, Produced};

use crate::budget::{attach, ShareKey};
use crate::runtime::panic_text;
use crate::service::Inner;

/// A `produce` that panicked, as the error the receiver gets.
fn panicked(p: Box<dyn std::any::Any + Send>) -> ProduceError {
    ProduceError(format!("produce panicked: {}", panic_text(&*p)))
}

impl Inner {
    /// Produce the chunk of a validated pull under the byte budget: at once if the object can
    /// do it without blocking, else on the blocking pool.
    pub(crate) async fn serve(self: &Arc<Self>, ticket: PullTicket) -> Reply {
        // Whatever happens to this future (cancelled by a cell shutdown, ...), the ticket goes
        // back to the engine: a lost ticket would hold its transaction until the drain timeout.
        // The budget is taken for the chunk's real size before it is made (see crate::budget),
        // from the share of the connection the pull came on.
        let share = ShareKey::current(ticket.receiver());
        let ref_id = ticket.ref_id().clone();
        let estimate = self.sizes.estimate(&ticket, self.opts.chunk_estimate);
        let mut guard = TicketGuard {
            inner: Arc::clone(self),
            ticket: Some(ticket),
        };
        let permit = tokio::select! {
            p = self.budget.acquire_for(&share, estimate) => p,
            _ = self.draining.cancelled() => return guard.abandon(),
        };
        tracing::trace!(estimate, "budget acquired");
        // First try to make the chunk right here (data in memory or in the page cache): that
        // saves two thread hand-offs per chunk. Only what would block goes to the pool.
        let now = match guard.ticket.as_ref() {
            Some(t) => catch_unwind(AssertUnwindSafe(|| t.try_produce_now()))
                .unwrap_or_else(|p| Some(Err(panicked(p)))),
            None => None,
        };
        let (ticket, result) = match now {
            Some(result) => {
                let Some(ticket) = guard.ticket.take() else {
                    return Reply::error(ferry_core::ReturnCode::ProcessException, "ticket lost");
                };
                tracing::trace!("produced without blocking");
                (ticket, result)
            }
            None => {
                let slot = tokio::select! {
                    s = Arc::clone(&self.produce_slots).acquire_owned() => s,
                    _ = self.draining.cancelled() => return guard.abandon(),
                };
                let Ok(slot) = slot else {
                    return guard.abandon();
                };
                let Some(ticket) = guard.ticket.take() else {
                    return Reply::error(ferry_core::ReturnCode::ProcessException, "ticket lost");
                };
                let joined = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    let result = catch_unwind(AssertUnwindSafe(|| ticket.produce()))
                        .unwrap_or_else(|p| Err(panicked(p)));
                    (ticket, result)
                })
                .await;
                let Ok(joined) = joined else {
                    // Only when the runtime shuts down under us; the ticket is gone with the task.
                    return Reply::error(
                        ferry_core::ReturnCode::ServiceUnavailable,
                        "runtime shutting down",
                    );
                };
                joined
            }
        };
        guard.ticket = Some(ticket);
        tracing::trace!(ok = result.is_ok(), "produced");
        let result = match result {
            Ok(Produced::Data { data, state }) => {
                let len = data.byte_len();
                self.sizes.learn(&ref_id, len);
                let permit = if len > estimate {
                    drop(permit);
                    self.budget.acquire_for(&share, len).await
                } else {
                    permit
                };
                let data = match data {
                    ChunkData::Bytes(b) => ChunkData::Bytes(attach(b, permit)),
                    // returned once the connection has sent the region (or dropped it)
                    ChunkData::File(f) => ChunkData::File(f.with_owner(permit)),
                    ChunkData::Items(mut items) => {
                        if let Some(first) = items.first_mut() {
                            *first = attach(std::mem::take(first), permit);
                        }
                        ChunkData::Items(items)
                    }
                    ChunkData::ItemParts(mut items) => {
                        // On the first item's largest part (a tensor's data, not its header):
                        // written last, so the permit lasts until the item's bytes are out.
                        let largest = items
                            .first_mut()
                            .and_then(|i| i.iter_mut().max_by_key(|p| p.len()));
                        if let Some(part) = largest {
                            *part = attach(std::mem::take(part), permit);
                        }
                        ChunkData::ItemParts(items)
                    }
                };
                Ok(Produced::Data { data, state })
            }
            other => other,
        };
        let Some(ticket) = guard.ticket.take() else {
            return Reply::error(ferry_core::ReturnCode::ProcessException, "ticket lost");
        };
        self.with_engine_bg(|svc, now| svc.finish_pull(ticket, result, now))
    }
}

/// Gives a pull ticket back to the engine if the serving future is dropped early.
struct TicketGuard {
    inner: Arc<Inner>,
    ticket: Option<PullTicket>,
}

impl TicketGuard {
    fn abandon(&mut self) -> Reply {
        match self.ticket.take() {
            Some(t) => self
                .inner
                .with_engine_bg(|svc, now| svc.abandon_pull(t, now)),
            None => Reply::error(
                ferry_core::ReturnCode::ServiceUnavailable,
                "service stopping",
            ),
        }
    }
}

impl Drop for TicketGuard {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let _ = self.abandon();
        }
    }
}
