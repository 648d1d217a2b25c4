//! A connection over a scripted transport: the peer's bytes come from a duplex pipe the test
//! writes, and the write half fails on demand (a peer that reset the connection).

use super::*;
use crate::headers::{keys, Headers};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};
use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};

/// A write half whose every write fails with "connection reset", after telling the test.
struct ResetWriter {
    failed: Arc<Notify>,
}

impl crate::driver::WriteStream for ResetWriter {}

impl AsyncWrite for ResetWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.failed.notify_one();
        Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A write half that takes every byte (a peer that reads all we send).
impl crate::driver::WriteStream for tokio::io::Sink {}

/// What the connection handed up, in order.
#[derive(Debug, Clone, PartialEq)]
enum Up {
    Message(String),
    /// A task the message was handed to took it (a download task consuming a chunk).
    Consumed(String),
    Closed,
}

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Up>>,
    changed: Notify,
    /// Where `message` hands each topic on, if a consumer task is listening.
    hand_to: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
}

impl Recorder {
    fn push(&self, up: Up) {
        self.seen.lock().unwrap().push(up);
        self.changed.notify_waiters();
    }

    async fn until_closed(&self) -> Vec<Up> {
        loop {
            let changed = self.changed.notified();
            let seen = self.seen.lock().unwrap().clone();
            if seen.contains(&Up::Closed) {
                return seen;
            }
            changed.await;
        }
    }
}

impl Inbound for Recorder {
    async fn admit(self: &Arc<Self>, conn: &Arc<Conn>, ready: OutFrame) -> Result<(), String> {
        conn.try_send(ready).map_err(|e| e.to_string())
    }
    fn opened(self: &Arc<Self>, _: &Arc<Conn>) {}
    async fn message(self: &Arc<Self>, _: &Arc<Conn>, env: Envelope, _: Bytes) {
        let topic = env.topic().to_string();
        self.push(Up::Message(topic.clone()));
        if let Some(tx) = &*self.hand_to.lock().unwrap() {
            let _ = tx.send(topic);
        }
    }
    fn closed(self: &Arc<Self>, _: &Arc<Conn>) {
        self.push(Up::Closed);
    }
}

fn frame_bytes(f: OutFrame) -> Bytes {
    f.to_bytes(0, 0).expect("small frame")
}

/// A fire-and-forget message from `site-1` to `server` on topic `topic`.
fn message(topic: &str) -> Bytes {
    message_with(topic, "req", 0)
}

/// A message of `msg_type` from `site-1` to `server` on topic `topic` carrying `len` bytes.
fn message_with(topic: &str, msg_type: &str, len: usize) -> Bytes {
    let mut h = Headers::new();
    h.insert(keys::MSG_TYPE, msg_type);
    h.insert(keys::ORIGIN, "site-1");
    h.insert(keys::DESTINATION, "server");
    h.insert(keys::CHANNEL, "download");
    h.insert(keys::TOPIC, topic);
    let payload = vec![Bytes::from(vec![7u8; len]).into()];
    frame_bytes(
        crate::envelope::seal(h.into(), "server", payload, 64 << 10).expect("small headers"),
    )
}

/// Start a passive connection of cell `server` whose writes fail; returns the test's end of
/// the peer's byte stream, the recorder, and the write failure's signal.
async fn start() -> (DuplexStream, Arc<Recorder>, Arc<Notify>) {
    let failed = Arc::new(Notify::new());
    let wr = Box::new(ResetWriter {
        failed: Arc::clone(&failed),
    });
    let (peer, rec) = start_with(wr, Recorder::default());
    (peer, rec, failed)
}

/// Start a passive connection of cell `server` writing to `wr` and handing up to `rec`.
fn start_with(wr: crate::driver::WriteHalf, rec: Recorder) -> (DuplexStream, Arc<Recorder>) {
    let (peer, rd) = tokio::io::duplex(1 << 20);
    let t = Transport {
        rd: Box::new(rd),
        wr,
        peer_addr: "198.18.0.2:40000".into(),
        peer_cn: None,
    };
    let ctx = Arc::new(Context {
        me: Fqcn::new("server").unwrap(),
        limits: Limits::default(),
        tasks: TaskTracker::new(),
        close_all: CancellationToken::new(),
        held: HeldBudget::new(64 << 20),
    });
    let rec = Arc::new(rec);
    tokio::spawn(run(Arc::clone(&rec), ctx, t, false, None, None));
    (peer, rec)
}

/// What a peer sent before it reset the connection is still read and handed up: a receiver
/// that cancels and closes while the sender is busy writing to it (or frozen) used to lose
/// its cancel, because the failed write closed the connection before the reader got to it.
#[tokio::test(flavor = "current_thread")]
async fn what_the_peer_sent_before_a_failed_write_is_still_handed_up() {
    let (mut peer, rec, failed) = start().await;
    let hello = control(
        FrameType::Hello,
        hello_payload(&Fqcn::new("site-1").unwrap(), None),
    );
    peer.write_all(&frame_bytes(hello)).await.unwrap();
    // The connection answers READY: that write fails (the peer is gone).
    failed.notified().await;
    // Let the connection react to the failure before the peer's last message is read (on this
    // one-thread runtime the connection's tasks run while the test waits).
    tokio::time::sleep(Duration::from_millis(50)).await;
    // (Fails with a broken pipe if the connection already gave up reading.)
    let _ = peer.write_all(&message("cancel")).await;
    drop(peer);
    let seen = tokio::time::timeout(Duration::from_secs(60), rec.until_closed())
        .await
        .expect("the connection closes once the peer's bytes end");
    assert_eq!(seen, vec![Up::Message("cancel".into()), Up::Closed]);
}

/// After a failed write the reader waits a bounded time for the peer's last bytes: a peer
/// that keeps its side open but sends nothing is closed after `DRAIN_AFTER_WRITE_FAILURE`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_silent_peer_is_closed_a_bounded_time_after_a_failed_write() {
    let (mut peer, rec, failed) = start().await;
    let hello = control(
        FrameType::Hello,
        hello_payload(&Fqcn::new("site-1").unwrap(), None),
    );
    peer.write_all(&frame_bytes(hello)).await.unwrap();
    failed.notified().await;
    let at = Instant::now();
    let seen = tokio::time::timeout(DRAIN_AFTER_WRITE_FAILURE * 10, rec.until_closed())
        .await
        .expect("closed after the drain deadline");
    assert_eq!(seen, vec![Up::Closed]);
    assert!(
        at.elapsed() >= DRAIN_AFTER_WRITE_FAILURE,
        "{:?}",
        at.elapsed()
    );
    drop(peer);
}

/// Send HELLO and two messages of `msg_type` carrying `a_len` and `b_len` bytes (all in the
/// pipe before the connection reads its first byte) to a connection whose `message` hands
/// each topic to a consumer task; returns what was handed up and consumed, in order, until
/// the close.
async fn hand_two_to_a_consumer(msg_type: &str, a_len: usize, b_len: usize) -> Vec<Up> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let rec = Recorder {
        hand_to: Mutex::new(Some(tx)),
        ..Recorder::default()
    };
    let (mut peer, rec) = start_with(Box::new(tokio::io::sink()), rec);
    let consumer = {
        let rec = Arc::clone(&rec);
        tokio::spawn(async move {
            while let Some(topic) = rx.recv().await {
                rec.push(Up::Consumed(topic));
            }
        })
    };
    let hello = control(
        FrameType::Hello,
        hello_payload(&Fqcn::new("site-1").unwrap(), None),
    );
    let mut bytes = frame_bytes(hello).to_vec();
    bytes.extend_from_slice(&message_with("a", msg_type, a_len));
    bytes.extend_from_slice(&message_with("b", msg_type, b_len));
    peer.write_all(&bytes).await.unwrap();
    drop(peer);
    let seen = tokio::time::timeout(Duration::from_secs(60), rec.until_closed())
        .await
        .expect("the connection closes once the peer's bytes end");
    consumer.abort();
    seen
}

/// After handing on a large reply the reader lets the task it woke take it before reading
/// the next one: otherwise a one-thread receiver reads a download's whole window (megabytes)
/// before the download task runs, and writes those bytes to its file after they went cold in
/// the cache. (Without the yield: a, b, closed, and only then consumed a, b.)
#[tokio::test(flavor = "current_thread")]
async fn a_large_reply_is_taken_by_its_consumer_before_the_next_is_read() {
    let seen = hand_two_to_a_consumer("reply", YIELD_AFTER_PAYLOAD, YIELD_AFTER_PAYLOAD).await;
    let consumed = |t: &str| Up::Consumed(t.into());
    let message = |t: &str| Up::Message(t.into());
    assert_eq!(
        seen,
        vec![
            message("a"),
            consumed("a"),
            message("b"),
            consumed("b"),
            Up::Closed
        ]
    );
}

/// Small replies (the answers of round trips) are handed on without a yield: the reader
/// takes every one already in the socket before the tasks they woke run.
#[tokio::test(flavor = "current_thread")]
async fn small_replies_are_read_without_a_yield_between_them() {
    let seen = hand_two_to_a_consumer("reply", YIELD_AFTER_PAYLOAD - 1, 100).await;
    assert_eq!(
        seen[..2],
        [Up::Message("a".into()), Up::Message("b".into())]
    );
}

/// Large requests (stream chunks, uploads) are read on without a yield: the chunks of many
/// connections' streams fill the held-bytes budget in the order their readers take them,
/// not interleaved chunk by chunk.
#[tokio::test(flavor = "current_thread")]
async fn large_requests_are_read_without_a_yield_between_them() {
    let seen = hand_two_to_a_consumer("req", YIELD_AFTER_PAYLOAD, YIELD_AFTER_PAYLOAD).await;
    assert_eq!(
        seen[..2],
        [Up::Message("a".into()), Up::Message("b".into())]
    );
}

/// Consecutive messages whose header blocks differ only in a few values (what the read loop's
/// decode memo reuses) are each handed up with their own headers; one whose changed value is
/// bad (a topic that is not UTF-8) is dropped, and the next is read as sent.
#[tokio::test(flavor = "current_thread")]
async fn messages_alike_are_each_read_with_their_own_headers() {
    let (mut peer, rec) = start_with(Box::new(tokio::io::sink()), Recorder::default());
    let hello = control(
        FrameType::Hello,
        hello_payload(&Fqcn::new("site-1").unwrap(), None),
    );
    let mut bytes = frame_bytes(hello).to_vec();
    for (topic, msg_type) in [
        ("t-01", "req"),
        ("t-02", "req"),
        ("t-03", "reply"),
        ("t-04", "req"),
        ("t-05", "req"),
        ("t-06", "reply"),
    ] {
        let mut m = message_with(topic, msg_type, 0).to_vec();
        if topic == "t-05" {
            let at = m.windows(4).position(|w| w == b"t-05").unwrap();
            m[at + 3] = 0xff;
        }
        bytes.extend_from_slice(&m);
    }
    peer.write_all(&bytes).await.unwrap();
    drop(peer);
    let seen = tokio::time::timeout(Duration::from_secs(60), rec.until_closed())
        .await
        .expect("the connection closes once the peer's bytes end");
    let message = |t: &str| Up::Message(t.into());
    assert_eq!(
        seen,
        vec![
            message("t-01"),
            message("t-02"),
            message("t-03"),
            message("t-04"),
            message("t-06"),
            Up::Closed
        ]
    );
}
