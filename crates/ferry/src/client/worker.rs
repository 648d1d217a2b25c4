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
//! write after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferry_core::{ChunkData, ConsumeError, Consumer, Download, State, TransferPlan};
use tokio::sync::mpsc as tmpsc;
use tokio::task::JoinHandle;

use crate::runtime::{now, panic_text};

/// A chunk consumed on the download task that takes longer than this moves the rest of the
/// download to a writer thread. Writing 1 MiB into the page cache and hashing it takes about a
/// millisecond, and the kernel pauses a writer that outruns its disk for at most 200 ms at a
/// time; a consume this slow means a disk (or an fsync) that will stall the task again.
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
    /// task, until the first chunk that took longer than `slow` sets it.
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
            let started = Instant::now();
            let blocks = c.blocks();
            let done = do_work(c, &rid, work);
            if blocks && started.elapsed() > self.slow {
                // the disk stalls: the rest goes to a writer, started by the next work
                tracing::debug!(took = ?started.elapsed(), "slow write; a writer takes the rest");
                self.blocks = true;
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
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    /// Says which thread each chunk was consumed on; blocks (as a file consumer does), and
    /// sleeps `sleep` in chunk `slow_at`.
    struct ThreadRecorder {
        threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
        slow_at: u64,
        sleep: Duration,
    }

    impl Consumer for ThreadRecorder {
        fn consume(&mut self, _: &str, state: &State, _: ChunkData) -> Result<State, ConsumeError> {
            self.threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
            if state.get_u64("seq").ok().flatten() == Some(self.slow_at) {
                std::thread::sleep(self.sleep);
            }
            Ok(state.clone())
        }
        fn completed(&mut self, _: &str) -> Result<(), ConsumeError> {
            Ok(())
        }
        fn failed(&mut self, _: &str, _: &str) {}
    }

    /// Consume chunks 1..=`n` one after the other (as the engine hands them out: each once the
    /// one before was answered) on a worker that consumes on the task if `on_task`, calls a
    /// consume slower than `slow` slow, and sleeps `sleep` in chunk `slow_at`; the thread of
    /// each chunk.
    async fn threads_of_chunks(
        n: u64,
        on_task: bool,
        slow: Duration,
        slow_at: u64,
        sleep: Duration,
    ) -> Vec<std::thread::ThreadId> {
        let threads = Arc::default();
        let c = ThreadRecorder {
            threads: Arc::clone(&threads),
            slow_at,
            sleep,
        };
        let mut w = Worker::new(c, "r1", on_task);
        w.slow = slow;
        for seq in 1..=n {
            w.push(Work::Consume {
                seq,
                state: State::new().with("seq", seq),
                data: ChunkData::Bytes(Bytes::from_static(b"x")),
            });
            w.start();
            assert_eq!(next_any(&mut w).await, (seq, true));
        }
        assert!(w.finish().await.is_some());
        let threads = threads.lock().unwrap().clone();
        assert_eq!(threads.len() as u64, n);
        threads
    }

    /// Chunks of a blocking consumer go to a writer thread, unless the caller asked for them
    /// on the download task: then each is consumed by the task's own thread, in order.
    #[tokio::test]
    async fn a_blocking_consumer_takes_its_chunks_on_the_task_when_asked() {
        let here = std::thread::current().id();
        // nothing is slow: the threshold is beyond any test's run time
        let never = Duration::from_secs(24 * 3600);
        let writer = threads_of_chunks(3, false, never, 0, Duration::ZERO).await;
        assert!(writer.iter().all(|t| *t != here), "{writer:?} vs {here:?}");
        let task = threads_of_chunks(3, true, never, 0, Duration::ZERO).await;
        assert!(task.iter().all(|t| *t == here), "{task:?} vs {here:?}");
    }

    /// The first chunk consumed on the task that is slow sends the rest to a writer thread
    /// (a stalled disk holds the task for one write, not for every write after it).
    #[tokio::test]
    async fn a_slow_chunk_on_the_task_sends_the_rest_to_a_writer() {
        let here = std::thread::current().id();
        // chunk 2 sleeps ten times the threshold: slow on any machine. Chunk 1 is consumed on
        // the task; chunk 2 too, unless a loaded machine made chunk 1 itself look slow, so
        // only what cannot depend on the load is asserted of it.
        let slow = Duration::from_millis(20);
        let threads = threads_of_chunks(4, true, slow, 2, slow * 10).await;
        assert_eq!(threads[0], here, "chunk 1 is consumed on the task");
        assert!(
            threads[2..].iter().all(|t| *t != here),
            "chunks 3-4 consumed on {:?}, the task on {here:?}",
            &threads[2..]
        );
    }

    /// Chunks already queued behind the slow one go to the writer too, and every answer
    /// comes back once, in order.
    #[tokio::test]
    async fn chunks_queued_behind_a_slow_one_go_to_the_writer_in_order() {
        let here = std::thread::current().id();
        let slow = Duration::from_millis(20);
        let threads = Arc::default();
        let c = ThreadRecorder {
            threads: Arc::clone(&threads),
            slow_at: 1,
            sleep: slow * 10,
        };
        let mut w = Worker::new(c, "r1", true);
        w.slow = slow;
        for seq in 1..=4u64 {
            w.push(Work::Consume {
                seq,
                state: State::new().with("seq", seq),
                data: ChunkData::Bytes(Bytes::from_static(b"x")),
            });
        }
        // as the download loop does: start what is queued, wait for an answer, again
        for seq in 1..=4u64 {
            w.start();
            assert_eq!(next_any(&mut w).await, (seq, true));
        }
        assert!(w.finish().await.is_some());
        let threads = threads.lock().unwrap();
        assert_eq!(threads.len(), 4);
        assert_eq!(threads[0], here, "chunk 1 is consumed on the task");
        assert!(threads[1..].iter().all(|t| *t != here), "{threads:?}");
    }

    /// Records the chunks it is given; refuses chunk `fail_at`; with a gate, says when it
    /// starts chunk 1 and waits for the gate to open before it ends it.
    struct Recorder {
        seen: Arc<Mutex<Vec<u64>>>,
        fail_at: Option<u64>,
        gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    }

    impl Consumer for Recorder {
        fn consume(&mut self, _: &str, state: &State, _: ChunkData) -> Result<State, ConsumeError> {
            let seq = state.get_u64("seq").ok().flatten().unwrap_or_default();
            if let (1, Some((entered, gate))) = (seq, &self.gate) {
                let _ = entered.send(());
                let _ = gate.recv();
            }
            self.seen.lock().unwrap().push(seq);
            if Some(seq) == self.fail_at {
                return Err(ConsumeError::Other(format!("chunk {seq} refused")));
            }
            Ok(state.clone())
        }
        fn completed(&mut self, _: &str) -> Result<(), ConsumeError> {
            Ok(())
        }
        fn failed(&mut self, _: &str, _: &str) {}
    }

    fn worker(
        fail_at: Option<u64>,
        gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    ) -> (Worker<Recorder>, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::default();
        let c = Recorder {
            seen: Arc::clone(&seen),
            fail_at,
            gate,
        };
        let mut w = Worker::new(c, "r1", false);
        for seq in 1..=4 {
            w.push(Work::Consume {
                seq,
                state: State::new().with("seq", seq),
                data: ChunkData::Bytes(Bytes::from_static(b"x")),
            });
        }
        (w, seen)
    }

    async fn next(w: &mut Worker<Recorder>) -> (u64, bool) {
        next_any(w).await
    }

    async fn next_any<C: Consumer + 'static>(w: &mut Worker<C>) -> (u64, bool) {
        // far beyond a trip to the pool: reaching it means no answer is coming
        match tokio::time::timeout(Duration::from_secs(60), w.done()).await {
            Ok(Ok(Done::Consumed(seq, r))) => (seq, r.is_ok()),
            Ok(Ok(_)) => panic!("not a chunk's answer"),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("no answer"),
        }
    }

    /// A started worker whose chunk 1 is in progress, held at the gate (`open` lets it end),
    /// with chunks 2-4 queued behind it; `entered` is the consumer's end of its signal, which
    /// hangs up when the consumer is dropped.
    async fn held_at_chunk_one() -> (
        Worker<Recorder>,
        Arc<Mutex<Vec<u64>>>,
        mpsc::Sender<()>,
        mpsc::Receiver<()>,
    ) {
        let (entered_tx, entered) = mpsc::channel();
        let (open, gate) = mpsc::channel();
        let (mut w, seen) = worker(None, Some((entered_tx, gate)));
        w.start();
        let entered = tokio::task::spawn_blocking(move || {
            entered.recv().unwrap();
            entered
        })
        .await
        .unwrap();
        (w, seen, open, entered)
    }

    /// Work queued for a blocking consumer goes to its writer at once: one start, every
    /// answer, in order.
    #[tokio::test]
    async fn queued_chunks_go_to_the_writer_at_once_and_are_answered_in_order() {
        let (mut w, seen) = worker(None, None);
        w.start();
        for seq in 1..=4 {
            assert_eq!(next(&mut w).await, (seq, true));
        }
        assert_eq!(*seen.lock().unwrap(), [1, 2, 3, 4]);
        assert!(w.finish().await.is_some());
    }

    /// After a refused chunk the writer consumes nothing more (the engine fails the download
    /// on the refusal); the consumer comes back for its `failed` call.
    #[tokio::test]
    async fn nothing_is_consumed_after_a_refused_chunk() {
        let (mut w, seen) = worker(Some(2), None);
        w.start();
        assert_eq!(next(&mut w).await, (1, true));
        assert_eq!(next(&mut w).await, (2, false));
        assert!(w.finish().await.is_some());
        assert_eq!(*seen.lock().unwrap(), [1, 2]);
    }

    /// A download that ends (finished, failed, cancelled) with chunks queued at the writer
    /// waits for the one in progress only.
    #[tokio::test]
    async fn finishing_waits_for_the_chunk_in_progress_only() {
        let (w, seen, open, _entered) = held_at_chunk_one().await;
        let mut fin = Box::pin(w.finish());
        // its first poll raises the stop flag and waits for the writer
        std::future::poll_fn(|cx| {
            assert!(std::future::Future::poll(fin.as_mut(), cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        open.send(()).unwrap();
        assert!(fin.await.is_some());
        assert_eq!(*seen.lock().unwrap(), [1]);
    }

    /// A download whose future is dropped with chunks queued at the writer: the writer ends
    /// after the chunk in progress.
    #[tokio::test]
    async fn a_dropped_download_stops_its_writer_after_the_chunk_in_progress() {
        let (w, seen, open, entered) = held_at_chunk_one().await;
        drop(w);
        open.send(()).unwrap();
        // the consumer (holding the other end) is dropped when its writer ends
        let after = tokio::task::spawn_blocking(move || entered.recv())
            .await
            .unwrap();
        assert!(after.is_err());
        assert_eq!(*seen.lock().unwrap(), [1]);
    }
}
