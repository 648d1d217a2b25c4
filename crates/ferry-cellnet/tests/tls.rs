//! Mutual TLS with a CA and certificates generated in the test (rcgen): CA-verified both
//! ways, host names not checked, client CN must equal the first segment of the HELLO FQCN.
#![cfg(feature = "tls")]

mod common;

use common::*;
use ferry_cellnet::{Cell, CellnetError, Message, ReturnCode, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

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

/// A leaf certificate with CN `cn`, for a host name that is deliberately not "127.0.0.1".
fn leaf(ca: &Ca, cn: &str) -> TlsConfig {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["not-this-host.example".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    TlsConfig::from_pem(
        ca.pem.as_bytes(),
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
    )
    .unwrap()
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
async fn wrong_cn_is_refused() {
    let ca = ca("ferry-test-ca");
    let (server, url) = tls_server(&ca).await;
    // certificate for site-1, claiming to be site-9: READY, then the server closes
    let c = Cell::builder("site-9")
        .unwrap()
        .tls(leaf(&ca, "site-1"))
        .build();
    let _ = c.connect(&url).await;
    eventually(|| !c.is_connected("server")).await;
    let r = c
        .send_request("t", "who", "server", Message::new(), LONG)
        .await;
    assert_ne!(r.return_code(), ReturnCode::Ok);
    assert!(!server.is_connected("site-9"));
    c.shutdown().await;
    server.shutdown().await;
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
