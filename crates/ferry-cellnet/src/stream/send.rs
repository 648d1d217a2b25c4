//! The sending side of an `sm__` stream, sans-IO: which chunk may go next (a window driven by
//! the receiver's ACKs), what the receiver's ERROR means, and when the sender gives up
//! because ACKs stopped coming.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// One chunk to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutChunk {
    /// `sm__sq`.
    pub seq: u64,
    /// `sm__os`: bytes of the blob before this chunk.
    pub offset: u64,
    /// The last chunk.
    pub last: bool,
    /// The chunk's bytes (zero-copy slices of the payload).
    pub parts: Vec<Bytes>,
    /// Bytes in `parts`.
    pub len: usize,
}

/// Why a stream could not be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The receiver aborted the stream (its `sm__em`).
    Aborted(String),
    /// The window was full and no ACK moved it for the idle timeout.
    Stalled(Duration),
}

/// A stream this cell sends.
#[derive(Debug)]
pub(crate) struct SendStream {
    /// Chunks not handed out yet, in order.
    parts: VecDeque<Vec<Bytes>>,
    next_seq: u64,
    /// Bytes handed out so far: the offset of the next chunk.
    sent: u64,
    /// Bytes the receiver acknowledged (ACKs are cumulative; older ones are ignored).
    acked: u64,
    /// Unacknowledged bytes allowed before the next chunk waits (NVFlare: the sender blocks
    /// while `sent − acked > window`).
    window: u64,
    /// How long the sender waits for an ACK that moves a full window.
    idle: Duration,
    /// Since when the sender waits on a full window, or saw the last ACK progress while
    /// waiting: the idle timeout counts from here. `None` while it is not waiting.
    waiting_since: Option<Instant>,
    failed: Option<SendError>,
}

impl SendStream {
    /// A stream of `segments` cut in chunks of `chunk_size` bytes (at least one chunk, which
    /// may be empty).
    pub fn new(segments: Vec<Bytes>, chunk_size: usize, window: u64, idle: Duration) -> Self {
        SendStream {
            parts: chunks(segments, chunk_size.max(1)).into(),
            next_seq: 0,
            sent: 0,
            acked: 0,
            window,
            idle,
            waiting_since: None,
            failed: None,
        }
    }

    /// The next chunk, if the window lets it go now. `None` when the stream is done,
    /// failed, or waiting for ACKs.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<OutChunk> {
        if self.failed.is_some() || self.parts.is_empty() {
            return None;
        }
        if self.sent.saturating_sub(self.acked) > self.window {
            self.waiting_since.get_or_insert(now);
            return None;
        }
        self.waiting_since = None;
        let parts = self.parts.pop_front()?;
        let len = parts.iter().map(Bytes::len).sum::<usize>();
        let c = OutChunk {
            seq: self.next_seq,
            offset: self.sent,
            last: self.parts.is_empty(),
            parts,
            len,
        };
        self.next_seq += 1;
        self.sent += len as u64;
        Some(c)
    }

    /// The receiver consumed `offset` bytes.
    pub fn on_ack(&mut self, offset: u64, now: Instant) {
        if offset > self.acked {
            self.acked = offset;
            if self.waiting_since.is_some() {
                self.waiting_since = Some(now);
            }
        }
    }

    /// The receiver aborted the stream.
    pub fn on_abort(&mut self, why: String) {
        self.failed.get_or_insert(SendError::Aborted(why));
    }

    /// When [`SendStream::handle_timeout`] has work: the idle deadline while waiting on a
    /// full window.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.failed {
            Some(_) => None,
            None => self.waiting_since.map(|t| t + self.idle),
        }
    }

    /// Give up if the window stayed full for the idle timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.failed = Some(SendError::Stalled(self.idle));
        }
    }

    /// `Some` once the stream is over: every chunk handed out, or failed.
    #[must_use]
    pub fn outcome(&self) -> Option<Result<(), SendError>> {
        match &self.failed {
            Some(e) => Some(Err(e.clone())),
            None if self.parts.is_empty() => Some(Ok(())),
            None => None,
        }
    }
}

/// Split segments into chunks of at most `size` bytes (zero-copy slices); at least one chunk.
pub(crate) fn chunks(segments: Vec<Bytes>, size: usize) -> Vec<Vec<Bytes>> {
    let mut out: Vec<Vec<Bytes>> = Vec::new();
    let mut cur: Vec<Bytes> = Vec::new();
    let mut cur_len = 0;
    for mut s in segments {
        while !s.is_empty() {
            let take = (size - cur_len).min(s.len());
            cur.push(s.split_to(take));
            cur_len += take;
            if cur_len == size {
                out.push(std::mem::take(&mut cur));
                cur_len = 0;
            }
        }
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}
