//! # ferry-core — the sans-IO engine of the Ferry download service
//!
//! This crate holds every rule of NVFlare's Download Service (transactions, refs, the
//! per-(ref, receiver) lifecycle, confirm/cancel, budgets, settlement, outcomes) and the
//! receiver's request window, as deterministic state machines. It performs no I/O, spawns no
//! threads and never reads a clock: every state-changing call takes `now: Instant`,
//! `poll_timeout()` tells the caller when to call `handle_timeout(now)` next, and outputs are
//! pulled with `poll_event()` (the quinn-proto way).
//!
//! The contracts shared with the other layers live here too:
//! - [`Downloadable`]: the sender-side object that produces chunks from a [`State`];
//! - [`Consumer`]: the receiver-side object that consumes them;
//! - [`ChunkData`]: chunk bytes (`bytes::Bytes` or a list of them, msgpack `bin` on the wire).

pub mod chunk;
pub mod consumer;
pub mod downloadable;
pub mod ids;
pub mod state;
pub mod status;

pub use chunk::ChunkData;
pub use consumer::{ConsumeError, Consumer};
pub use downloadable::{Downloadable, PlanLayout, ProduceError, Produced, TransferPlan};
pub use ids::{validate_fqcn, FqcnError, RefId, TxId};
pub use state::{State, StateError};
pub use status::{DoneStatus, DownloadStatus};
