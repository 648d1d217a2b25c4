//! The sender's side of peer-assisted mode: a [`PeerCoordinator`] on the sender's cell answers
//! the scheduling requests of receivers (join, report, source failed) with ferry-core's
//! [`Scheduler`], one per shared ref, and drives its timers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use ferry_cellnet::{Cell, Message, MsgpackBody, ReturnCode as WireCode};
use ferry_core::peers::message::{
    decode, FailedRequest, JoinRequest, ReportRequest, ScheduleReply, CHANNEL, TOPIC_FAILED,
    TOPIC_JOIN, TOPIC_REPORT,
};
use ferry_core::peers::{FailureKind, PeerStats, Scheduler, SchedulerConfig, SourceReport};
use ferry_core::RefId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::codec;
use crate::runtime::{lock, now};

/// Most refs scheduled at once by one coordinator.
pub const MAX_SHARED_REFS: usize = 4096;

struct Inner {
    cfg: SchedulerConfig,
    refs: Mutex<HashMap<String, Scheduler>>,
    /// Wakes the timer task when a request may have moved a deadline.
    wake: Arc<Notify>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// Peer scheduling on a sender's cell (see [`crate::peers`]). Receivers of a ref
/// registered with [`schedule`](Self::schedule) that ask are told which source to pull from;
/// every other request is answered "pull from the origin".
#[derive(Clone)]
pub struct PeerCoordinator {
    inner: Arc<Inner>,
    cell: Cell,
}

impl std::fmt::Debug for PeerCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCoordinator")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PeerCoordinator {
    /// Answer scheduling requests on `cell` with `cfg`. Must be called inside a tokio runtime.
    pub fn new(cell: &Cell, cfg: SchedulerConfig) -> Self {
        let inner = Arc::new(Inner {
            cfg,
            refs: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        for topic in [TOPIC_JOIN, TOPIC_REPORT, TOPIC_FAILED] {
            let weak = Arc::downgrade(&inner);
            cell.register_request_handler(CHANNEL, topic, move |msg: Message| {
                let weak = weak.clone();
                async move { handle(&weak, topic, &msg) }
            });
        }
        let span = tracing::info_span!("peer_coordinator", cell = %cell.fqcn().as_str());
        inner.tasks.spawn(
            drive(
                Arc::downgrade(&inner),
                Arc::clone(&inner.wake),
                inner.stop.clone(),
            )
            .instrument(span),
        );
        Self {
            inner,
            cell: cell.clone(),
        }
    }

    /// Schedule the receivers of `ref_id` (false when [`MAX_SHARED_REFS`] are scheduled).
    pub fn schedule(&self, ref_id: &RefId) -> bool {
        let mut refs = lock(&self.inner.refs);
        if refs.len() >= MAX_SHARED_REFS && !refs.contains_key(ref_id.as_str()) {
            return false;
        }
        refs.entry(ref_id.as_str().to_string())
            .or_insert_with(|| Scheduler::new(self.inner.cfg.clone()));
        true
    }

    /// The transfer is over: every receiver is released, newcomers pull from the origin.
    pub fn close(&self) {
        for s in lock(&self.inner.refs).values_mut() {
            s.close();
        }
    }

    /// Counts of one ref's schedule.
    pub fn stats(&self, ref_id: &RefId) -> Option<PeerStats> {
        lock(&self.inner.refs)
            .get(ref_id.as_str())
            .map(Scheduler::stats)
    }

    /// Who fed whom for one ref: each receiver's bytes credited to the sender or to each
    /// peer (from the positions receivers report), and what each peer says it served. See
    /// [`ferry_core::peers::SourceReport`].
    pub fn sources(&self, ref_id: &RefId) -> Option<SourceReport> {
        lock(&self.inner.refs)
            .get(ref_id.as_str())
            .map(Scheduler::sources)
    }

    /// The transaction says `receiver` confirmed `ref_id` whole (`size` bytes): see
    /// [`Scheduler::confirmed`]. Call it for each receiver that succeeded before reading
    /// [`sources`](Self::sources) at the end.
    pub fn confirmed(&self, ref_id: &RefId, receiver: &str, size: u64) {
        if let Some(s) = lock(&self.inner.refs).get_mut(ref_id.as_str()) {
            s.confirmed(receiver, size);
        }
    }

    /// Stop answering and stop the timer task.
    pub async fn shutdown(&self) {
        for topic in [TOPIC_JOIN, TOPIC_REPORT, TOPIC_FAILED] {
            self.cell.unregister_request_handler(CHANNEL, topic);
        }
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

fn reply(r: ScheduleReply) -> Message {
    Message::from_msgpack(MsgpackBody::from_bytes(Bytes::from(r.encode())))
}

/// One scheduling request: who sent it is the message's origin (proven under TLS).
fn handle(weak: &Weak<Inner>, topic: &str, msg: &Message) -> Message {
    let Some(inner) = weak.upgrade() else {
        return Message::error(WireCode::ServiceUnavailable, "peer scheduling stopped");
    };
    let Some(origin) = msg.origin().map(str::to_owned) else {
        return Message::error(
            WireCode::InvalidRequest,
            "scheduling request without origin",
        );
    };
    let answer = answer(&mut lock(&inner.refs), topic, &origin, msg, now());
    inner.wake.notify_one();
    answer
}

/// The reply to one scheduling request on `topic` from the receiver `origin` (the name its
/// connection proved), given the schedulers of the shared refs: the body is refused unread
/// above the request size limit, decoded, and handed to the ref's scheduler; a request the
/// schedulers cannot act on (undecodable, a ref not shared, a malformed offer, an unknown
/// receiver) is answered "pull from the origin" with the reason. Drains the schedulers'
/// events into the log.
pub(crate) fn answer(
    refs: &mut HashMap<String, Scheduler>,
    topic: &str,
    origin: &str,
    msg: &Message,
    now: Instant,
) -> Message {
    let body = match codec::request_body(msg) {
        Ok(b) => b,
        Err(e) => return Message::error(WireCode::InvalidRequest, e.to_string()),
    };
    let answer = match topic {
        TOPIC_JOIN => decode::<JoinRequest>(&body).and_then(|r| {
            let s = refs
                .get_mut(&r.ref_id)
                .ok_or_else(|| format!("{} is not shared with peers", r.ref_id))?;
            s.join(origin, r.offer, r.position, now)
                .map(ScheduleReply::pull)
                .map_err(|e| e.to_string())
        }),
        TOPIC_REPORT => decode::<ReportRequest>(&body).and_then(|r| {
            let s = refs
                .get_mut(&r.ref_id)
                .ok_or_else(|| format!("{} is not shared with peers", r.ref_id))?;
            if let Some(served) = r.served {
                s.record_served(origin, served);
            }
            s.report(origin, r.position, r.complete, now)
                .map(ScheduleReply::directive)
                .map_err(|e| e.to_string())
        }),
        _ => decode::<FailedRequest>(&body).and_then(|r| {
            let s = refs
                .get_mut(&r.ref_id)
                .ok_or_else(|| format!("{} is not shared with peers", r.ref_id))?;
            let kind = if r.lied {
                FailureKind::Lied
            } else {
                FailureKind::Failed
            };
            let reason: String = r.reason.chars().take(256).collect();
            tracing::warn!(receiver = %origin, lied = r.lied, %reason, "a receiver's peer source failed");
            s.source_failed(origin, kind, r.position, now)
                .map(ScheduleReply::pull)
                .map_err(|e| e.to_string())
        }),
    };
    log_events(refs);
    reply(answer.unwrap_or_else(ScheduleReply::refused))
}

/// Fire the timeouts of the schedulers that are due at `now` and log what they did.
pub(crate) fn fire_timeouts(refs: &mut HashMap<String, Scheduler>, now: Instant) {
    for s in refs.values_mut() {
        if s.poll_timeout().is_some_and(|d| d <= now) {
            s.handle_timeout(now);
        }
    }
    log_events(refs);
}

fn log_events(refs: &mut HashMap<String, Scheduler>) {
    for s in refs.values_mut() {
        while let Some(ev) = s.poll_event() {
            tracing::info!(event = ?ev, "peer schedule");
        }
    }
}

/// The timer task: fire the schedulers' timeouts when due. It holds the coordinator only
/// weakly, so dropping every handle ends it.
async fn drive(weak: Weak<Inner>, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        let deadline = {
            let Some(inner) = weak.upgrade() else { break };
            let d = lock(&inner.refs)
                .values()
                .filter_map(Scheduler::poll_timeout)
                .min();
            d
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => continue,
            _ = sleep => {}
        }
        let Some(inner) = weak.upgrade() else { break };
        fire_timeouts(&mut lock(&inner.refs), now());
    }
}
