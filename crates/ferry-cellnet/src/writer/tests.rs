//! The writer: frame counters, vectored and partial writes, the stall bound, and the direct
//! path (a sender writing its own frame) never reordering or splitting frames.

use super::*;

#[test]
fn counters_follow_nvflare() {
    let mut c = Counters {
        sequence: 0,
        stream_id: 16,
    };
    assert_eq!(c.next(FrameType::Hello), (1, 1));
    assert_eq!(c.next(FrameType::Data), (17, 2));
    assert_eq!(c.next(FrameType::Ping), (18, 3));
}

/// Accepts at most 7 bytes of at most 3 buffers per write: every write is partial.
struct Trickle(Vec<u8>);

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(7);
        self.0.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut n = 0;
        for b in bufs.iter().take(3) {
            let take = b.len().min(7 - n);
            self.0.extend_from_slice(&b[..take]);
            n += take;
            if n == 7 {
                break;
            }
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn vectored_writes_survive_partial_writes_and_many_buffers() {
    // more buffers than one write takes, empty ones among them
    let mut bufs: Vec<Segment> = (0..3 * MAX_IOV)
        .map(|i| Segment::Bytes(Bytes::from(vec![i as u8; i % 6])))
        .collect();
    let want: Vec<u8> = bufs
        .iter()
        .flat_map(|b| b.as_bytes().unwrap().iter().copied())
        .collect();
    let mut w = Trickle(Vec::new());
    write_all_segments(&mut w, &mut bufs, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(w.0, want);
}

impl WriteStream for Trickle {}

/// A socket that takes every buffer it is given, whole.
impl WriteStream for Vec<u8> {}

/// A frame of up to [`FEW_IOV`] parts (its slices on a small array) and of more (on one of
/// [`MAX_IOV`]), written whole or a few bytes at a time: exactly its bytes go out.
#[test]
fn a_frame_of_few_or_many_parts_is_written_exactly() {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let prefix = b"0123456789abcdef";
    for parts in [0, 1, FEW_IOV - 2, FEW_IOV - 1, FEW_IOV + 3, MAX_IOV + 5] {
        let frame = OutFrame {
            frame_type: FrameType::Data,
            app_id: crate::frame::APP_ID_CELLNET,
            headers: Bytes::from_static(&[0x81, 0xa1, b'k', 0x07]),
            payload: (0..parts)
                .map(|i| Bytes::from(vec![i as u8 + 1; i % 4]).into())
                .collect(),
        };
        let mut whole = prefix.to_vec();
        whole.extend_from_slice(&frame.headers);
        for s in &frame.payload {
            whole.extend_from_slice(s.as_bytes().unwrap());
        }
        let mut all = Vec::new();
        assert_eq!(
            poll_write_frame(&mut all, &mut cx, prefix, &frame),
            (whole.len(), true)
        );
        assert_eq!(all, whole, "{parts} parts");
        // 7 bytes at a time: each write starts anywhere in a part
        let mut few = Trickle(Vec::new());
        assert_eq!(
            poll_write_frame(&mut few, &mut cx, prefix, &frame),
            (whole.len(), true)
        );
        assert_eq!(few.0, whole, "{parts} parts, trickled");
    }
}

/// Accepts the first `n` bytes, then never again (a peer that stopped reading).
struct Stuck(usize);

impl AsyncWrite for Stuck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.0 == 0 {
            return std::task::Poll::Pending;
        }
        let n = buf.len().min(self.0);
        self.0 -= n;
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl WriteStream for Stuck {}

/// The stall bound counts from the last progress, not from the start of the batch.
#[tokio::test(start_paused = true)]
async fn a_write_that_stops_making_progress_fails_after_the_stall_bound() {
    let mut bufs = vec![Segment::Bytes(Bytes::from(vec![1u8; 100]))];
    let mut w = Stuck(60);
    let t0 = tokio::time::Instant::now();
    let e = write_all_segments(&mut w, &mut bufs, Duration::from_secs(3))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(bufs[0].len(), 40, "the 60 bytes written stay written");
}

/// A socket that takes bytes up to a limit the test raises, then would block.
#[derive(Clone, Default)]
struct Gate(Arc<std::sync::Mutex<GateState>>);

#[derive(Default)]
struct GateState {
    written: Vec<u8>,
    limit: usize,
    waker: Option<Waker>,
}

impl Gate {
    fn open(&self, limit: usize) {
        let mut g = self.0.lock().unwrap();
        g.limit = limit;
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }
    fn written(&self) -> Vec<u8> {
        self.0.lock().unwrap().written.clone()
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut g = self.0.lock().unwrap();
        let room = g.limit - g.written.len();
        if room == 0 {
            g.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        g.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl WriteStream for Gate {}

/// Run the writer task with the gate open until everything queued is written and it stops.
async fn write_out(w: Writer, gate: &Gate) {
    let close = CancellationToken::new();
    let task = tokio::spawn(writer_task(
        w,
        close.clone(),
        CancellationToken::new(),
        Duration::from_secs(60),
    ));
    gate.open(usize::MAX);
    close.cancel();
    task.await.unwrap();
}

fn data_frame(fill: u8, len: usize) -> OutFrame {
    OutFrame {
        frame_type: FrameType::Data,
        app_id: crate::frame::APP_ID_CELLNET,
        headers: Bytes::from_static(&[0x80]),
        payload: vec![Bytes::from(vec![fill; len]).into()],
    }
}

/// The bytes of `frames` written in this order by a fresh connection.
fn wire(frames: &[OutFrame]) -> Vec<u8> {
    let mut c = Counters {
        sequence: 0,
        stream_id: 16,
    };
    let bufs = frame_bufs(frames.to_vec(), &mut c);
    bufs.iter()
        .flat_map(|b| b.as_bytes().expect("in memory").iter().copied())
        .collect()
}

/// With nothing queued, a frame is written by its sender: no writer task runs here.
#[tokio::test]
async fn a_frame_with_nothing_queued_is_written_without_the_writer_task() {
    let gate = Gate::default();
    gate.open(usize::MAX);
    let (q, _w) = writer(Box::new(gate.clone()), 4, 4);
    let a = data_frame(1, 100);
    q.send(a.clone()).await.unwrap();
    q.send(data_frame(2, 10)).await.unwrap();
    assert_eq!(gate.written(), wire(&[a, data_frame(2, 10)]));
    assert_eq!(q.shared.unwritten.load(Ordering::SeqCst), 0);
}

/// The socket takes only part of a frame: the writer task finishes it, and a frame sent
/// after it waits its turn instead of landing in the middle of it.
#[tokio::test]
async fn a_partly_written_frame_is_finished_before_the_next() {
    let gate = Gate::default();
    gate.open(50);
    let (q, w) = writer(Box::new(gate.clone()), 4, 4);
    let (a, b) = (data_frame(1, 1000), data_frame(2, 10));
    q.send(a.clone()).await.unwrap();
    assert_eq!(
        gate.written().len(),
        50,
        "the socket took what it could at once"
    );
    q.send(b.clone()).await.unwrap();
    assert_eq!(gate.written().len(), 50, "the second frame was queued");
    write_out(w, &gate).await;
    assert_eq!(gate.written(), wire(&[a, b]));
}

/// A sender that gives up while waiting for room in the queue leaves no count behind:
/// once the queue is written, frames go directly again.
#[tokio::test]
async fn a_cancelled_send_does_not_block_direct_writes() {
    let gate = Gate::default();
    let (q, w) = writer(Box::new(gate.clone()), 1, 4);
    q.send(data_frame(1, 10)).await.unwrap(); // nothing written: the tail goes to the task
    q.send(data_frame(2, 10)).await.unwrap(); // queued: the queue is full
    let waited = tokio::time::timeout(Duration::from_millis(10), q.send(data_frame(3, 10)));
    assert!(waited.await.is_err(), "the third send waits for room");
    assert_eq!(q.shared.unwritten.load(Ordering::SeqCst), 2);
    let close = CancellationToken::new();
    tokio::spawn(writer_task(
        w,
        close.clone(),
        CancellationToken::new(),
        Duration::from_secs(60),
    ));
    gate.open(usize::MAX);
    let queued = wire(&[data_frame(1, 10), data_frame(2, 10)]).len();
    while gate.written().len() < queued {
        tokio::task::yield_now().await;
    }
    // the task uncounts in the same poll that wrote the bytes
    assert_eq!(q.shared.unwritten.load(Ordering::SeqCst), 0);
    let before = gate.written().len();
    q.try_send(data_frame(4, 10)).unwrap();
    assert!(
        gate.written().len() > before,
        "written at once, by the sender"
    );
    close.cancel();
}

/// A frame of several payload segments, cut by the socket at every byte (inside the prefix,
/// the headers, each segment, between them): the writer task writes exactly the rest.
#[tokio::test]
async fn a_direct_write_cut_anywhere_is_finished_exactly() {
    let frame = OutFrame {
        frame_type: FrameType::Data,
        app_id: crate::frame::APP_ID_CELLNET,
        headers: Bytes::from_static(&[0x81, 0xa1, b'k', 0x07]),
        payload: vec![
            Bytes::from_static(b"abc").into(),
            Bytes::new().into(),
            Bytes::from_static(b"defgh").into(),
        ],
    };
    let whole = wire(std::slice::from_ref(&frame));
    for cut in 0..=whole.len() {
        let gate = Gate::default();
        gate.open(cut);
        let (q, w) = writer(Box::new(gate.clone()), 4, 4);
        q.send(frame.clone()).await.unwrap();
        assert_eq!(gate.written().len(), cut.min(whole.len()));
        write_out(w, &gate).await;
        assert_eq!(gate.written(), whole, "cut at {cut}");
    }
}

/// `offer` never waits: a frame it cannot write or queue comes back to the caller.
#[tokio::test]
async fn offer_gives_the_frame_back_when_the_queue_is_full() {
    let gate = Gate::default();
    let (q, _w) = writer(Box::new(gate.clone()), 1, 4);
    assert!(
        q.offer(data_frame(1, 10)).unwrap().is_none(),
        "tail to the task"
    );
    assert!(q.offer(data_frame(2, 10)).unwrap().is_none(), "queued");
    let back = q
        .offer(data_frame(3, 10))
        .unwrap()
        .expect("the queue is full");
    assert_eq!(back.wire_len(), data_frame(3, 10).wire_len());
    // the frame given back is not counted as queued
    assert_eq!(q.shared.unwritten.load(Ordering::SeqCst), 2);
}
