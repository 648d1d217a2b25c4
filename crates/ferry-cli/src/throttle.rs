//! [`Throttled`]: `ferry serve --limit-rate`, a cap on the bytes per second the sender sends
//! (all receivers together), so a transfer does not saturate a shared link.
//!
//! The cap is a [`RateLimiter`]: one link that sends one chunk at a time, each holding it for
//! `len / rate`. Chunks waiting for the link are served **round robin by receiver** (the oldest
//! waiting chunk of the next receiver in turn), so every receiver hears from the sender about
//! once per `receivers × chunk / rate`, however many requests each keeps in flight; a receiver
//! times a request out only when the sender has been silent that long (see
//! `ferry_core::download`), so a capped transfer finishes, just slower. First come, first
//! served would let one receiver's window of requests starve another one for a whole window.
//!
//! [`RateLimiter::stop`] (Ctrl-C) ends every wait at once: the waiting pulls fail instead of
//! holding the sender's exit until their turn.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry::core::{
    DoneStatus, DownloadStatus, Downloadable, ExpectedReceivers, ProduceError, Produced, RefId,
    State, TransferPlan, TxId,
};

/// The capped link, shared by every object of a `ferry serve`.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_sec: f64,
    link: Mutex<Link>,
    /// Woken when a chunk is granted the link, when the link frees, and on stop.
    changed: Condvar,
}

/// Who waits for the link and who has it.
#[derive(Debug, Default)]
struct Link {
    /// Next waiter number.
    next_ticket: u64,
    /// Waiting chunks per receiver: (ticket, bytes), oldest first.
    waiting: BTreeMap<String, VecDeque<(u64, u64)>>,
    /// The chunk on the link: its ticket and when its bytes have gone.
    sending: Option<(u64, Instant)>,
    /// The receiver served last; the next turn goes to the one after it.
    last: Option<String>,
    /// Chunks whose bytes have gone but whose waiter has not noticed yet.
    done: HashSet<u64>,
    /// Every wait ends with an error (the sender is stopping).
    stopped: bool,
}

impl Link {
    /// Queue `len` bytes of `receiver`; returns its ticket.
    fn enqueue(&mut self, receiver: &str, len: u64) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.waiting
            .entry(receiver.to_string())
            .or_default()
            .push_back((ticket, len));
        ticket
    }
}

/// The wait for the link ended because the sender is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl RateLimiter {
    /// A limiter for `bytes_per_sec` (> 0; the CLI refuses 0).
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Self {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            link: Mutex::new(Link::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `len` bytes hold the link.
    pub fn slot(&self, len: u64) -> Duration {
        Duration::from_secs_f64(len as f64 / self.bytes_per_sec)
    }

    /// Block until `len` bytes of `receiver` have had their turn on the link (round robin
    /// among receivers, oldest first within one), or until [`stop`](Self::stop).
    pub fn wait(&self, receiver: &str, len: u64) -> Result<(), Stopped> {
        let mut link = self.lock();
        if link.stopped {
            return Err(Stopped);
        }
        let ticket = link.enqueue(receiver, len);
        self.advance(&mut link, Instant::now());
        loop {
            if link.done.remove(&ticket) {
                return Ok(());
            }
            if link.stopped {
                for q in link.waiting.values_mut() {
                    q.retain(|(t, _)| *t != ticket);
                }
                return Err(Stopped);
            }
            // Whoever wakes first after the chunk on the link is done moves the link on.
            let wake = match link.sending {
                Some((_, until)) => until.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(1),
            };
            link = self
                .changed
                .wait_timeout(link, wake.max(Duration::from_millis(1)))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            self.advance(&mut link, Instant::now());
        }
    }

    /// Retire the chunk on the link once its bytes have gone, then give the link to the next
    /// receiver in turn.
    fn advance(&self, link: &mut Link, now: Instant) {
        if let Some((ticket, until)) = link.sending {
            if now < until {
                return;
            }
            link.sending = None;
            link.done.insert(ticket);
            self.changed.notify_all();
        }
        let next = {
            let after = link.last.as_deref();
            let later = link
                .waiting
                .iter()
                .filter(|(r, q)| after.is_none_or(|a| r.as_str() > a) && !q.is_empty())
                .map(|(r, _)| r.clone())
                .next();
            later.or_else(|| {
                link.waiting
                    .iter()
                    .find(|(_, q)| !q.is_empty())
                    .map(|(r, _)| r.clone())
            })
        };
        let Some(receiver) = next else {
            link.waiting.clear();
            return;
        };
        let Some((ticket, len)) = link.waiting.get_mut(&receiver).and_then(|q| q.pop_front())
        else {
            return;
        };
        if link.waiting.get(&receiver).is_some_and(|q| q.is_empty()) {
            link.waiting.remove(&receiver);
        }
        link.sending = Some((ticket, now + self.slot(len)));
        link.last = Some(receiver);
        self.changed.notify_all();
    }

    /// End every wait now, and every later one at once (Ctrl-C: the sender is stopping).
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }
}

/// A downloadable whose chunks are paced by a [`RateLimiter`]. `produce` runs on tokio's
/// blocking pool, so waiting there stalls no reactor thread.
pub struct Throttled {
    inner: Arc<dyn Downloadable>,
    limiter: Arc<RateLimiter>,
}

impl Throttled {
    /// Pace `inner` with `limiter`.
    pub fn new(inner: Arc<dyn Downloadable>, limiter: Arc<RateLimiter>) -> Self {
        Self { inner, limiter }
    }
}

// `try_produce_now` is deliberately not forwarded: every chunk must go through the waiting
// `produce`, on the blocking pool, or the rate limit would be skipped for cached chunks.
impl Downloadable for Throttled {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let produced = self.inner.produce(state, requester)?;
        if let Produced::Data { data, .. } = &produced {
            self.limiter
                .wait(requester, data.byte_len())
                .map_err(|Stopped| ProduceError("the sender is stopping".into()))?;
        }
        Ok(produced)
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.inner.plan()
    }

    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, receivers: &ExpectedReceivers) {
        self.inner.set_transaction(tx_id, ref_id, receivers)
    }

    fn downloaded_to_one(&self, receiver: &str, status: DownloadStatus) {
        self.inner.downloaded_to_one(receiver, status)
    }

    fn downloaded_to_all(&self) {
        self.inner.downloaded_to_all()
    }

    fn transaction_done(&self, tx_id: &TxId, status: DoneStatus) {
        self.inner.transaction_done(tx_id, status)
    }

    fn release(&self) {
        self.inner.release()
    }
}

#[cfg(test)]
mod tests;
