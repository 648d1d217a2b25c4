//! Peer-assisted mode: receivers that accept connections serve what they have to other
//! receivers, and the sender schedules who pulls from whom, so that its own egress stays near
//! one copy of the object (see [`ferry_core::peers`] for the scheduling).
//!
//! - Sender: a [`PeerCoordinator`] on its cell, [`schedule`](PeerCoordinator::schedule)d for
//!   each ref to share.
//! - Receiver: [`fetch_with_peers`] on a service whose cell listens where other receivers
//!   can reach it; the returned [`Seeding`] keeps serving until the sender releases it.
//!
//! Integrity never depends on a peer: every receiver checks the ticket's size and BLAKE3
//! digest, and one whose data fails it reports its source (banned by the scheduler) and starts
//! over. Without TLS a peer's name is only a name, as the sender's is; with TLS a receiver
//! connecting to a peer checks its certificate exactly as it checks the sender's.

mod coordinator;
mod have;
mod part_source;
mod share;

#[cfg(feature = "fuzzing")]
pub(crate) use coordinator::{answer as answer_request, fire_timeouts};
pub use coordinator::{PeerCoordinator, MAX_SHARED_REFS};
pub use ferry_core::peers::{PeerServed, ReceiverSources, SchedulerConfig, SourceReport};
pub use part_source::MAX_WAIT;
#[cfg(feature = "fuzzing")]
pub(crate) use share::read_reply;
pub use share::{fetch_with_peers, PeerReport, Seeding, ShareOptions};
