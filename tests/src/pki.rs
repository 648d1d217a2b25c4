//! [`TestPki`]: a throw-away certificate authority and cell certificates for mutual-TLS tests,
//! usable by both Ferry (PEM strings or files) and NVFlare (file paths).
//!
//! NVFlare is strict about certificates: at cell creation it validates its own chain with
//! `cryptography`'s path verifier (web-PKI CA rules), so the CA carries critical
//! `basicConstraints` and `keyUsage` (certSign, crlSign, digitalSignature) and every
//! certificate is X.509 v3 with subject/authority key identifiers. Under mTLS NVFlare binds a
//! cell's FQCN root to the certificate's common name, so a cell certificate is issued per
//! FQCN root (`server`, `site-1`, ...). Keys are ECDSA P-256 (rcgen's default), which both
//! TLS stacks accept.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority living in a temporary directory.
pub struct TestPki {
    dir: tempfile::TempDir,
    ca_pem: String,
    ca_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A cell certificate issued by a [`TestPki`], with its files on disk.
#[derive(Debug, Clone)]
pub struct CellCert {
    /// Common name = the FQCN root of the cell that presents it.
    pub cn: String,
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key (PKCS#8), PEM.
    pub key_pem: String,
    /// Where `cert_pem` is written.
    pub cert_path: PathBuf,
    /// Where `key_pem` is written.
    pub key_path: PathBuf,
}

impl TestPki {
    /// A new CA (`CN=ferry-test-ca`), written to `<dir>/ca.pem`.
    pub fn new() -> Result<TestPki> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-pki-")
            .tempdir()
            .context("creating the PKI dir")?;
        let key = KeyPair::generate().context("CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("ferry-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        let ca_pem = cert.pem();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).context("writing ca.pem")?;
        Ok(TestPki {
            dir,
            ca_pem,
            ca_path,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of the CA certificate file.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The directory holding every file of this PKI (deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issue a certificate for the cell(s) whose FQCN root is `cn`, written to
    /// `<dir>/<cn>.pem` and `<dir>/<cn>.key`.
    ///
    /// Subject alternative names: DNS `cn` and `localhost`, IP `127.0.0.1`, so a TLS client
    /// that does check host names accepts it for loopback too. Extended key usage: server
    /// and client authentication (one certificate serves a cell in either role).
    pub fn issue(&self, cn: &str) -> Result<CellCert> {
        let key = KeyPair::generate().context("cell key")?;
        let mut params = CertificateParams::new(vec![cn.to_string(), "localhost".to_string()])
            .with_context(|| format!("SAN for {cn:?}"))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name = name(cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing the certificate for {cn:?}"))?;
        let cert_path = self.dir.path().join(format!("{cn}.pem"));
        let key_path = self.dir.path().join(format!("{cn}.key"));
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        std::fs::write(&cert_path, &cert_pem).context("writing the cell certificate")?;
        std::fs::write(&key_path, &key_pem).context("writing the cell key")?;
        Ok(CellCert {
            cn: cn.to_string(),
            cert_pem,
            key_pem,
            cert_path,
            key_path,
        })
    }

    /// The `--tls-ca/--tls-cert/--tls-key` arguments that make a peer script use `cert`.
    pub fn py_tls_args(&self, cert: &CellCert) -> Vec<OsString> {
        vec![
            "--tls-ca".into(),
            self.ca_path.clone().into(),
            "--tls-cert".into(),
            cert.cert_path.clone().into(),
            "--tls-key".into(),
            cert.key_path.clone().into(),
        ]
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}
