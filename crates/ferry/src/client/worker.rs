//! The consumer's side of a download: the work the engine asks of it, run one piece at a time
//! in the engine's order.
//!
//! A consumer that [`blocks`](Consumer::blocks) (it writes to disk) gets a writer of its own
//! for the whole download: one task on tokio's blocking pool that takes the pieces from a
//! channel one after the other and sends each answer back as soon as it has it. A trip to the
//! pool and back per chunk was a thread wakeup each way; the writer is woken only when it ran
//! out of work, and the download task only when it waits for an answer. The writer stops
//! after the first piece the consumer refuses or panics on (the engine fails the download on
//! it), so nothing runs after a failure. Other consumers take their chunks right on the
//! download task, and their plans and completions on the pool.
//!
//! A blocking consumer takes its chunks on the download task too when the caller asked for it
//! (`DownloadOptions::consume_on_task`): each chunk is written by the thread that read it,
//! with its bytes still in that core's cache, and no thread is woken per chunk. While it
//! writes, that thread does nothing else, so the first chunk that takes longer than
//! [`SLOW_CONSUME`] (a disk that stalls, a periodic fsync) sends the rest of the download to
//! a writer as above: a slow disk holds the connection unread for one write, not for every
//! write after it. What counts is the time the thread slept in the chunk ([`super::sleeps`]),
//! not its wall time: a chunk that took that long because other processes had the cores is
//! not the disk's doing, and a writer thread would only add a thread to the fight.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use ferry_core::{ChunkData, ConsumeError, Consumer, Download, State, TransferPlan};
use tokio::sync::mpsc as tmpsc;
use tokio::task::JoinHandle;

use super::sleeps::Since;
use crate::runtime::{now, panic_text};

/// A chunk consumed on the download task during which its thread slept longer than this (the
/// time it waited for a core does not count) moves the rest of the download to a writer
/// thread. Writing 1 MiB into the page cache and hashing it takes about a millisecond, and
/// the kernel pauses a writer that outruns its disk for at most 200 ms at a time; a consume
/// that sleeps this long means a disk (or an fsync) that will stall the task again.
pub(super) const SLOW_CONSUME: Duration = Duration::from_millis(100);

/// Work for the consumer, run in engine order.
pub(super) enum Work {
    Plan(TransferPlan),
    Consume {
        seq: u64,
        state: State,
        data: ChunkData,
    },
    Complete,
}

/// What the consumer said.
pub(super) enum Done {
    Plan(Result<(), ConsumeError>),
    Consumed(u64, Result<State, ConsumeError>),
    Completed(Result<(), ConsumeError>),
}

impl Done {
    /// The consumer refused the piece of work, or panicked on it (the engine fails the
    /// download on it).
    fn failed(&self) -> bool {
        match self {
            Done::Plan(r) | Done::Completed(r) => r.is_err(),
            Done::Consumed(_, r) => r.is_err(),
        }
    }

    /// Hand the consumer's answer to the engine.
    pub(super) fn tell(self, dl: &mut Download) {
        match self {
            Done::Plan(r) => dl.plan_result(r, now()),
            Done::Consumed(seq, r) => dl.consumed(seq, r, now()),
            Done::Completed(r) => dl.completion_result(r, now()),
        }
    }
}

/// The consumer's current piece of work: on the blocking pool, or already done on the
/// download task (a non-blocking consumer's chunk). Either gives the consumer back (`None` if
/// it panicked) with its answer.
enum Working<C> {
    Pool(JoinHandle<(Option<C>, Done)>),
    /// Boxed: consumers can be large, and this sits in every download future.
    Ready(Option<Box<(Option<C>, Done)>>),
}

/// The writer of a blocking consumer: a task on the blocking pool that holds the consumer for
/// the whole download.
struct Writer<C> {
    /// Work for it, in engine order.
    work: mpsc::Sender<Work>,
    /// Its answers, in the same order.
    answers: tmpsc::UnboundedReceiver<Done>,
    /// Pieces sent whose answer has not come back.
    pending: usize,
    /// Raised when the download is over (finished, or its future dropped): the writer runs
    /// nothing more.
    stop: StopOnDrop,
    /// Gives the consumer back (`None` if it panicked).
    handle: JoinHandle<Option<C>>,
}

/// Raises its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A consumer and the work queued for it.
pub(super) struct Worker<C> {
    /// The ref, as the consumer's calls name it.
    rid: String,
    /// `None` while it works (on the blocking pool, or with its writer), and for good once it
    /// panicked.
    consumer: Option<C>,
    queue: VecDeque<Work>,
    working: Option<Working<C>>,
    /// The consumer blocks and has a writer: its work goes to [`Writer`], started by the
    /// first work. Unset for a blocking consumer asked to take its chunks on the download
    /// task, until the first chunk during which its thread slept longer than `slow` sets it.
    blocks: bool,
    /// [`SLOW_CONSUME`]; tests set their own.
    slow: Duration,
    writer: Option<Writer<C>>,
}

impl<C: Consumer + 'static> Worker<C> {
    /// A worker for `consumer`; `on_task`: its chunks are consumed on the download task even
    /// if it blocks (no writer).
    pub(super) fn new(consumer: C, rid: &str, on_task: bool) -> Self {
        Self {
            rid: rid.to_string(),
            blocks: consumer.blocks() && !on_task,
            slow: SLOW_CONSUME,
            consumer: Some(consumer),
            queue: VecDeque::new(),
            working: None,
            writer: None,
        }
    }

    /// Queue `work` behind what is queued.
    pub(super) fn push(&mut self, work: Work) {
        self.queue.push_back(work);
    }

    /// Start what is queued: all of it, for a blocking consumer's writer (started by the
    /// first work); otherwise the next piece, if the consumer is idle.
    pub(super) fn start(&mut self) {
        if self.blocks {
            return self.feed_writer();
        }
        if self.working.is_some() || self.queue.is_empty() {
            return;
        }
        let Some(c) = self.consumer.take() else {
            return;
        };
        let Some(work) = self.queue.pop_front() else {
            self.consumer = Some(c);
            return;
        };
        let rid = self.rid.clone();
        // Without a writer, chunks are taken right here (a non-blocking consumer, or a
        // blocking one asked to); plans and completions go to the blocking pool.
        self.working = Some(if matches!(work, Work::Consume { .. }) {
            // only a blocking consumer can move to a writer, so only its chunks are timed;
            // the thread's sleep is read only once the wall time (never less) is past `slow`
            let since = c.blocks().then(Since::now);
            let done = do_work(c, &rid, work);
            if let Some(since) = since.filter(|s| s.elapsed() > self.slow) {
                let slept = since.slept();
                if slept > self.slow {
                    // the disk stalls: the rest goes to a writer, started by the next work
                    tracing::debug!(took = ?since.elapsed(), ?slept, "slow write; a writer takes the rest");
                    self.blocks = true;
                }
            }
            Working::Ready(Some(Box::new(done)))
        } else {
            Working::Pool(tokio::task::spawn_blocking(move || do_work(c, &rid, work)))
        });
    }

    /// Send the queued work to the writer, starting it first if needed.
    fn feed_writer(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        if self.writer.is_none() {
            let Some(c) = self.consumer.take() else {
                return;
            };
            self.writer = Some(spawn_writer(c, self.rid.clone()));
        }
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        for work in self.queue.drain(..) {
            // a writer that stopped after a failure takes nothing more: the download is
            // failing on the answer it already sent
            if w.work.send(work).is_ok() {
                w.pending += 1;
            }
        }
    }

    /// The answer to the oldest piece of work in progress, once it is done (pending while
    /// idle). `Err` only when the runtime shuts down under the download: the consumer is then
    /// gone with its task. Cancel-safe.
    pub(super) async fn done(&mut self) -> Result<Done, String> {
        if let Some(w) = self.writer.as_mut() {
            if w.pending == 0 {
                return std::future::pending().await;
            }
            let done = w.answers.recv().await.ok_or("consumer task lost")?;
            w.pending -= 1;
            return Ok(done);
        }
        let joined = match self.working.as_mut() {
            Some(Working::Pool(h)) => h.await.map_err(|e| e.to_string()),
            Some(Working::Ready(r)) => r
                .take()
                .map(|b| *b)
                .ok_or_else(|| "consumer lost".to_string()),
            None => std::future::pending().await,
        };
        self.working = None;
        joined.map(|(c, done)| {
            self.consumer = c;
            done
        })
    }

    /// Let a piece of work in progress finish (a writer runs nothing after it); the consumer,
    /// unless it panicked or was lost.
    pub(super) async fn finish(mut self) -> Option<C> {
        if let Some(w) = self.writer.take() {
            let Writer {
                work, stop, handle, ..
            } = w;
            drop(stop);
            drop(work);
            return handle.await.ok().flatten();
        }
        let last = match self.working.take() {
            Some(Working::Pool(h)) => h.await.ok(),
            Some(Working::Ready(r)) => r.map(|b| *b),
            None => None,
        };
        if let Some((c, _)) = last {
            self.consumer = c;
        }
        self.consumer
    }
}

/// Start the writer of blocking consumer `c` on the blocking pool.
fn spawn_writer<C: Consumer + 'static>(c: C, rid: String) -> Writer<C> {
    let (work, work_rx) = mpsc::channel::<Work>();
    let (answer_tx, answers) = tmpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let handle = tokio::task::spawn_blocking(move || {
        let mut c = c;
        while let Ok(work) = work_rx.recv() {
            if stopped.load(Ordering::Acquire) {
                break;
            }
            let (back, done) = do_work(c, &rid, work);
            let failed = done.failed();
            // the download task may be gone (runtime shutting down): nobody to answer
            let _ = answer_tx.send(done);
            c = back?;
            if failed {
                break;
            }
        }
        Some(c)
    });
    Writer {
        work,
        answers,
        pending: 0,
        stop: StopOnDrop(stop),
        handle,
    }
}

/// Run `work` on consumer `c`. A panic becomes the answer to that piece of work ("consumer
/// panicked: ..."), so the engine fails the download with the panic's message; the consumer
/// is then gone (`None`) and nobody calls it again.
fn do_work<C: Consumer>(c: C, rid: &str, work: Work) -> (Option<C>, Done) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let panicked = |p: Box<dyn std::any::Any + Send>| {
        ConsumeError::Other(format!("consumer panicked: {}", panic_text(&*p)))
    };
    let mut c = c;
    let done = match work {
        Work::Plan(p) => match catch_unwind(AssertUnwindSafe(|| c.plan_received(&p))) {
            Ok(r) => Done::Plan(r),
            Err(e) => return (None, Done::Plan(Err(panicked(e)))),
        },
        Work::Consume { seq, state, data } => {
            match catch_unwind(AssertUnwindSafe(|| c.consume(rid, &state, data))) {
                Ok(r) => Done::Consumed(seq, r),
                Err(e) => return (None, Done::Consumed(seq, Err(panicked(e)))),
            }
        }
        Work::Complete => match catch_unwind(AssertUnwindSafe(|| c.completed(rid))) {
            Ok(r) => Done::Completed(r),
            Err(e) => return (None, Done::Completed(Err(panicked(e)))),
        },
    };
    (Some(c), done)
}

#[cfg(test)]
mod tests;
