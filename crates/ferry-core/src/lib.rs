//! # ferry-core — the sans-IO engine of the Ferry download service
//!
//! This crate holds every rule of NVFlare's Download Service (transactions, refs, the
//! per-(ref, receiver) lifecycle, confirm/cancel, budgets, settlement, outcomes) and the
//! receiver's request window, as deterministic state machines. It performs no I/O, spawns no
//! threads and never reads a clock: every state-changing call takes `now: Instant`,
//! `poll_timeout()` tells the caller when to call `handle_timeout(now)` next, and outputs are
//! pulled with `poll_output()` (or `poll_event()`) / `poll_action()` (the quinn-proto way).
//!
//! - [`Service`]: the producer engine (sender side).
//! - [`Download`]: the receiver engine for one object.
//! - [`SourceFailureTable`]: the receiver's record of failed sources.
//! - [`peers`]: the sender's scheduler of peer-assisted fan-out.
//! - [`message`]: the wire payloads, byte-compatible with NVFlare 2.9.
//! - [`testing`]: a seeded, single-threaded simulated network driving real objects, for tests
//!   of this crate and of crates built on it.
//!
//! The contracts shared with the other layers live here too:
//! - [`Downloadable`]: the sender-side object that produces chunks from a [`State`];
//! - [`Consumer`]: the receiver-side object that consumes them;
//! - [`ChunkData`]: chunk bytes (`bytes::Bytes` or a list of them, msgpack `bin` on the wire).

pub mod chunk;
pub mod consumer;
pub mod download;
pub mod downloadable;
pub mod error;
pub mod expected;
pub mod ids;
pub mod message;
pub mod outcome;
pub mod peers;
pub mod plan;
pub mod progress;
pub mod rc;
pub mod refusal;
pub mod service;
pub mod source_failure;
pub mod state;
pub mod status;
pub mod testing;
mod time;
mod ttl;

pub use chunk::{ChunkData, FileChunk};
pub use consumer::{ConsumeError, Consumer};
pub use download::{Action, Download, DownloadConfig, DownloadFailure, RequestId};
pub use downloadable::{Downloadable, PlanLayout, ProduceError, Produced, TransferPlan};
pub use error::Error;
pub use expected::ExpectedReceivers;
pub use ids::{validate_fqcn, FqcnError, RefId, TxId};
pub use outcome::{OutcomeStatus, TransferOutcome};
pub use plan::{PlanError, WirePlan};
pub use progress::{ProgressEvent, ProgressState};
pub use rc::ReturnCode;
pub use refusal::Refusal;
pub use service::{
    FinalCause, Handled, HookCall, PendingConfirm, PullTicket, Service, ServiceConfig,
    ServiceEvent, ServiceOutput, TransactionInfo, TxConfig,
};
pub use source_failure::{SourceFailure, SourceFailureTable};
pub use state::{State, StateError};
pub use status::{DoneStatus, DownloadStatus};
pub use time::strict_deadline;
