//! Mutual TLS with a CA and certificates generated in the test (rcgen): CA-verified both
//! ways, host names not checked, client CN must equal the first segment of the HELLO FQCN.
#![cfg(feature = "tls")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use ferry_cellnet::frame::{Frame, FrameDecoder, FrameType};
use ferry_cellnet::headers::keys;
use ferry_cellnet::{Cell, CellnetError, Headers, Message, ReturnCode, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// A leaf certificate with CN `cn`, for a host name that is deliberately not "127.0.0.1":
/// (certificate PEM, key PEM).
fn leaf_pem(ca: &Ca, cn: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["not-this-host.example".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn leaf(ca: &Ca, cn: &str) -> TlsConfig {
    let (cert, key) = leaf_pem(ca, cn);
    TlsConfig::from_pem(ca.pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
}

async fn tls_server(ca: &Ca) -> (Cell, String) {
    init_tracing();
    let server = Cell::builder("server")
        .unwrap()
        .tls(leaf(ca, "server"))
        .build();
    server.register_request_handler("t", "who", |m: Message| async move {
        Message::from_value(m.origin().unwrap_or_default())
    });
    let url = server.listen("stcp://127.0.0.1:0").await.unwrap();
    assert!(url.starts_with("stcp://127.0.0.1:"));
    (server, url)
}

#[tokio::test]
async fn mutual_tls_request_reply_and_job_cell() {
    let ca = ca("ferry-test-ca");
    let (server, url) = tls_server(&ca).await;
    for name in ["site-1", "site-1.job7"] {
        let c = Cell::builder(name)
            .unwrap()
            .tls(leaf(&ca, "site-1"))
            .build();
        assert_eq!(c.connect(&url).await.unwrap().as_str(), "server");
        let r = c
            .send_request("t", "who", "server", Message::new(), LONG)
            .await;
        assert_eq!(
            r.return_code(),
            ReturnCode::Ok,
            "{name}: {:?}",
            r.error_text()
        );
        assert_eq!(r.value().unwrap().as_str(), Some(name));
        c.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_cell_refuses_to_run_with_a_certificate_for_another_name() {
    let ca = ca("ferry-test-ca");
    // listening as server with site-1's certificate
    let server = Cell::builder("server")
        .unwrap()
        .tls(leaf(&ca, "site-1"))
        .build();
    match server.listen("stcp://127.0.0.1:0").await {
        Err(CellnetError::OwnIdentity {
            certificate, fqcn, ..
        }) => assert_eq!((certificate.as_str(), fqcn.as_str()), ("site-1", "server")),
        other => panic!("expected OwnIdentity, got {other:?}"),
    }
    // connecting as site-9 with site-1's certificate
    let (server, url) = tls_server(&ca).await;
    let c = Cell::builder("site-9")
        .unwrap()
        .tls(leaf(&ca, "site-1"))
        .build();
    let err = c.connect(&url).await.unwrap_err();
    assert!(
        matches!(&err, CellnetError::OwnIdentity { certificate, fqcn, .. } if certificate == "site-1" && fqcn == "site-9"),
        "{err:?}"
    );
    assert!(server.connected_peers().is_empty());
    c.shutdown().await;
    server.shutdown().await;
}

/// A hand-driven TLS client with a certificate for `cn` (same CA as the server): it can say
/// whatever it likes in HELLO and in its messages.
async fn raw_tls_client(
    ca: &Ca,
    cn: &str,
    url: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let (cert, key) = leaf_pem(ca, cn);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("stcp://"))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("not-this-host.example".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Read one frame off any byte stream.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Option<Frame> {
    let d = FrameDecoder::new(1 << 30, 65535);
    loop {
        if let Some(f) = d.decode(buf).unwrap() {
            return Some(f);
        }
        match tokio::time::timeout(LONG, s.read_buf(buf))
            .await
            .expect("peer silent")
        {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_certificate_for_another_cell_is_refused_with_both_names() {
    let ca = ca("ferry-test-ca");
    let (server, url) = tls_server(&ca).await;
    // a valid site-evil certificate, HELLO as site-1: READY carries the refusal, then close
    let mut s = raw_tls_client(&ca, "site-evil", &url).await;
    s.write_all(&frame(
        FrameType::Hello,
        0,
        vec![],
        hello_payload("site-1").to_vec(),
    ))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    let ready = read_frame(&mut s, &mut buf).await.unwrap();
    assert_eq!(ready.frame_type(), Some(FrameType::Ready));
    let text = String::from_utf8_lossy(&ready.payload).to_string();
    assert!(
        text.contains("authenticated as \"site-evil\" but claimed endpoint \"site-1\""),
        "{text}"
    );
    assert!(read_frame(&mut s, &mut buf).await.is_none());
    assert!(!server.is_connected("site-1"));
    server.shutdown().await;
}

#[tokio::test]
async fn a_proven_cell_cannot_send_in_another_cells_name() {
    let ca = ca("ferry-test-ca");
    let (server, url) = tls_server(&ca).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    server.register_request_handler("t", "who", move |m: Message| {
        h.fetch_add(1, Ordering::SeqCst);
        async move { Message::from_value(m.origin().unwrap_or_default()) }
    });
    // HELLO as site-evil (its certificate's name), then cn__origin=site-1 on a request
    let mut s = raw_tls_client(&ca, "site-evil", &url).await;
    s.write_all(&frame(
        FrameType::Hello,
        0,
        vec![],
        hello_payload("site-evil").to_vec(),
    ))
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(
        read_frame(&mut s, &mut buf).await.unwrap().frame_type(),
        Some(FrameType::Ready)
    );
    let mut h = Headers::new();
    for (k, v) in [
        (keys::MSG_TYPE, "req"),
        (keys::ORIGIN, "site-1"),
        (keys::DESTINATION, "server"),
        (keys::CHANNEL, "t"),
        (keys::TOPIC, "who"),
        (keys::REQ_ID, "r1"),
        (keys::PAYLOAD_ENCODING, "none"),
    ] {
        h.insert(k, v);
    }
    h.insert(keys::REPLY_EXPECTED, true);
    s.write_all(&frame(FrameType::Data, 1, h.encode(), vec![]))
        .await
        .unwrap();
    let reply = loop {
        let f = read_frame(&mut s, &mut buf).await.expect("an answer");
        if f.frame_type() == Some(FrameType::Data) {
            break Headers::decode(&f.headers).unwrap();
        }
    };
    assert_eq!(reply.get_str(keys::MSG_TYPE), Some("return"));
    assert_eq!(reply.get_str(keys::RETURN_CODE), Some("unauthenticated"));
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_connecting_side_checks_the_listeners_certificate() {
    let ca = ca("ferry-test-ca");
    // a listener presenting site-1's certificate that calls itself server in READY
    let (cert, key) = leaf_pem(&ca, "site-1");
    let chain: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("stcp://{}", l.local_addr().unwrap());
    let fake = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut s = tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
            .accept(tcp)
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let hello = read_frame(&mut s, &mut buf).await.unwrap();
        assert_eq!(hello.frame_type(), Some(FrameType::Hello));
        s.write_all(&frame(
            FrameType::Ready,
            0,
            vec![],
            hello_payload_sync("server").to_vec(),
        ))
        .await
        .unwrap();
        // hold the connection until the client leaves
        let _ = read_frame(&mut s, &mut buf).await;
    });
    let c = Cell::builder("site-2")
        .unwrap()
        .tls(leaf(&ca, "site-2"))
        .build();
    match c.connect(&url).await {
        Err(CellnetError::PeerIdentity {
            certificate,
            claimed,
        }) => {
            assert_eq!(
                (certificate.as_str(), claimed.as_str()),
                ("site-1", "server")
            )
        }
        other => panic!("expected PeerIdentity, got {other:?}"),
    }
    assert!(!c.is_connected("server"));
    c.shutdown().await;
    fake.await.unwrap();
}

#[tokio::test]
async fn certificate_from_another_ca_fails_the_handshake() {
    let ca1 = ca("ferry-test-ca");
    let other = ca("someone-else");
    let (server, url) = tls_server(&ca1).await;
    // client cert signed by a foreign CA (client trusts the right CA): server rejects it
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "site-1");
    let cert = p.signed_by(&key, &other.issuer).unwrap();
    let cfg = TlsConfig::from_pem(
        ca1.pem.as_bytes(),
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let c = Cell::builder("site-1").unwrap().tls(cfg).build();
    // TLS 1.3: the client's handshake is over before the server checks its certificate, so
    // the refusal arrives as an alert on the client's first read; it is still a TLS error.
    let err = c.connect(&url).await.unwrap_err();
    match &err {
        CellnetError::Tls(why) => assert!(
            why.contains("refused our TLS certificate") && why.contains("UnknownCA"),
            "{why}"
        ),
        other => panic!("expected CellnetError::Tls, got {other:?}"),
    }
    // client that trusts only the other CA rejects the server
    let c2 = Cell::builder("site-1")
        .unwrap()
        .tls(leaf(&other, "site-1"))
        .build();
    let err = c2.connect(&url).await.unwrap_err();
    match &err {
        CellnetError::Tls(why) => assert!(why.contains("UnknownIssuer"), "{why}"),
        other => panic!("expected CellnetError::Tls, got {other:?}"),
    }
    assert!(server.connected_peers().is_empty());
    c.shutdown().await;
    c2.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn certificate_from_a_look_alike_ca_is_a_tls_refusal() {
    // Same CA name, other key: the server finds the issuer by name, the signature fails.
    let real = ca("ferry-test-ca");
    let fake = ca("ferry-test-ca");
    let (server, url) = tls_server(&real).await;
    let with_real_ca = {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "site-1");
        let cert = p.signed_by(&key, &fake.issuer).unwrap();
        TlsConfig::from_pem(
            real.pem.as_bytes(),
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
        )
        .unwrap()
    };
    let c = Cell::builder("site-1").unwrap().tls(with_real_ca).build();
    match c.connect(&url).await {
        Err(CellnetError::Tls(why)) => {
            assert!(why.contains("refused our TLS certificate"), "{why}")
        }
        other => panic!("expected CellnetError::Tls, got {other:?}"),
    }
    assert!(server.connected_peers().is_empty());
    c.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn plain_tcp_to_a_tls_listener_fails() {
    let ca = ca("ferry-test-ca");
    let (server, url) = tls_server(&ca).await;
    let c = Cell::new("site-1").unwrap();
    let plain = url.replace("stcp://", "tcp://");
    assert!(c.connect(&plain).await.is_err());
    c.shutdown().await;
    server.shutdown().await;
}
