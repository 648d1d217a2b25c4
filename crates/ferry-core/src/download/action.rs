//! What the engine asks its caller to do ([`Action`]), and the id that ties a sent request to
//! its reply ([`RequestId`]).

use crate::message::{CancelRequest, ConfirmRequest, PullRequest};
use crate::{ChunkData, DownloadFailure, ProgressEvent, State, TransferPlan};

/// Identifies one request sent by a [`Download`](crate::Download); a retry gets a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Something the caller must do (see the [module docs](crate::download)).
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this pull request to the source; report the result with the same id.
    Send {
        /// Correlation id.
        id: RequestId,
        /// The request.
        request: PullRequest,
    },
    /// Call `consumer.plan_received(&plan)`, then
    /// [`Download::plan_result`](crate::Download::plan_result).
    CheckPlan(TransferPlan),
    /// Call `consumer.consume(ref_id, &state, data)`, then
    /// [`Download::consumed`](crate::Download::consumed).
    Consume {
        /// Chunk index (0-based), to report back.
        seq: u64,
        /// The state the producer returned with the chunk.
        state: State,
        /// The chunk.
        data: ChunkData,
    },
    /// Call `consumer.completed(ref_id)`, then
    /// [`Download::completion_result`](crate::Download::completion_result).
    Complete,
    /// Send this confirm (fire-and-forget).
    SendConfirm(ConfirmRequest),
    /// Send this cancel (fire-and-forget).
    SendCancel(CancelRequest),
    /// A progress report.
    Progress(ProgressEvent),
    /// The download is over; on `Err` call `consumer.failed(ref_id, &reason.to_string())`.
    Finished(Result<(), DownloadFailure>),
}
