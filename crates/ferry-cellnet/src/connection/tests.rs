//! A connection over a scripted transport: the peer's bytes come from a duplex pipe the test
//! writes, and the write half fails on demand (a peer that reset the connection).

use super::*;
use crate::headers::keys;
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

/// What the connection handed up, in order.
#[derive(Debug, Clone, PartialEq)]
enum Up {
    Message(String),
    Closed,
}

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Up>>,
    changed: Notify,
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
        self.push(Up::Message(env.topic().to_string()));
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
    let mut h = Headers::new();
    h.insert(keys::MSG_TYPE, "req");
    h.insert(keys::ORIGIN, "site-1");
    h.insert(keys::DESTINATION, "server");
    h.insert(keys::CHANNEL, "download");
    h.insert(keys::TOPIC, topic);
    frame_bytes(crate::envelope::seal(h.into(), "server", vec![], 64 << 10).expect("small headers"))
}

/// Start a passive connection of cell `server` whose writes fail; returns the test's end of
/// the peer's byte stream, the recorder, and the write failure's signal.
async fn start() -> (DuplexStream, Arc<Recorder>, Arc<Notify>) {
    let (peer, rd) = tokio::io::duplex(1 << 20);
    let failed = Arc::new(Notify::new());
    let t = Transport {
        rd: Box::new(rd),
        wr: Box::new(ResetWriter {
            failed: Arc::clone(&failed),
        }),
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
    let rec = Arc::new(Recorder::default());
    tokio::spawn(run(Arc::clone(&rec), ctx, t, false, None, None));
    (peer, rec, failed)
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
