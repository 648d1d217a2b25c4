//! Files: a producer that serves a file by positioned reads from one open handle, and a
//! consumer that writes chunks at their offsets into `NAME.part`, verifies, and renames.
//!
//! The consumer's parts, top down: `consumer` (the builder and the write path) uses `part`
//! (`NAME.part` and its resume record; `resume` and `record` below it) and `content` (what the
//! bytes are held to: the pin, the sender's plan, the streaming digest).

mod consumer;
mod content;
mod digest_cache;
mod nowait;
mod part;
mod producer;
mod record;
mod resume;
#[cfg(test)]
mod tests;

pub use consumer::{FileConsumer, FileConsumerBuilder, DEFAULT_SYNC_EVERY};
pub use nowait::{read_exact_at_nowait, NoWait};
pub use producer::{FileObject, FileObjectBuilder};
