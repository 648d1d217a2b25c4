//! `ferry certs`: a project CA and cell certificates, so that mutual TLS takes two commands.
//!
//! `ferry certs init` makes `rootCA.pem` and `rootCA.key`; `ferry certs issue NAME...` makes
//! `NAME.crt` and `NAME.key` signed by that CA, with CN = NAME (a cell named `NAME` or
//! `NAME.anything` proves its name with it). The certificates are what NVFlare 2.9 accepts too
//! (it verifies its own chain with web-PKI rules): X.509 v3, a CA with critical
//! `basicConstraints` and `keyUsage` (certSign, cRLSign, digitalSignature), cells with
//! `digitalSignature`, serverAuth + clientAuth, a subject alternative name and key
//! identifiers. Keys are ECDSA P-256, written with mode 0600; existing files are kept unless
//! `--force`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

use crate::args::{CertsArgs, CertsCommand, CertsInitArgs, CertsIssueArgs};
use crate::exit::{io_reason, CmdResult, Failure};
use crate::ui;

/// File names inside `--dir`.
const CA_CERT: &str = "rootCA.pem";
const CA_KEY: &str = "rootCA.key";

/// Run `ferry certs`.
pub fn run(args: CertsArgs, json: bool) -> CmdResult {
    match args.command {
        CertsCommand::Init(a) => init(&a, json),
        CertsCommand::Issue(a) => issue(&a, json),
    }
}

fn init(a: &CertsInitArgs, json: bool) -> CmdResult {
    crate::cells::check_name("--ca-name", &a.ca_name)?;
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| Failure::usage(format!("--dir {}: {}", a.dir.display(), io_reason(&e))))?;
    let (cert_path, key_path) = (a.dir.join(CA_CERT), a.dir.join(CA_KEY));
    refuse_overwrite(&[&cert_path, &key_path], a.force)?;
    let key = KeyPair::generate().map_err(|e| Failure::transfer(format!("key generation: {e}")))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| Failure::transfer(format!("CA parameters: {e}")))?;
    params.distinguished_name = common_name(&a.ca_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, a.days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| Failure::transfer(format!("self-signing the CA: {e}")))?;
    write_pair(&cert_path, &cert.pem(), &key_path, &key.serialize_pem())?;
    let ca = cert_path.display();
    if json {
        ui::json_line(&json!({
            "event": "ca",
            "cert": cert_path,
            "key": key_path,
            "days": a.days,
        }));
    } else {
        ui::out_line(&format!(
            "created the project CA {ca} (key {}, valid {} days); keep the key private\nnext: ferry certs issue --dir {} NAME... (one certificate per sender or receiver name)",
            key_path.display(),
            a.days,
            a.dir.display()
        ));
    }
    Ok(())
}

fn issue(a: &CertsIssueArgs, json: bool) -> CmdResult {
    for name in &a.names {
        crate::cells::check_name("NAME", name)?;
        if name.contains('.') {
            let root = name.split('.').next().unwrap_or(name);
            return Err(Failure::usage(format!(
                "NAME {name:?}: certificates are issued per root name (the first segment); issue one for {root:?}, and {name:?} runs with it"
            )));
        }
    }
    let (ca_cert, ca_key) = (a.dir.join(CA_CERT), a.dir.join(CA_KEY));
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            Failure::usage(format!(
                "{}: {}; create the CA first with `ferry certs init --dir {}`",
                p.display(),
                io_reason(&e),
                a.dir.display()
            ))
        })
    };
    let (ca_pem, ca_key_pem) = (read(&ca_cert)?, read(&ca_key)?);
    let key = KeyPair::from_pem(&ca_key_pem).map_err(|e| {
        Failure::usage(format!(
            "{}: not a usable private key ({e})",
            ca_key.display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(|e| {
        Failure::usage(format!(
            "{}: not a usable CA certificate ({e})",
            ca_cert.display()
        ))
    })?;
    let paths: Vec<(PathBuf, PathBuf)> = a
        .names
        .iter()
        .map(|n| {
            (
                a.dir.join(format!("{n}.crt")),
                a.dir.join(format!("{n}.key")),
            )
        })
        .collect();
    let all: Vec<&PathBuf> = paths.iter().flat_map(|(c, k)| [c, k]).collect();
    refuse_overwrite(&all, a.force)?;
    for (name, (cert_path, key_path)) in a.names.iter().zip(&paths) {
        let key =
            KeyPair::generate().map_err(|e| Failure::transfer(format!("key generation: {e}")))?;
        let mut params = CertificateParams::new(san(name))
            .map_err(|e| Failure::transfer(format!("parameters for {name:?}: {e}")))?;
        params.distinguished_name = common_name(name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, a.days);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| Failure::transfer(format!("signing the certificate of {name:?}: {e}")))?;
        write_pair(cert_path, &cert.pem(), key_path, &key.serialize_pem())?;
        if json {
            ui::json_line(&json!({
                "event": "cert",
                "name": name,
                "cert": cert_path,
                "key": key_path,
                "ca": ca_cert,
                "days": a.days,
            }));
        } else {
            ui::out_line(&format!(
                "{name}: --tls-cert {} --tls-key {} --tls-ca {}",
                cert_path.display(),
                key_path.display(),
                ca_cert.display()
            ));
        }
    }
    Ok(())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Subject alternative names: the name itself when it is a DNS label (host names are not
/// checked by ferry or NVFlare, but some TLS stacks want a SAN), and `localhost`.
fn san(name: &str) -> Vec<String> {
    let mut v = Vec::new();
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name != "localhost"
    {
        v.push(name.to_string());
    }
    v.push("localhost".to_string());
    v
}

/// Valid from an hour ago (clocks differ) for `days` days.
fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

fn refuse_overwrite(paths: &[&PathBuf], force: bool) -> CmdResult {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(Failure::usage(format!(
            "{} exists; keep it, or pass --force to replace it (certificates issued with the old CA stop working when the CA is replaced)",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// Write a certificate (0644) and its key (0600, never readable by others, even briefly).
fn write_pair(cert_path: &Path, cert: &str, key_path: &Path, key: &str) -> CmdResult {
    let fail = |p: &Path, e: std::io::Error| {
        Failure::usage(format!("cannot write {}: {}", p.display(), io_reason(&e)))
    };
    write_private(key_path, key.as_bytes()).map_err(|e| fail(key_path, e))?;
    std::fs::write(cert_path, cert).map_err(|e| fail(cert_path, e))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    // an existing file keeps its mode on open: tighten it
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans() {
        assert_eq!(san("site-1"), vec!["site-1", "localhost"]);
        assert_eq!(san("a_b"), vec!["localhost"]);
        assert_eq!(san("localhost"), vec!["localhost"]);
    }
}
