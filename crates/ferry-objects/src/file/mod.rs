//! Files: a producer that serves a file by positioned reads from one open handle, and a
//! consumer that writes chunks at their offsets into `NAME.part`, verifies, and renames.

mod consumer;
mod digest_cache;
mod producer;
mod record;
mod resume;
#[cfg(test)]
mod tests;

pub use consumer::{FileConsumer, FileConsumerBuilder, DEFAULT_SYNC_EVERY};
pub use producer::{FileObject, FileObjectBuilder};
