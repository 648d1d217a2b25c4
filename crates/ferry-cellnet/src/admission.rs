//! Who may hold a connection to a listening cell: at most `Limits::max_connections` at once
//! and at most `Limits::max_connections_per_address` from one IP address, so a host that
//! opens (and holds) connections by the thousand locks out nobody but itself. A connection
//! over either limit is refused right after `accept`, before any task reads from it: it gets
//! a READY that says why (`busy: ...`, which a ferry cell reports as
//! [`crate::CellnetError::Busy`]) and is closed. Refusals are themselves bounded: beyond
//! [`MAX_REFUSALS`] being delivered at once the socket is simply closed.
//!
//! Each address also owns the [`LogLimiter`] of its connections: whatever a host sends, and
//! over however many connections, it gets at most one log line per period.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::log_limit::{limited, LogLimiter};

/// Refusals being delivered at once (each is a short task: write READY, drain, close).
pub(crate) const MAX_REFUSALS: usize = 32;

/// How long a refused peer gets to read its READY before the socket is closed. The socket is
/// drained meanwhile, so that closing it does not reset the connection before the READY is
/// read (a close with unread input sends RST, which can discard what was sent).
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Connections per address, and their shared log limiter.
struct AddrEntry {
    conns: usize,
    log: Arc<LogLimiter>,
}

/// Connection limits of a cell (all its listeners together).
pub(crate) struct Admission {
    total: Arc<Semaphore>,
    max_total: usize,
    max_per_addr: usize,
    per_addr: Mutex<HashMap<IpAddr, AddrEntry>>,
    /// Log limiter of refusals at the total limit (from addresses with no connection).
    busy_log: LogLimiter,
    refusals: Arc<Semaphore>,
}

/// An admitted connection's place; dropping it frees the place.
pub(crate) struct Admitted {
    _total: OwnedSemaphorePermit,
    addr: Option<IpAddr>,
    admission: Arc<Admission>,
    /// The log limiter of the peer's address (shared by its connections).
    pub log: Arc<LogLimiter>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(ip) = self.addr {
            let mut map = self.admission.lock();
            if let Some(e) = map.get_mut(&ip) {
                e.conns -= 1;
                if e.conns == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// A refusal: what to tell the peer, and the permit to deliver it (none: just close).
pub(crate) struct Busy {
    /// The text for the peer, starting with `busy:`.
    pub why: String,
    /// Permit of the bounded refusal pool; `None` when it is full (close without a word).
    pub permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_addr: usize) -> Arc<Self> {
        Arc::new(Admission {
            total: Arc::new(Semaphore::new(max_total)),
            max_total,
            max_per_addr,
            per_addr: Mutex::new(HashMap::new()),
            busy_log: LogLimiter::default(),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, AddrEntry>> {
        self.per_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a connection from `ip` (`None`: in-process, only the total counts), or say why
    /// not.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>, peer: &str) -> Result<Admitted, Busy> {
        let ip = ip.map(|ip| ip.to_canonical());
        let busy = |why: String, log: &LogLimiter| {
            limited!(log, warn, %peer, "connection refused: {why}");
            Busy {
                why,
                permit: self.refusals.clone().try_acquire_owned().ok(),
            }
        };
        let mut map = self.lock();
        let log = match ip {
            Some(ip) => {
                let e = map.entry(ip).or_insert_with(|| AddrEntry {
                    conns: 0,
                    log: Arc::default(),
                });
                if e.conns >= self.max_per_addr {
                    let log = Arc::clone(&e.log);
                    drop(map);
                    return Err(busy(
                        format!(
                            "busy: too many connections from your address {ip} ({} at once at most, Limits::max_connections_per_address); close some or try again later",
                            self.max_per_addr
                        ),
                        &log,
                    ));
                }
                Some(e)
            }
            None => None,
        };
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            let fresh = log.as_ref().is_some_and(|e| e.conns == 0);
            let log = log.map(|e| Arc::clone(&e.log));
            if fresh {
                if let Some(ip) = ip {
                    map.remove(&ip);
                }
            }
            drop(map);
            let why = format!(
                "busy: too many connections ({} at once at most, Limits::max_connections); try again later",
                self.max_total
            );
            return Err(match log {
                Some(l) => busy(why, &l),
                None => busy(why, &self.busy_log),
            });
        };
        let log = match log {
            Some(e) => {
                e.conns += 1;
                Arc::clone(&e.log)
            }
            None => Arc::default(),
        };
        Ok(Admitted {
            _total: total,
            addr: ip,
            admission: Arc::clone(self),
            log,
        })
    }

    /// Connections held by `ip` (tests).
    #[cfg(test)]
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip).map_or(0, |e| e.conns)
    }
}

/// Tell a refused peer why, then close: write `ready` (a READY frame carrying the refusal),
/// stop writing, and read (discarding) until the peer closes or [`REFUSAL_LINGER`] passes.
pub(crate) async fn deliver_refusal<S>(mut s: S, ready: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        if s.write_all(ready).await.is_err() || s.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 4096];
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_and_total_limits() {
        let a = Admission::new(3, 2);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let x1 = a.admit(Some(x), "x").ok().unwrap();
        let _x2 = a.admit(Some(x), "x").ok().unwrap();
        let busy = a.admit(Some(x), "x").err().unwrap();
        assert!(busy
            .why
            .starts_with("busy: too many connections from your address 10.0.0.1"));
        assert!(busy.permit.is_some());
        // another address still gets in, up to the total
        let _y1 = a.admit(Some(y), "y").ok().unwrap();
        let busy = a.admit(Some(y), "y").err().unwrap();
        assert!(
            busy.why.starts_with("busy: too many connections (3"),
            "{}",
            busy.why
        );
        assert_eq!(a.held_by(y), 1);
        drop(x1);
        assert_eq!(a.held_by(x), 1);
        let _y2 = a.admit(Some(y), "y").ok().unwrap();
        // the address shares one log limiter
        assert!(Arc::ptr_eq(&_y1.log, &_y2.log));
        // IPv4-mapped IPv6 is the same address
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        drop(_y2);
        let _m = a.admit(Some(mapped), "x").ok().unwrap();
        assert_eq!(a.held_by(x), 2);
    }

    #[test]
    fn refusals_are_bounded() {
        let a = Admission::new(1, 1);
        let _held = a
            .admit(Some("10.0.0.1".parse().unwrap()), "x")
            .ok()
            .unwrap();
        let refused: Vec<Busy> = (0..MAX_REFUSALS + 5)
            .map(|_| {
                a.admit(Some("10.0.0.1".parse().unwrap()), "x")
                    .err()
                    .unwrap()
            })
            .collect();
        let with_words = refused.iter().filter(|b| b.permit.is_some()).count();
        assert_eq!(with_words, MAX_REFUSALS);
    }
}
