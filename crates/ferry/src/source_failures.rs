//! The receiving side's state: sources announced dead by their parents (topic B), and the
//! downloads in progress to interrupt when their source is one of them.
//!
//! A parent cell that loses a child serving refs sends a source-failure notice to the
//! receivers; ferry-core's [`SourceFailureTable`] validates and records it (TTL and cap, as
//! NVFlare's), and every download of a named (source, ref) fails at once instead of sitting in
//! retries — one in progress through its [`SourceWatch`], one started later because the record
//! is checked first. Expired records are dropped whenever the table is used; the table's cap
//! bounds it between uses, so no timer is needed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use ferry_core::message::Reply;
use ferry_core::{RefId, SourceFailureTable};
use tokio::sync::watch;

use crate::runtime::lock;

/// (source FQCN, ref id) of a watched download.
type SourceKey = (String, String);

/// Recorded source failures and the downloads watching for one.
#[derive(Default)]
pub(crate) struct SourceFailures {
    table: Mutex<SourceFailureTable>,
    /// One sender per download in progress; a notice for its key sends the reason.
    watches: Mutex<HashMap<SourceKey, Vec<watch::Sender<Option<String>>>>>,
}

impl SourceFailures {
    /// Watch `(source, ref_id)` for the length of one download. The watch first reports a
    /// failure recorded before the download started ([`SourceWatch::recorded`]), then any
    /// notice that arrives while it lives ([`SourceWatch::failed`]).
    pub(crate) fn watch(&self, source: &str, ref_id: &RefId, now: Instant) -> SourceWatch<'_> {
        let key = (source.to_string(), ref_id.as_str().to_string());
        let (tx, rx) = watch::channel(None);
        // Registered before the table is checked: a notice recorded in between reaches the
        // watch, so it cannot fall between the two.
        lock(&self.watches).entry(key.clone()).or_default().push(tx);
        let recorded = {
            let mut table = lock(&self.table);
            table.handle_timeout(now);
            table.check(source, ref_id, now)
        };
        SourceWatch {
            owner: self,
            key,
            rx: Some(rx),
            recorded,
        }
    }

    /// Handle a topic-B payload from `origin`: record what it announces, interrupt the
    /// downloads it names, and return the reply (`ok`, or `invalid_request` saying why).
    pub(crate) fn handle_notice(&self, origin: &str, body: &Bytes, now: Instant) -> Reply {
        let (reply, failed) = {
            let mut table = lock(&self.table);
            table.handle_timeout(now);
            table.handle_payload(origin, body, now)
        };
        let watches = lock(&self.watches);
        for f in failed {
            let key = (f.source, f.ref_id.as_str().to_string());
            for w in watches.get(&key).into_iter().flatten() {
                let _ = w.send(Some(f.reason.clone()));
            }
        }
        reply
    }

    /// Fail every watched download with `reason` (the service shuts down).
    pub(crate) fn close(&self, reason: &str) {
        for (_, ws) in lock(&self.watches).drain() {
            for w in ws {
                let _ = w.send(Some(reason.to_string()));
            }
        }
    }

    /// Downloads being watched (for tests).
    #[cfg(test)]
    fn watched(&self) -> usize {
        lock(&self.watches).values().map(Vec::len).sum()
    }
}

/// One download's watch on its source; unregistered when dropped.
pub(crate) struct SourceWatch<'a> {
    owner: &'a SourceFailures,
    key: SourceKey,
    /// `None` only while dropping (so the sender is seen closed).
    rx: Option<watch::Receiver<Option<String>>>,
    recorded: Option<String>,
}

impl SourceWatch<'_> {
    /// The reason of a failure recorded before the download started (once).
    pub(crate) fn recorded(&mut self) -> Option<String> {
        self.recorded.take()
    }

    /// Resolves with the reason when a notice names this download's source and ref (or the
    /// service shuts down); pending otherwise. Cancel-safe.
    pub(crate) async fn failed(&mut self) -> String {
        if let Some(rx) = self.rx.as_mut() {
            while rx.changed().await.is_ok() {
                if let Some(reason) = rx.borrow_and_update().clone() {
                    return reason;
                }
            }
        }
        std::future::pending().await
    }
}

impl Drop for SourceWatch<'_> {
    fn drop(&mut self) {
        // Close our receiver first, so our sender is among the closed ones removed.
        drop(self.rx.take());
        let mut watches = lock(&self.owner.watches);
        if let Some(list) = watches.get_mut(&self.key) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                watches.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::message::{encode, SourceFailureNotice};
    use ferry_core::ReturnCode;

    fn notice(source: &str, rid: &str) -> Bytes {
        Bytes::from(encode(&SourceFailureNotice {
            source_fqcn: source.into(),
            ref_ids: vec![rid.into()],
            reason: "job died".into(),
        }))
    }

    #[tokio::test]
    async fn a_notice_interrupts_the_watching_download_and_a_later_one_sees_the_record() {
        let f = SourceFailures::default();
        let t0 = Instant::now();
        let rid = RefId::new("R1");
        let mut w = f.watch("site-1.job", &rid, t0);
        assert_eq!(w.recorded(), None);
        let mut other = f.watch("site-1.job", &RefId::new("R2"), t0);
        let reply = f.handle_notice("site-1", &notice("site-1.job", "R1"), t0);
        assert_eq!(reply.rc, ReturnCode::Ok);
        assert_eq!(w.failed().await, "job died");
        let quiet = tokio::time::timeout(std::time::Duration::ZERO, other.failed()).await;
        assert!(quiet.is_err(), "another ref is not interrupted");
        let mut later = f.watch("site-1.job", &rid, t0);
        assert_eq!(later.recorded().as_deref(), Some("job died"));
    }

    #[test]
    fn a_notice_from_a_cell_that_is_not_the_parent_is_refused() {
        let f = SourceFailures::default();
        let reply = f.handle_notice("site-2", &notice("site-1.job", "R1"), Instant::now());
        assert_eq!(reply.rc, ReturnCode::InvalidRequest);
    }

    #[test]
    fn an_ended_download_leaves_no_watch_behind() {
        let f = SourceFailures::default();
        let t0 = Instant::now();
        let a = f.watch("site-1.job", &RefId::new("R1"), t0);
        let b = f.watch("site-1.job", &RefId::new("R1"), t0);
        assert_eq!(f.watched(), 2);
        drop(a);
        assert_eq!(f.watched(), 1);
        drop(b);
        assert_eq!(f.watched(), 0);
    }

    #[tokio::test]
    async fn closing_fails_every_watched_download() {
        let f = SourceFailures::default();
        let mut w = f.watch("server", &RefId::new("R1"), Instant::now());
        f.close("download service shut down");
        assert_eq!(w.failed().await, "download service shut down");
    }
}
