//! Status vocabularies shared by the engines, the hooks and the wire.

use serde::{Deserialize, Serialize};

/// The final status of one receiver on one ref (NVFlare `DownloadStatus`; the strings are the
/// wire values of the `confirm` key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadStatus {
    /// The receiver got the whole object (and, if it confirms, said so).
    Success,
    /// The receiver failed, cancelled, or was failed by a budget.
    Failed,
}

impl DownloadStatus {
    /// The wire string (`"success"` / `"failed"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
        }
    }
}

/// How a transaction ended (NVFlare's raw `done_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoneStatus {
    /// Every ref reached completion (count or identity mode).
    Finished,
    /// No activity for longer than the transaction timeout.
    Timeout,
    /// Deleted by its owner, or the service shut down.
    Deleted,
}

impl DoneStatus {
    /// The string NVFlare uses (`"finished"`, `"timeout"`, `"deleted"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Finished => "finished",
            Self::Timeout => "timeout",
            Self::Deleted => "deleted",
        }
    }
}
