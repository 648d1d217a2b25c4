//! One budget for the memory a cell holds on behalf of what its peers have not finished
//! sending: frames in progress, `sm__` streams in reassembly, and the idle frame buffers a
//! connection keeps for reuse ([`crate::Limits::max_held_bytes`]).
//!
//! Every such byte is charged to the connection it arrived on before it is allocated. When a
//! charge does not fit, the stalest other holder — the connection whose held bytes saw no
//! progress for the longest time, the larger one on a tie — is closed, and the charge waits
//! until that connection has let go of its memory. A connection that cannot fit even when it
//! is the only holder left is refused (and closed by its caller). So a peer that sends half a
//! frame and stops, or opens streams it never finishes, holds at most what the budget lets
//! it, and loses its connection as soon as someone who makes progress needs the room.
//!
//! The table ([`HeldTable`]) is a pure state machine with `now` passed in; [`HeldBudget`]
//! wraps it with a lock and a wake-up for charges that wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::log_limit::{limited, LogLimiter};

/// How long a charge waits for an evicted connection to let go of its memory before it is
/// refused itself. Eviction cancels the victim's reader, which drops its buffers at once;
/// this only bounds the pathological case.
const EVICTION_WAIT: Duration = Duration::from_secs(5);

/// One connection's share of the table.
#[derive(Debug)]
struct Holder {
    /// Bytes charged to it.
    bytes: usize,
    /// The last time its charge grew (or it registered): staleness decides who goes first.
    last_progress: Instant,
    /// Set once it was chosen to be closed; its bytes are expected back soon.
    evicted: bool,
}

/// What to do with a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Charged.
    Granted,
    /// Close connection `victim`, then try again once memory came back.
    Evict(u64),
    /// Evicted connections are still letting go of enough memory: try again once they did.
    Wait,
    /// Does not fit even without the others: refuse the charge.
    Refuse,
}

/// The bytes held per connection, and the decisions (sans-IO).
#[derive(Debug)]
pub(crate) struct HeldTable {
    capacity: usize,
    used: usize,
    holders: HashMap<u64, Holder>,
}

impl HeldTable {
    pub fn new(capacity: usize) -> Self {
        HeldTable {
            capacity,
            used: 0,
            holders: HashMap::new(),
        }
    }

    pub fn register(&mut self, id: u64, now: Instant) {
        self.holders.entry(id).or_insert(Holder {
            bytes: 0,
            last_progress: now,
            evicted: false,
        });
    }

    /// Forget a connection and give back everything charged to it.
    pub fn unregister(&mut self, id: u64) {
        if let Some(h) = self.holders.remove(&id) {
            self.used -= h.bytes;
        }
    }

    /// Charge `n` bytes to `id` if they fit now; never evicts (for memory that is only nice
    /// to keep, such as idle buffers).
    pub fn try_charge(&mut self, id: u64, n: usize) -> bool {
        let Some(h) = self.holders.get_mut(&id) else {
            return false;
        };
        if h.evicted || self.used + n > self.capacity {
            return false;
        }
        h.bytes += n;
        self.used += n;
        true
    }

    /// Charge `n` bytes to `id`, or say what has to happen first.
    pub fn charge(&mut self, id: u64, n: usize, now: Instant) -> Admit {
        match self.holders.get(&id) {
            None => return Admit::Refuse,
            Some(h) if h.evicted => return Admit::Refuse,
            Some(_) => {}
        }
        if self.used + n <= self.capacity {
            if let Some(h) = self.holders.get_mut(&id) {
                h.bytes += n;
                h.last_progress = now;
            }
            self.used += n;
            return Admit::Granted;
        }
        let returning: usize = self
            .holders
            .values()
            .filter(|h| h.evicted)
            .map(|h| h.bytes)
            .sum();
        if self.used - returning + n <= self.capacity {
            return Admit::Wait;
        }
        let victim = self
            .holders
            .iter()
            .filter(|(&k, h)| k != id && !h.evicted && h.bytes > 0)
            .min_by(|(_, a), (_, b)| {
                a.last_progress
                    .cmp(&b.last_progress)
                    .then(b.bytes.cmp(&a.bytes))
            })
            .map(|(&k, _)| k);
        match victim {
            Some(v) => {
                if let Some(h) = self.holders.get_mut(&v) {
                    h.evicted = true;
                }
                Admit::Evict(v)
            }
            None if returning > 0 => Admit::Wait,
            None => Admit::Refuse,
        }
    }

    /// Give back `n` bytes charged to `id` (no-op for a connection already unregistered).
    pub fn release(&mut self, id: u64, n: usize) {
        if let Some(h) = self.holders.get_mut(&id) {
            let n = n.min(h.bytes);
            h.bytes -= n;
            self.used -= n;
        }
    }

    /// Bytes charged in all.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Bytes charged to `id`.
    pub fn held_by(&self, id: u64) -> usize {
        self.holders.get(&id).map_or(0, |h| h.bytes)
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// What the budget is, for the message.
    pub capacity: usize,
    /// What was asked.
    pub wanted: usize,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} more bytes of unfinished data do not fit the cell's budget of {} bytes for data its peers have not finished sending (Limits::max_held_bytes)",
            self.wanted, self.capacity
        )
    }
}

/// The cell-wide budget: the table behind a lock, the close tokens of the connections, and a
/// wake-up for charges waiting on an eviction.
#[derive(Debug)]
pub(crate) struct HeldBudget {
    table: Mutex<HeldTable>,
    /// How to close each registered connection (an eviction cancels it).
    closers: Mutex<HashMap<u64, (CancellationToken, String)>>,
    returned: Notify,
    /// Evictions are logged at most once per period (a peer can cause one per connection).
    log: LogLimiter,
}

impl HeldBudget {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(HeldBudget {
            table: Mutex::new(HeldTable::new(capacity)),
            closers: Mutex::new(HashMap::new()),
            returned: Notify::new(),
            log: LogLimiter::default(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HeldTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (CancellationToken, String)>> {
        self.closers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register connection `id` (`close` closes it, `addr` names it in logs). The returned
    /// account gives everything back when dropped.
    pub fn register(self: &Arc<Self>, id: u64, close: CancellationToken, addr: &str) -> Account {
        self.table().register(id, Instant::now());
        self.closers().insert(id, (close.clone(), addr.to_string()));
        Account {
            budget: Arc::clone(self),
            id,
            close,
        }
    }

    fn unregister(&self, id: u64) {
        self.table().unregister(id);
        self.closers().remove(&id);
        self.returned.notify_waiters();
    }

    /// Bytes charged in all (for monitoring and tests).
    pub fn used(&self) -> usize {
        self.table().used()
    }

    /// The budget.
    pub fn capacity(&self) -> usize {
        self.table().capacity
    }
}

/// One connection's account with the [`HeldBudget`]; dropping it gives back whatever is
/// still charged to the connection. Cheap to clone the parts that need it: see
/// [`Account::handle`].
#[derive(Debug)]
pub(crate) struct Account {
    budget: Arc<HeldBudget>,
    id: u64,
    close: CancellationToken,
}

impl Account {
    /// A handle that charges and releases for this connection without owning the account.
    pub fn handle(&self) -> AccountHandle {
        AccountHandle {
            budget: Arc::clone(&self.budget),
            id: self.id,
            close: self.close.clone(),
        }
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.budget.unregister(self.id);
    }
}

/// Charges and releases on behalf of one connection (see [`Account`]).
#[derive(Clone, Debug)]
pub(crate) struct AccountHandle {
    budget: Arc<HeldBudget>,
    id: u64,
    close: CancellationToken,
}

impl AccountHandle {
    /// Charge `n` bytes, closing stale connections to make room if need be. Fails if the
    /// charge does not fit even then, or if this connection is closed meanwhile (it may have
    /// been evicted itself). Cancel-safe: nothing is charged unless it returns `Ok`.
    pub async fn charge(&self, n: usize) -> Result<(), Refused> {
        let refused = || Refused {
            capacity: self.budget.capacity(),
            wanted: n,
        };
        let deadline = Instant::now() + EVICTION_WAIT;
        loop {
            let returned = self.budget.returned.notified();
            let admit = self.budget.table().charge(self.id, n, Instant::now());
            match admit {
                Admit::Granted => return Ok(()),
                Admit::Refuse => return Err(refused()),
                Admit::Evict(victim) => {
                    let closer = self.budget.closers().get(&victim).cloned();
                    if let Some((token, addr)) = closer {
                        let held = self.budget.table().held_by(victim);
                        limited!(
                            self.budget.log,
                            warn,
                            victim = %addr,
                            held,
                            "closing the connection holding the stalest unfinished data: the cell's budget for data its peers have not finished sending (Limits::max_held_bytes) is full"
                        );
                        token.cancel();
                    }
                    continue;
                }
                Admit::Wait => {}
            }
            tokio::select! {
                _ = returned => {}
                _ = self.close.cancelled() => return Err(refused()),
                _ = tokio::time::sleep_until(deadline) => return Err(refused()),
            }
        }
    }

    /// Charge `n` bytes only if they fit right now (no eviction, no wait).
    pub fn try_charge(&self, n: usize) -> bool {
        self.budget.table().try_charge(self.id, n)
    }

    /// Give back `n` bytes.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.budget.table().release(self.id, n);
        self.budget.returned.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_or_evict_the_stalest_holder() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = HeldTable::new(100);
        for id in 1..=3 {
            t.register(id, t0);
        }
        assert_eq!(t.charge(1, 40, t0), Admit::Granted);
        assert_eq!(t.charge(2, 40, t0 + s), Admit::Granted);
        // 3 makes progress later: 1 is the stalest and goes first
        assert_eq!(t.charge(3, 10, t0 + 2 * s), Admit::Granted);
        assert_eq!(t.charge(3, 30, t0 + 3 * s), Admit::Evict(1));
        // 1's bytes are on their way back: wait rather than evict another one
        assert_eq!(t.charge(3, 30, t0 + 3 * s), Admit::Wait);
        assert!(!t.try_charge(1, 1), "an evicted holder gets nothing more");
        assert_eq!(t.charge(1, 1, t0 + 3 * s), Admit::Refuse);
        t.unregister(1);
        assert_eq!(t.used(), 50);
        assert_eq!(t.charge(3, 30, t0 + 3 * s), Admit::Granted);
        assert_eq!(t.held_by(3), 40);
    }

    #[test]
    fn a_charge_larger_than_the_budget_alone_is_refused() {
        let t0 = Instant::now();
        let mut t = HeldTable::new(100);
        t.register(1, t0);
        t.register(2, t0);
        assert_eq!(t.charge(1, 60, t0), Admit::Granted);
        assert_eq!(t.charge(1, 60, t0), Admit::Refuse, "nobody else to evict");
        assert_eq!(t.charge(2, 101, t0), Admit::Evict(1));
        t.unregister(1);
        assert_eq!(t.charge(2, 101, t0), Admit::Refuse);
        assert_eq!(t.charge(2, 100, t0), Admit::Granted);
        t.release(2, 1000);
        assert_eq!(t.used(), 0);
        assert_eq!(t.charge(9, 1, t0), Admit::Refuse, "unknown connection");
    }

    #[test]
    fn ties_in_staleness_evict_the_larger_holder() {
        let t0 = Instant::now();
        let mut t = HeldTable::new(100);
        for id in 1..=3 {
            t.register(id, t0);
        }
        assert_eq!(t.charge(1, 20, t0), Admit::Granted);
        assert_eq!(t.charge(2, 70, t0), Admit::Granted);
        assert_eq!(t.charge(3, 20, t0), Admit::Evict(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_charge_is_granted_once_the_victim_lets_go() {
        let b = HeldBudget::new(100);
        let victim_close = CancellationToken::new();
        let victim = b.register(1, victim_close.clone(), "10.0.0.1:1");
        let v = victim.handle();
        v.charge(80).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let me = b.register(2, CancellationToken::new(), "10.0.0.2:1");
        let h = me.handle();
        let waiting = tokio::spawn(async move { h.charge(50).await });
        // the victim is told to close, and lets go of its memory when it does
        victim_close.cancelled().await;
        assert!(!waiting.is_finished());
        drop(victim);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(b.used(), 50);
        drop(me);
        assert_eq!(b.used(), 0);
    }
}
