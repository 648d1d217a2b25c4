//! The receiver's record of failed sources (NVFlare's `notify_source_failure` and
//! `_handle_source_failure`, on topic `download_service__source_failure`): a parent cell tells
//! its downstream receivers that a source it owns (a child FQCN) died; the receiver keeps a
//! failure tombstone per (source_fqcn, ref_id) so matching downloads fail at once — the ones in
//! progress and the ones started later — instead of retrying for minutes.

use crate::message::{Reply, SourceFailureNotice};
use crate::time::Clock;
use crate::ttl::TtlMap;
use crate::{validate_fqcn, Error, RefId, ReturnCode};
use std::time::{Duration, Instant};

/// NVFlare's failure-tombstone TTL.
pub const SOURCE_FAILURE_TTL: Duration = Duration::from_secs(1800);
/// NVFlare's cap on failure tombstones (FIFO eviction).
pub const MAX_SOURCE_FAILURES: usize = 4096;
/// Most ref ids one notice may carry.
pub const MAX_NOTICE_REF_IDS: usize = 256;
/// Reasons are truncated to this many characters.
pub const MAX_REASON_CHARS: usize = 1024;

/// A source failure that was recorded: fail every download of `ref_id` from `source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFailure {
    /// The failed source FQCN.
    pub source: String,
    /// The ref it was serving.
    pub ref_id: RefId,
    /// Why (truncated).
    pub reason: String,
}

/// Failure tombstones keyed by (source FQCN, ref id), bounded by TTL and cap.
#[derive(Debug)]
pub struct SourceFailureTable {
    /// (source, rid) -> reason.
    map: TtlMap<(String, String), String>,
    /// Monotonic virtual time.
    clock: Clock,
}

impl Default for SourceFailureTable {
    fn default() -> Self {
        Self::new()
    }
}

impl SourceFailureTable {
    /// A table with NVFlare's limits (TTL 1800 s, 4096 entries).
    pub fn new() -> Self {
        Self::with_limits(SOURCE_FAILURE_TTL, MAX_SOURCE_FAILURES)
    }

    /// A table with custom limits.
    pub fn with_limits(ttl: Duration, cap: usize) -> Self {
        Self {
            map: TtlMap::new(ttl, cap),
            clock: Clock::default(),
        }
    }

    /// Validate and record a notice from `origin` (the request's `cn__origin`). Rejected unless
    /// origin and source are valid FQCNs, origin is the FQCN parent of the source, the ref list
    /// has 1..=256 non-empty ids and the reason is non-empty. Returns the recorded failures so
    /// the caller can fail matching downloads in progress.
    pub fn record_notice(
        &mut self,
        origin: &str,
        notice: &SourceFailureNotice,
        now: Instant,
    ) -> Result<Vec<SourceFailure>, Error> {
        let now = self.clock.advance(now);
        let bad = |why: String| Err(Error::InvalidNotice(why));
        if let Err(e) = validate_fqcn(origin) {
            return bad(format!("origin: {e}"));
        }
        if let Err(e) = validate_fqcn(&notice.source_fqcn) {
            return bad(format!("source_fqcn: {e}"));
        }
        match notice.source_fqcn.rsplit_once('.') {
            Some((parent, _)) if parent == origin => {}
            _ => {
                return bad(format!(
                    "{origin} is not the parent of {}",
                    notice.source_fqcn
                ))
            }
        }
        if notice.ref_ids.is_empty() || notice.ref_ids.len() > MAX_NOTICE_REF_IDS {
            return bad(format!(
                "ref_ids must hold 1..={MAX_NOTICE_REF_IDS} ids, got {}",
                notice.ref_ids.len()
            ));
        }
        if notice.ref_ids.iter().any(String::is_empty) {
            return bad("empty ref id".into());
        }
        if notice.reason.is_empty() {
            return bad("empty reason".into());
        }
        let reason: String = notice.reason.chars().take(MAX_REASON_CHARS).collect();
        tracing::warn!(source = %notice.source_fqcn, refs = notice.ref_ids.len(), reason = %reason, "source failure recorded");
        let mut out = Vec::with_capacity(notice.ref_ids.len());
        for rid in &notice.ref_ids {
            self.map.insert(
                (notice.source_fqcn.clone(), rid.clone()),
                reason.clone(),
                now,
            );
            out.push(SourceFailure {
                source: notice.source_fqcn.clone(),
                ref_id: RefId::new(rid.clone()),
                reason: reason.clone(),
            });
        }
        Ok(out)
    }

    /// Decode and record a topic-B payload; returns the reply to send (`ok`, or
    /// `invalid_request` with the reason) and the recorded failures.
    pub fn handle_payload(
        &mut self,
        origin: &str,
        payload: &[u8],
        now: Instant,
    ) -> (Reply, Vec<SourceFailure>) {
        let res = SourceFailureNotice::decode(payload)
            .map_err(Error::InvalidNotice)
            .and_then(|n| self.record_notice(origin, &n, now));
        match res {
            Ok(v) => (Reply::ack(), v),
            Err(e) => {
                tracing::warn!(origin, error = %e, "source-failure notice refused");
                (
                    Reply::error(ReturnCode::InvalidRequest, e.to_string()),
                    Vec::new(),
                )
            }
        }
    }

    /// The failure reason recorded for (source, ref), if any and not expired. Check it before
    /// starting a download: a recorded failure fails it before the first request.
    #[must_use = "a source reported failed must fail its downloads"]
    pub fn check(&mut self, source: &str, ref_id: &RefId, now: Instant) -> Option<String> {
        let now = self.clock.advance(now);
        self.map
            .get(&(source.to_string(), ref_id.as_str().to_string()), now)
            .cloned()
    }

    /// When the oldest record expires.
    #[must_use = "expired records are dropped only when handle_timeout is called"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.map.next_expiry()
    }

    /// Drop expired records.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.advance(now);
        self.map.expire(now);
    }

    /// Number of records held (at most the cap).
    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no record is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(src: &str, rids: &[&str], reason: &str) -> SourceFailureNotice {
        SourceFailureNotice {
            source_fqcn: src.into(),
            ref_ids: rids.iter().map(|s| s.to_string()).collect(),
            reason: reason.into(),
        }
    }

    #[test]
    fn records_exact_source_and_ref_and_expires_after_ttl() {
        let t0 = Instant::now();
        let mut t = SourceFailureTable::new();
        let got = t
            .record_notice("site-1", &notice("site-1.job", &["R1", "R2"], "died"), t0)
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            t.check("site-1.job", &RefId::new("R1"), t0).as_deref(),
            Some("died")
        );
        assert_eq!(
            t.check("site-1.job", &RefId::new("R3"), t0),
            None,
            "exact to the rid"
        );
        assert_eq!(
            t.check("site-2.job", &RefId::new("R1"), t0),
            None,
            "exact to the source"
        );
        let exp = t.poll_timeout().unwrap();
        assert_eq!(exp, t0 + SOURCE_FAILURE_TTL + Duration::from_nanos(1));
        t.handle_timeout(exp);
        assert!(t.is_empty());
    }

    #[test]
    fn notices_are_validated() {
        let t0 = Instant::now();
        let mut t = SourceFailureTable::new();
        let many: Vec<String> = (0..257).map(|i| format!("R{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let cases = [
            ("bad origin", notice("x.job", &["R1"], "r")),
            ("site-1", notice("site-2.job", &["R1"], "r")),
            ("site-1", notice("site-1", &["R1"], "r")),
            ("site-1", notice("site-1.job.sub", &["R1"], "r")),
            ("site-1", notice("site-1.job", &[], "r")),
            ("site-1", notice("site-1.job", &many, "r")),
            ("site-1", notice("site-1.job", &[""], "r")),
            ("site-1", notice("site-1.job", &["R1"], "")),
            ("site-1", notice("site-1..job", &["R1"], "r")),
        ];
        for (origin, n) in cases {
            assert!(
                matches!(
                    t.record_notice(origin, &n, t0),
                    Err(Error::InvalidNotice(_))
                ),
                "{origin} {n:?}"
            );
        }
        assert!(t.is_empty());
        let (r, v) = t.handle_payload("site-1", &[0x93, 1, 2, 3], t0);
        assert_eq!(r.rc, ReturnCode::InvalidRequest);
        assert!(v.is_empty());
        let long = "x".repeat(5000);
        let (r, v) = t.handle_payload("site-1", &notice("site-1.job", &["R1"], &long).encode(), t0);
        assert_eq!(r.rc, ReturnCode::Ok);
        assert_eq!(v[0].reason.len(), MAX_REASON_CHARS);
    }

    #[test]
    fn table_is_capped_fifo() {
        let t0 = Instant::now();
        let mut t = SourceFailureTable::with_limits(SOURCE_FAILURE_TTL, 3);
        for i in 0..5 {
            t.record_notice("p", &notice("p.c", &[&format!("R{i}")], "r"), t0)
                .unwrap();
        }
        assert_eq!(t.len(), 3);
        assert!(t.check("p.c", &RefId::new("R0"), t0).is_none());
        assert!(t.check("p.c", &RefId::new("R4"), t0).is_some());
    }
}
