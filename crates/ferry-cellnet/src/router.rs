//! Where messages go and who waits for what comes back: the routing table (one link per peer
//! FQCN), the parent, the requests waiting for their replies, and the [`PeerEvent`]s of the
//! table's changes (f3-wire.md §2.3, §2.4).
//!
//! The router knows nothing of sockets: a link is anything with an id and a peer name
//! ([`Link`]); the cell's connections are links, and so are the stand-ins of the unit tests.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use smallvec::SmallVec;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::fqcn::{Fqcn, SERVER_ROOT};
use crate::message::Message;
use crate::request_id::RequestId;
use crate::return_code::ReturnCode;

/// What the router needs of a connection.
pub(crate) trait Link: Send + Sync + 'static {
    /// Unique per cell: tells a connection from the one that replaced it.
    fn id(&self) -> u64;
    /// The peer's proven FQCN.
    fn peer(&self) -> &str;
}

/// A peer connection of a cell came or went (see [`crate::Cell::peer_events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A connection to this peer FQCN is established (also when it takes the name over from
    /// a connection that stopped answering).
    Connected(String),
    /// The connection to this peer FQCN closed and no newer one replaced it.
    Disconnected(String),
}

/// How many peer events a slow subscriber may fall behind before it misses the oldest.
const PEER_EVENT_CAPACITY: usize = 256;

/// What a reply is matched by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum WaitKey {
    /// A plain request's `cn__req_id`.
    Reply(RequestId),
    /// A streamed request's `sm__ri` (its reply is a stream on `return_only`).
    StreamReply(RequestId),
}

/// Hashes a [`WaitKey`] by its request id's own bits (the two halves folded) instead of
/// SipHash: SipHash of the 16-byte id cost about 3% of a round trip's instructions. Safe
/// because only ids this cell drew at random ([`RequestId::new`]) are ever inserted; a
/// peer choosing the ids it replies with only looks up, and cannot crowd a bucket.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // the enum's discriminant and anything else that is not an id
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64 ^ (n >> 64) as u64;
    }
}

/// A waiter's target FQCN is kept inline up to this many bytes, no allocation per request
/// (a job cell's `site-1.<uuid>` is 43; smallvec's sizes go 32, 36, 64).
const TARGET_INLINE: usize = 64;

/// Someone waiting for a reply.
struct Waiter {
    /// The FQCN the request went to; a plain reply must come from it. Its bytes: it is only
    /// compared (and printed in a timeout's message).
    target: SmallVec<[u8; TARGET_INLINE]>,
    /// The link the request left on; if it closes, the waiter fails at once.
    link: u64,
    /// When the cell's sweeper ([`Router::expire`]) fails the waiter with a timeout; `None`:
    /// the requester keeps a timer of its own.
    expires: Option<Expiry>,
    tx: oneshot::Sender<Message>,
}

/// The deadline of a waiter its requester left to the cell's sweeper.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expiry {
    /// The requester's deadline.
    pub at: Instant,
    /// The request's timeout (for the message).
    pub after: Duration,
}

/// Who may resolve a waiter.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReplyFrom<'a> {
    /// Only the cell the request went to (a plain REPLY: NVFlare's origin check).
    Target(&'a str),
    /// Anyone who could route it back: a RETURN from a hop, a stream's reply or abort.
    Anyone,
}

/// The outcome of [`Router::claim`].
pub(crate) enum Claim<L> {
    /// The name is the link's now.
    Taken,
    /// Another link holds the name.
    Held(Arc<L>),
}

/// The routing table, the parent, and the reply waiters of a cell.
pub(crate) struct Router<L> {
    /// Peer FQCN → its (single) link.
    links: DashMap<String, Arc<L>>,
    /// The peer reached by the last `connect`: the route of last resort.
    parent: Mutex<Option<Fqcn>>,
    waiters: DashMap<WaitKey, Waiter, BuildHasherDefault<IdHasher>>,
    /// A sweeper ([`Router::sweeping`]) runs: waiters with an [`Expiry`] are failed on time.
    sweeper: AtomicBool,
    events: broadcast::Sender<PeerEvent>,
}

impl<L: Link> Default for Router<L> {
    fn default() -> Self {
        Router {
            links: DashMap::new(),
            parent: Mutex::new(None),
            waiters: DashMap::with_hasher(Default::default()),
            sweeper: AtomicBool::new(false),
            events: broadcast::channel(PEER_EVENT_CAPACITY).0,
        }
    }
}

impl<L: Link> Router<L> {
    fn emit(&self, e: PeerEvent) {
        // Nobody subscribed is fine.
        let _ = self.events.send(e);
    }

    /// FQCNs of the peers with a link, sorted.
    pub fn peers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.links.iter().map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    /// The link of peer `name`.
    pub fn get(&self, name: &str) -> Option<Arc<L>> {
        self.links.get(name).map(|l| l.clone())
    }

    /// True if peer `name` has a link.
    pub fn is_connected(&self, name: &str) -> bool {
        self.links.contains_key(name)
    }

    /// Subscribe to links that come and go.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.events.subscribe()
    }

    /// The parent, if any.
    pub fn parent(&self) -> Option<Fqcn> {
        self.parent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Make `p` the parent.
    pub fn set_parent(&self, p: Fqcn) {
        *self.parent.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// The link a message for `target` leaves on: a direct link, else the nearest linked
    /// ancestor of the target, else the server root, else the parent. `exclude` is the hop a
    /// forwarded message came from (never bounce it back).
    pub fn route(&self, target: &str, exclude: Option<&str>) -> Option<Arc<L>> {
        let pick = |name: &str| -> Option<Arc<L>> {
            if Some(name) == exclude {
                return None;
            }
            self.get(name)
        };
        if let Some(l) = pick(target) {
            return Some(l);
        }
        if let Ok(t) = Fqcn::new(target) {
            for a in t.ancestors() {
                if let Some(l) = pick(a.as_str()) {
                    return Some(l);
                }
            }
        }
        if let Some(l) = pick(SERVER_ROOT) {
            return Some(l);
        }
        self.parent().and_then(|p| pick(p.as_str()))
    }

    /// Take the peer's name for `link` if nobody holds it: `first` runs while the name is
    /// being taken (the cell queues READY there, so nothing routed to the peer overtakes
    /// it), and an error from it leaves the name free. A holder is returned, not replaced:
    /// the caller decides whether it is dead ([`Router::evict`]).
    pub fn claim<E>(
        &self,
        link: &Arc<L>,
        first: impl FnOnce() -> Result<(), E>,
    ) -> Result<Claim<L>, E> {
        match self.links.entry(link.peer().to_string()) {
            Entry::Vacant(v) => {
                first()?;
                v.insert(link.clone());
                self.emit(PeerEvent::Connected(link.peer().to_string()));
                Ok(Claim::Taken)
            }
            Entry::Occupied(o) => Ok(Claim::Held(o.get().clone())),
        }
    }

    /// Remove `holder` from the table if it still holds its name (it was found dead; its
    /// successor announces itself, so no `Disconnected`).
    pub fn evict(&self, holder: &L) {
        self.links
            .remove_if(holder.peer(), |_, l| l.id() == holder.id());
    }

    /// Put `link` in the table whatever held its name (a connection this cell opened: we
    /// chose to connect again). Returns the link it replaced.
    pub fn insert(&self, link: Arc<L>) -> Option<Arc<L>> {
        let name = link.peer().to_string();
        let old = self.links.insert(name.clone(), link);
        self.emit(PeerEvent::Connected(name));
        old
    }

    /// `link` closed: forget it (unless a newer link took its name meanwhile), and fail every
    /// request that left on it, since no reply can come back that way.
    pub fn remove(&self, link: &L) {
        if self
            .links
            .remove_if(link.peer(), |_, l| l.id() == link.id())
            .is_some()
        {
            self.emit(PeerEvent::Disconnected(link.peer().to_string()));
        }
        let why = format!("connection to {} lost", link.peer());
        self.fail_where(|w| w.link == link.id(), &why);
    }

    /// Forget every link.
    pub fn clear(&self) {
        self.links.clear();
    }

    /// Wait for the reply `key` to a request sent to `target` on `link`.
    pub fn wait(
        &self,
        key: WaitKey,
        target: &str,
        link: u64,
        expires: Option<Expiry>,
    ) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        let w = Waiter {
            target: SmallVec::from_slice(target.as_bytes()),
            link,
            expires,
            tx,
        };
        self.waiters.insert(key, w);
        rx
    }

    /// Stop waiting for `key` (the request failed or timed out).
    pub fn forget(&self, key: &WaitKey) {
        self.waiters.remove(key);
    }

    /// Hand `msg` to whoever waits for `key`, if `from` may answer it. False if nobody
    /// (allowed) waits.
    pub fn resolve(&self, key: &WaitKey, from: ReplyFrom<'_>, msg: Message) -> bool {
        let ok = |w: &Waiter| match from {
            ReplyFrom::Target(origin) => w.target.as_slice() == origin.as_bytes(),
            ReplyFrom::Anyone => true,
        };
        match self.waiters.remove_if(key, |_, w| ok(w)) {
            Some((_, w)) => {
                // the requester may have given up meanwhile
                let _ = w.tx.send(msg);
                true
            }
            None => false,
        }
    }

    /// Fail every waiter with a `comm_error` saying `why`.
    pub fn fail_all(&self, why: &str) {
        self.fail_where(|_| true, why);
    }

    fn fail_where(&self, pick: impl Fn(&Waiter) -> bool, why: &str) {
        self.end_where(pick, |_| Message::error(ReturnCode::CommError, why));
    }

    /// Remove the waiters `pick` chooses and send each what `end` makes of it.
    fn end_where(&self, pick: impl Fn(&Waiter) -> bool, end: impl Fn(&Waiter) -> Message) {
        let dead: Vec<WaitKey> = self
            .waiters
            .iter()
            .filter(|w| pick(w.value()))
            .map(|w| *w.key())
            .collect();
        for k in dead {
            if let Some((_, w)) = self.waiters.remove_if(&k, |_, w| pick(w)) {
                let m = end(&w);
                let _ = w.tx.send(m);
            }
        }
    }

    /// True while a sweeper runs ([`Router::start_sweeping`]): a requester that filed an
    /// [`Expiry`] and then sees this true may wait without a timer of its own. (A waiter is
    /// filed before this is read, and the sweeper clears it before failing the waiters it
    /// leaves: either the requester sees false and keeps a timer, or its waiter is failed.)
    pub fn sweeping(&self) -> bool {
        self.sweeper.load(Ordering::SeqCst)
    }

    /// A sweeper starts: from now on it calls [`Router::expire`] regularly.
    pub fn start_sweeping(&self) {
        self.sweeper.store(true, Ordering::SeqCst);
    }

    /// The sweeper stops: every waiter that relies on it fails now (with `why`), rather
    /// than waiting for ever.
    pub fn stop_sweeping(&self, why: &str) {
        self.sweeper.store(false, Ordering::SeqCst);
        self.fail_where(|w| w.expires.is_some(), why);
    }

    /// Fail with a timeout every waiter whose [`Expiry`] is `now` or earlier.
    pub fn expire(&self, now: Instant) {
        self.end_where(
            |w| w.expires.is_some_and(|e| e.at <= now),
            |w| {
                let after = w.expires.map(|e| e.after).unwrap_or_default();
                Message::error(
                    ReturnCode::Timeout,
                    format!(
                        "no reply from {} in {after:?}",
                        String::from_utf8_lossy(&w.target)
                    ),
                )
            },
        );
    }
}

#[cfg(test)]
mod tests;
