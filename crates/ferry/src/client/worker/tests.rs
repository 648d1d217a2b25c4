//! The worker: where chunks are consumed, and in which order the answers come back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;

/// Says which thread each chunk was consumed on; blocks (as a file consumer does), and
/// sleeps `sleep` in chunk `slow_at` (computes that long instead, never sleeping, with
/// `busy`).
struct ThreadRecorder {
    threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
    slow_at: u64,
    sleep: Duration,
    busy: bool,
}

impl Consumer for ThreadRecorder {
    fn consume(&mut self, _: &str, state: &State, _: ChunkData) -> Result<State, ConsumeError> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        if state.get_u64("seq").ok().flatten() == Some(self.slow_at) {
            if self.busy {
                let start = Instant::now();
                let mut x = 0u64;
                while start.elapsed() < self.sleep {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            } else {
                std::thread::sleep(self.sleep);
            }
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
    threads_of_chunks_as(n, on_task, slow, slow_at, sleep, false).await
}

/// [`threads_of_chunks`], chunk `slow_at` computing instead of sleeping with `busy`.
async fn threads_of_chunks_as(
    n: u64,
    on_task: bool,
    slow: Duration,
    slow_at: u64,
    sleep: Duration,
    busy: bool,
) -> Vec<std::thread::ThreadId> {
    let threads = Arc::default();
    let c = ThreadRecorder {
        threads: Arc::clone(&threads),
        slow_at,
        sleep,
        busy,
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

/// A chunk that is slow without its thread sleeping (it computed, or waited for a core
/// other processes had) keeps the download on the task: a writer thread is for a disk
/// that stalls.
#[tokio::test]
#[cfg(target_os = "linux")]
async fn a_chunk_slow_without_sleeping_stays_on_the_task() {
    let here = std::thread::current().id();
    let slow = Duration::from_millis(20);
    let threads = threads_of_chunks_as(4, true, slow, 2, slow * 10, true).await;
    assert!(
        threads.iter().all(|t| *t == here),
        "{threads:?} vs the task's {here:?}"
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
        busy: false,
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
