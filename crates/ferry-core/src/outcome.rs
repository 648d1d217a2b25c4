//! The aggregate result of a transaction ([`TransferOutcome`]), computed exactly as NVFlare's
//! `compute_transfer_outcome` (`nvflare.fuel.f3.streaming.download_service`) does, in its
//! order: all receivers succeeded completes (whatever ended the transaction); otherwise a
//! deleted transaction aborts, a timed-out one fails, and a finished one fails for an unknown
//! receiver count, no objects, or a failed receiver. (NVFlare's first branch, an unknown done
//! status, cannot happen here: [`DoneStatus`] has three values.)

use crate::{DoneStatus, DownloadStatus, ExpectedReceivers, RefId, TxId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// The verdict of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutcomeStatus {
    /// Every expected receiver confirmed every object.
    Completed,
    /// At least one expected receiver did not (or the count is unknown).
    Failed,
    /// Deleted by its owner before it completed.
    Aborted,
}

impl OutcomeStatus {
    /// NVFlare's string (`"completed"`, `"failed"`, `"aborted"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
        }
    }
}

/// Why the outcome is what it is (NVFlare's `reason` strings).
pub mod reason {
    /// Every expected receiver succeeded on every ref.
    pub const ALL_RECEIVERS_SUCCEEDED: &str = "all_receivers_succeeded";
    /// Deleted (or shut down) before completion.
    pub const DELETED: &str = "deleted";
    /// Expired by inactivity.
    pub const TIMEOUT: &str = "timeout";
    /// Finished without a known receiver count.
    pub const UNKNOWN_RECEIVER_COUNT: &str = "unknown_receiver_count";
    /// Finished with no objects.
    pub const NO_OBJECTS: &str = "no_objects";
    /// Finished with at least one receiver failed.
    pub const RECEIVER_FAILED: &str = "receiver_failed";
}

/// The outcome of one transaction. A value: later changes to the engine never alter it.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferOutcome {
    /// The transaction.
    pub tx_id: TxId,
    /// The verdict.
    pub status: OutcomeStatus,
    /// Why (see [`reason`]).
    pub reason: &'static str,
    /// How the transaction ended.
    pub done_status: DoneStatus,
    /// Expected receivers (0 = unknown).
    pub num_receivers: usize,
    /// Per ref, in the order they were added: the FINAL status of each receiver.
    /// Provisional (unconfirmed) receivers have no entry (fail-closed).
    pub refs: Vec<(RefId, BTreeMap<String, DownloadStatus>)>,
    /// When the outcome was recorded (settlement time).
    pub timestamp: Instant,
    /// Quorum size, if one was set.
    pub min_receivers: Option<usize>,
    /// The declared receiver identities, if any.
    pub receiver_ids: Option<Vec<String>>,
}

impl TransferOutcome {
    /// Compute the outcome (§3.5, evaluated in order). Branch 1 of §3.5 (an unknown
    /// done_status) cannot occur: [`DoneStatus`] is a closed enum.
    pub(crate) fn compute(
        tx_id: TxId,
        done_status: DoneStatus,
        expected: &ExpectedReceivers,
        min_receivers: Option<usize>,
        refs: Vec<(RefId, BTreeMap<String, DownloadStatus>)>,
        timestamp: Instant,
    ) -> Self {
        let num_receivers = expected.count();
        let receiver_ids = expected.ids().map(<[String]>::to_vec);
        let all_ok = num_receivers > 0
            && !refs.is_empty()
            && match &receiver_ids {
                Some(ids) => refs.iter().all(|(_, m)| {
                    ids.iter()
                        .all(|id| m.get(id) == Some(&DownloadStatus::Success))
                }),
                None => refs.iter().all(|(_, m)| {
                    m.len() >= num_receivers && m.values().all(|s| *s == DownloadStatus::Success)
                }),
            };
        let (status, why) = if all_ok {
            (OutcomeStatus::Completed, reason::ALL_RECEIVERS_SUCCEEDED)
        } else {
            match done_status {
                DoneStatus::Deleted => (OutcomeStatus::Aborted, reason::DELETED),
                DoneStatus::Timeout => (OutcomeStatus::Failed, reason::TIMEOUT),
                DoneStatus::Finished if num_receivers == 0 => {
                    (OutcomeStatus::Failed, reason::UNKNOWN_RECEIVER_COUNT)
                }
                DoneStatus::Finished if refs.is_empty() => {
                    (OutcomeStatus::Failed, reason::NO_OBJECTS)
                }
                DoneStatus::Finished => (OutcomeStatus::Failed, reason::RECEIVER_FAILED),
            }
        };
        Self {
            tx_id,
            status,
            reason: why,
            done_status,
            num_receivers,
            refs,
            timestamp,
            min_receivers,
            receiver_ids,
        }
    }

    /// Whether every expected receiver succeeded on every ref.
    pub fn completed(&self) -> bool {
        self.status == OutcomeStatus::Completed
    }

    /// k-of-N: at least `min_receivers` (declared, if declared) receivers succeeded on EVERY
    /// ref. Without a quorum this is [`completed`](Self::completed); without refs, `false`.
    pub fn quorum_met(&self) -> bool {
        let Some(k) = self.min_receivers else {
            return self.completed();
        };
        let mut iter = self.refs.iter().map(|(_, m)| {
            m.iter()
                .filter(|(_, s)| **s == DownloadStatus::Success)
                .map(|(r, _)| r.as_str())
                .collect::<BTreeSet<&str>>()
        });
        let Some(mut common) = iter.next() else {
            return false;
        };
        for set in iter {
            common.retain(|r| set.contains(r));
        }
        if let Some(ids) = &self.receiver_ids {
            common.retain(|r| ids.iter().any(|id| id == r));
        }
        common.len() >= k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DownloadStatus::{Failed, Success};

    fn refs(rows: &[&[(&str, DownloadStatus)]]) -> Vec<(RefId, BTreeMap<String, DownloadStatus>)> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    RefId::new(format!("R{i}")),
                    r.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                )
            })
            .collect()
    }

    fn out(
        done: DoneStatus,
        n: usize,
        ids: Option<&[&str]>,
        min: Option<usize>,
        r: &[&[(&str, DownloadStatus)]],
    ) -> TransferOutcome {
        let expected = ExpectedReceivers::from_nvflare(
            n,
            ids.map(|i| i.iter().map(|s| s.to_string()).collect()),
        )
        .unwrap();
        TransferOutcome::compute(
            TxId::new("T"),
            done,
            &expected,
            min,
            refs(r),
            Instant::now(),
        )
    }

    #[test]
    fn s3_5_branch2_all_succeeded_wins_over_any_done_status() {
        for done in [
            DoneStatus::Finished,
            DoneStatus::Timeout,
            DoneStatus::Deleted,
        ] {
            let o = out(done, 2, None, None, &[&[("a", Success), ("b", Success)]]);
            assert!(o.completed(), "{done:?}");
            assert_eq!(o.reason, reason::ALL_RECEIVERS_SUCCEEDED);
        }
        // identity mode: unexpected receivers don't count, declared ones must all succeed
        let o = out(
            DoneStatus::Finished,
            1,
            Some(&["a"]),
            None,
            &[&[("a", Success), ("x", Failed)]],
        );
        assert!(o.completed());
    }

    #[test]
    fn s3_5_branch3_deleted_is_aborted() {
        let o = out(DoneStatus::Deleted, 2, None, None, &[&[("a", Success)]]);
        assert_eq!(
            (o.status, o.reason),
            (OutcomeStatus::Aborted, reason::DELETED)
        );
    }

    #[test]
    fn s3_5_branch4_timeout_is_failed() {
        let o = out(DoneStatus::Timeout, 1, None, None, &[&[]]);
        assert_eq!(
            (o.status, o.reason),
            (OutcomeStatus::Failed, reason::TIMEOUT)
        );
    }

    #[test]
    fn s3_5_branch5_finished_failures() {
        let o = out(DoneStatus::Finished, 0, None, None, &[&[("a", Success)]]);
        assert_eq!(o.reason, reason::UNKNOWN_RECEIVER_COUNT);
        let o = out(DoneStatus::Finished, 1, None, None, &[]);
        assert_eq!(o.reason, reason::NO_OBJECTS);
        let o = out(
            DoneStatus::Finished,
            2,
            None,
            None,
            &[&[("a", Success), ("b", Failed)]],
        );
        assert_eq!(
            (o.status, o.reason),
            (OutcomeStatus::Failed, reason::RECEIVER_FAILED)
        );
        // count mode needs every recorded status to be success, unexpected ones too
        let o = out(
            DoneStatus::Finished,
            1,
            None,
            None,
            &[&[("a", Success), ("b", Failed)]],
        );
        assert!(!o.completed());
    }

    #[test]
    fn quorum_is_the_intersection_over_refs_of_declared_successes() {
        let rows: &[&[(&str, DownloadStatus)]] = &[
            &[("a", Success), ("b", Success), ("c", Failed)],
            &[
                ("a", Success),
                ("b", Failed),
                ("c", Success),
                ("x", Success),
            ],
        ];
        let o = out(
            DoneStatus::Finished,
            3,
            Some(&["a", "b", "c"]),
            Some(1),
            rows,
        );
        assert!(!o.completed());
        assert!(o.quorum_met());
        let o = out(
            DoneStatus::Finished,
            3,
            Some(&["a", "b", "c"]),
            Some(2),
            rows,
        );
        assert!(!o.quorum_met());
        let o = out(
            DoneStatus::Finished,
            3,
            Some(&["a", "b", "c"]),
            Some(1),
            &[],
        );
        assert!(!o.quorum_met());
        let o = out(DoneStatus::Finished, 1, None, None, &[&[("a", Success)]]);
        assert_eq!(o.quorum_met(), o.completed());
    }
}
