use rustls::pki_types::CertificateDer;

use super::config::TlsConfig;
use super::der::{cert_version, common_name, tlv};
use super::handshake_err;
use crate::error::{CellnetError, TlsFile};

fn cert_with_cn(cn: &str) -> CertificateDer<'static> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "ferry");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

#[test]
fn extracts_cn() {
    assert_eq!(
        common_name(&cert_with_cn("site-1")).as_deref(),
        Some("site-1")
    );
    assert_eq!(
        common_name(&cert_with_cn("server")).as_deref(),
        Some("server")
    );
}

#[test]
fn io_errors_carrying_rustls_errors_are_tls_errors() {
    use std::io::{Error, ErrorKind};
    let alert = |a| Error::new(ErrorKind::InvalidData, rustls::Error::AlertReceived(a));
    // The peer refused our certificate.
    let e = CellnetError::from(alert(rustls::AlertDescription::UnknownCA));
    assert!(
        matches!(&e, CellnetError::Tls(why) if why.contains("refused our TLS certificate")),
        "{e:?}"
    );
    let e = CellnetError::from(alert(rustls::AlertDescription::DecryptError));
    assert!(
        matches!(&e, CellnetError::Tls(why) if why.contains("refused our TLS certificate")),
        "{e:?}"
    );
    // Another alert: still TLS, but not a certificate refusal.
    let e = CellnetError::from(alert(rustls::AlertDescription::HandshakeFailure));
    assert!(
        matches!(&e, CellnetError::Tls(why) if why.contains("HandshakeFailure") && !why.contains("certificate")),
        "{e:?}"
    );
    // We refused theirs.
    let e = CellnetError::from(Error::new(
        ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    ));
    assert!(
        matches!(&e, CellnetError::Tls(why) if why.contains("UnknownIssuer")),
        "{e:?}"
    );
    // Plain socket errors stay I/O errors, with their kind.
    let e = CellnetError::from(Error::from(ErrorKind::ConnectionRefused));
    assert!(
        matches!(&e, CellnetError::Io(io) if io.kind() == ErrorKind::ConnectionRefused),
        "{e:?}"
    );
    let e = CellnetError::from(Error::other("not tls"));
    assert!(matches!(e, CellnetError::Io(_)), "{e:?}");
    // During the TLS handshake every failure is a TLS failure.
    assert!(matches!(
        handshake_err(Error::from(ErrorKind::ConnectionReset)),
        CellnetError::Tls(_)
    ));
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// The same certificate as X.509 v1: its TBSCertificate without the `[0]` version field
/// (the signature no longer matches, which the version check does not look at).
fn as_v1(cert: &CertificateDer<'_>) -> CertificateDer<'static> {
    let (_, body, _) = tlv(cert.as_ref()).unwrap();
    let (_, tbs, rest) = tlv(body).unwrap();
    let (tag, _, tbs_rest) = tlv(tbs).unwrap();
    assert_eq!(tag, 0xa0);
    let mut inner = der(0x30, tbs_rest);
    inner.extend_from_slice(rest);
    CertificateDer::from(der(0x30, &inner))
}

fn pem(der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64_encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(s, "{}", std::str::from_utf8(line).unwrap());
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn versions() {
    let v3 = cert_with_cn("site-1");
    assert_eq!(cert_version(&v3), Some(3));
    let v1 = as_v1(&v3);
    assert_eq!(cert_version(&v1), Some(1));
    assert_eq!(common_name(&v1).as_deref(), Some("site-1"));
    assert_eq!(cert_version(&CertificateDer::from(vec![0x30, 0x00])), None);
}

/// (CA PEM, certificate PEM, key PEM) of a self-signed v3 certificate for `cn`.
fn self_signed(cn: &str) -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), cert.pem(), key.serialize_pem())
}

fn problem(r: Result<TlsConfig, CellnetError>) -> (TlsFile, String) {
    match r {
        Err(CellnetError::Certificate { file, problem, .. }) => (file, problem),
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn v1_certificates_are_refused_with_the_fix() {
    let (ca, cert, key) = self_signed("site-1");
    assert!(TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).is_ok());
    let der = rustls_pemfile::certs(&mut cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let v1 = pem(&as_v1(&der));
    let (file, why) = problem(TlsConfig::from_pem(
        ca.as_bytes(),
        v1.as_bytes(),
        key.as_bytes(),
    ));
    assert_eq!(file, TlsFile::Cert);
    assert!(why.contains("X.509 v1") && why.contains("v3"), "{why}");
    assert!(why.contains("-extfile"), "{why}");
}

#[test]
fn files_that_are_not_pem_say_which_file() {
    let (ca, cert, key) = self_signed("site-1");
    let junk = b"this is not a certificate".as_slice();
    let (file, why) = problem(TlsConfig::from_pem(junk, cert.as_bytes(), key.as_bytes()));
    assert_eq!(file, TlsFile::Ca);
    assert!(why.contains("not a PEM file"), "{why}");
    let (file, _) = problem(TlsConfig::from_pem(ca.as_bytes(), junk, key.as_bytes()));
    assert_eq!(file, TlsFile::Cert);
    let (file, why) = problem(TlsConfig::from_pem(ca.as_bytes(), cert.as_bytes(), junk));
    assert_eq!(file, TlsFile::Key);
    assert!(why.contains("no private key"), "{why}");
    // a key for another certificate
    let (_, _, other_key) = self_signed("site-1");
    let (file, why) = problem(TlsConfig::from_pem(
        ca.as_bytes(),
        cert.as_bytes(),
        other_key.as_bytes(),
    ));
    assert_eq!(file, TlsFile::Key);
    assert!(why.contains("does not go with the certificate"), "{why}");
    // a DER file where PEM is expected
    let der = rustls_pemfile::certs(&mut cert.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, why) = problem(TlsConfig::from_pem(
        der.as_ref(),
        cert.as_bytes(),
        key.as_bytes(),
    ));
    assert!(why.contains("DER"), "{why}");
}

#[test]
fn garbage_is_none() {
    assert_eq!(
        common_name(&CertificateDer::from(vec![0x30, 0x82, 0xff])),
        None
    );
    assert_eq!(common_name(&CertificateDer::from(vec![])), None);
    assert_eq!(common_name(&CertificateDer::from(vec![0x30, 0x00])), None);
    let good = cert_with_cn("x");
    for cut in [1, 10, 50, good.len() / 2] {
        let _ = common_name(&CertificateDer::from(good[..cut].to_vec()));
    }
}
