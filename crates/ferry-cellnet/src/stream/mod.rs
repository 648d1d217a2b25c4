//! The `sm__*` byte-stream protocol (f3-wire.md §4) as two sans-IO state machines, in the
//! style of ferry-core's engines: [`send::SendStream`] cuts a blob in chunks and lets them
//! go as the receiver's ACKs open the window; [`recv::Reassembler`] puts chunks back in
//! order (duplicates, reordering, late retries), enforces the limits, decides the ACKs and
//! drops idle streams. Neither reads a clock nor touches a socket: every input takes `now`,
//! outputs are polled, and the tests drive them on virtual time over a lossy, duplicating,
//! reordering link. The cell runs them on connections (`streams.rs`).

pub(crate) mod recv;
pub(crate) mod send;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
