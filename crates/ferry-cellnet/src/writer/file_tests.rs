//! File regions through the writer over real sockets: `sendfile(2)` on TCP, the copying
//! fallback on other transports, and a file that shrinks after its frame was built.

use std::io::Write as _;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};

use super::segments::COPY_CHUNK;
use super::*;
use crate::driver::tcp::TcpWrite;
use crate::frame::APP_ID_CELLNET;
use crate::segment::FileRegion;

/// A temporary file holding `len` bytes of a pattern that differs at every offset mod 251.
fn pattern_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    (f, data)
}

fn frame(payload: Vec<Segment>) -> OutFrame {
    OutFrame {
        frame_type: FrameType::Data,
        app_id: APP_ID_CELLNET,
        headers: Bytes::from_static(&[0x80]),
        payload,
    }
}

/// A TCP pair: the writer's side (as the TCP driver wraps it) and the peer's socket.
async fn tcp_pair() -> (TcpWrite, TcpStream, tokio::net::tcp::OwnedReadHalf) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(a), l.accept());
    let (rd, wr) = c.unwrap().into_split();
    (TcpWrite(wr), s.unwrap().0, rd)
}

/// Read everything until EOF, `step` bytes at a time, yielding between reads when `slow`.
async fn read_all(
    mut r: impl AsyncRead + Unpin,
    step: usize,
    slow: bool,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; step];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if slow {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// Frames before and after the region frame, so ordering and framing around it are checked.
fn frames_around(region: FileRegion) -> Vec<OutFrame> {
    vec![
        frame(vec![Bytes::from_static(b"before").into()]),
        frame(vec![
            Bytes::from_static(b"head:").into(),
            region.into(),
            Bytes::from_static(b":tail").into(),
        ]),
        frame(vec![Bytes::from_static(b"after").into()]),
    ]
}

/// What `frames` look like on the wire from a fresh connection, regions read from the file.
fn expected(frames: &[OutFrame]) -> Vec<u8> {
    let mut c = Counters {
        sequence: 0,
        stream_id: 16,
    };
    let mut out = Vec::new();
    for f in frames {
        let (sid, seq) = c.next(f.frame_type);
        out.extend_from_slice(&f.to_bytes(sid, seq).unwrap());
    }
    out
}

/// Send `frames` through a writer on `wr` and close it; the writer task's close token.
async fn send_through(wr: WriteHalf, frames: Vec<OutFrame>) -> CancellationToken {
    let (q, w) = writer(wr, 8, 8);
    let close = CancellationToken::new();
    let task = tokio::spawn(writer_task(
        w,
        close.clone(),
        CancellationToken::new(),
        Duration::from_secs(60),
    ));
    for f in frames {
        q.send(f).await.unwrap();
    }
    drop(q); // the task writes what is queued, then shuts the socket down
    task.await.unwrap();
    close
}

/// A region far larger than the socket buffers, read slowly by the peer: sendfile makes
/// many partial writes, each waiting for write readiness, and the bytes arrive identical.
#[tokio::test]
async fn a_file_region_arrives_identical_over_tcp_with_a_slow_reader() {
    let (file, data) = pattern_file(8 << 20);
    let f = Arc::new(std::fs::File::open(file.path()).unwrap());
    // an odd offset and length: the region is not the whole file
    let region = FileRegion::new(f, 12_345, data.len() - 12_345 - 999);
    let (wr, peer, _rd) = tcp_pair().await;
    assert!(
        wr.sends_files(),
        "plain TCP sends file regions with sendfile"
    );
    let frames = frames_around(region);
    let want = expected(&frames);
    let reader = tokio::spawn(read_all(peer, 64 * 1024, true));
    let close = send_through(Box::new(wr), frames).await;
    let got = reader.await.unwrap().unwrap();
    assert!(!close.is_cancelled(), "the writer ended normally");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the frames arrived byte-identical");
}

/// A region never goes by the direct path: it is written by the task, after what was
/// queued before it, and a direct frame sent after it waits.
#[tokio::test]
async fn a_region_frame_is_written_in_order_among_direct_frames() {
    let (file, _) = pattern_file(3 << 20);
    let f = Arc::new(std::fs::File::open(file.path()).unwrap());
    let (wr, peer, _rd) = tcp_pair().await;
    let frames = vec![
        frame(vec![Bytes::from(vec![1u8; 100]).into()]),
        frame(vec![FileRegion::new(f, 0, 3 << 20).into()]),
        frame(vec![Bytes::from(vec![2u8; 100]).into()]),
    ];
    let want = expected(&frames);
    let reader = tokio::spawn(read_all(peer, 256 * 1024, false));
    send_through(Box::new(wr), frames).await;
    assert!(reader.await.unwrap().unwrap() == want);
}

/// Transports without sendfile (TLS, pipes) read the region in pieces and write them.
#[tokio::test]
async fn a_file_region_is_copied_where_the_transport_cannot_send_files() {
    let (file, data) = pattern_file(COPY_CHUNK * 3 + 17);
    let f = Arc::new(std::fs::File::open(file.path()).unwrap());
    let region = FileRegion::new(f, 1, data.len() - 1);
    // a pipe smaller than one copied piece: every piece takes several writes
    let (a, b) = tokio::io::duplex(4096);
    let (_ard, awr) = tokio::io::split(a);
    assert!(!awr.sends_files());
    let frames = frames_around(region);
    let want = expected(&frames);
    let reader = tokio::spawn(read_all(b, 1000, false));
    send_through(Box::new(awr), frames).await;
    assert!(reader.await.unwrap().unwrap() == want);
}

/// A file that shrank after its frame was built: the frame on the wire is short, so the
/// writer closes the connection; the peer sees the connection end mid-frame, never a whole
/// frame with wrong bytes, and nothing queued after it.
async fn a_shrunk_file_closes_the_connection(
    wr: WriteHalf,
    peer: impl AsyncRead + Unpin + Send + 'static,
) {
    let (file, data) = pattern_file(1 << 20);
    let f = Arc::new(std::fs::File::open(file.path()).unwrap());
    let region = FileRegion::new(Arc::clone(&f), 0, data.len());
    let frames = frames_around(region);
    let full = expected(&frames);
    file.as_file().set_len(100_000).unwrap();
    let reader = tokio::spawn(read_all(peer, 64 * 1024, false));
    let close = send_through(wr, frames).await;
    assert!(close.is_cancelled(), "the writer closed the connection");
    let got = reader.await.unwrap().unwrap_or_default();
    let first = expected(&frames_around(FileRegion::new(f, 0, 0))[..1]).len();
    // the first frame whole, then the region frame's prefix, headers and the bytes the file
    // still held; nothing after
    let region_frame_start = first;
    let sent_of_region = got.len() - region_frame_start;
    assert!(got.len() < full.len(), "the frame was cut short");
    assert_eq!(
        got[..],
        full[..got.len()],
        "what arrived is a prefix of the stream"
    );
    assert!(
        sent_of_region <= PREFIX_LEN + 1 + b"head:".len() + 100_000,
        "nothing past what the file held: {sent_of_region} bytes of the frame"
    );
}

#[tokio::test]
async fn a_shrunk_file_closes_a_tcp_connection() {
    let (wr, peer, _rd) = tcp_pair().await;
    a_shrunk_file_closes_the_connection(Box::new(wr), peer).await;
}

#[tokio::test]
async fn a_shrunk_file_closes_a_copying_connection() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (_ard, awr) = tokio::io::split(a);
    a_shrunk_file_closes_the_connection(Box::new(awr), b).await;
}

/// A peer that stops reading stalls sendfile: the write fails after the stall bound, as a
/// vectored write does, instead of waiting forever.
#[tokio::test(start_paused = true)]
async fn sendfile_to_a_peer_that_stopped_reading_fails_after_the_stall_bound() {
    let (file, data) = pattern_file(32 << 20);
    let f = Arc::new(std::fs::File::open(file.path()).unwrap());
    let (mut wr, _peer, _rd) = tcp_pair().await; // the peer never reads
    let mut segs = [Segment::File(FileRegion::new(f, 0, data.len()))];
    let e = write_all_segments(&mut wr, &mut segs, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    let Segment::File(left) = &segs[0] else {
        unreachable!()
    };
    assert!(
        left.len() < data.len() && !left.is_empty(),
        "some of the region went out before the peer's buffers filled"
    );
}

/// A mutual-TLS configuration with a leaf for `cn` and the CA that signed it.
#[cfg(feature = "tls")]
fn tls_config(cn: &str) -> crate::TlsConfig {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "ca");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_pem = p.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &issuer).unwrap();
    crate::TlsConfig::from_pem(
        ca_pem.as_bytes(),
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap()
}

/// Over mutual TLS (real rustls on a real socket) a region cannot go by sendfile: the
/// writer reads it and the TLS stream encrypts it; the peer decrypts the same bytes.
#[cfg(feature = "tls")]
#[tokio::test]
async fn a_file_region_arrives_identical_over_tls() {
    use crate::driver::tls;
    let cfg = tls_config("site-1");
    let (acceptor, connector) = (cfg.acceptor().unwrap(), cfg.connector().unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let client = async {
        let s = TcpStream::connect(a).await.unwrap();
        tls::connect(&connector, "localhost", s).await.unwrap()
    };
    let server = async {
        let (s, _) = l.accept().await.unwrap();
        tls::accept(&acceptor, s).await.unwrap()
    };
    let (client, server) = tokio::join!(client, server);
    assert!(!client.wr.sends_files(), "TLS copies file regions");
    let (file, data) = pattern_file(3 * COPY_CHUNK + 4321);
    let f = Arc::new(std::fs::File::open(file.path()).unwrap());
    let frames = frames_around(FileRegion::new(f, 7, data.len() - 7));
    let want = expected(&frames);
    let reader = tokio::spawn(read_all(server.rd, 16 * 1024, true));
    send_through(client.wr, frames).await;
    let got = reader.await.unwrap().unwrap();
    assert!(got == want, "the frames arrived byte-identical through TLS");
}
