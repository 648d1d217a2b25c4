//! Who is who, with the real binary: certificates made by `ferry certs`, `serve`/`get` over
//! mutual TLS on loopback, and attackers built from the ferry library (a cell with a valid
//! certificate of the same CA that relays for a cell calling itself `site-1`; a second
//! receiver under a connected receiver's name; a peer asking the sender to relay).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ferry::cellnet::{Cell, Message, MsgpackBody, ReturnCode, TlsConfig};
use ferry::core::message::{CancelRequest, CHANNEL, TOPIC_DOWNLOAD};
use ferry::core::RefId;
use ferry::ticket::Ticket;
use ferry::{download_file, DownloadOptions, DownloadService, FileOptions, ServiceOptions};

const LONG: Duration = Duration::from_secs(60);

/// The `ferry: error:` line of a failed command's stderr.
fn error_line(stderr: &[u8]) -> String {
    let s = String::from_utf8_lossy(stderr);
    s.lines()
        .find(|l| l.starts_with("ferry: error:"))
        .unwrap_or_else(|| panic!("no error line in: {s}"))
        .to_string()
}

/// `ferry certs init` and `ferry certs issue NAMES...` in `dir`.
fn make_certs(dir: &Path, names: &[&str]) {
    ferry()
        .args(["certs", "init", "--dir", path_str(dir)])
        .assert()
        .success();
    ferry()
        .args(["certs", "issue", "--dir", path_str(dir)])
        .args(names)
        .assert()
        .success();
}

/// `--tls-cert DIR/NAME.crt --tls-key DIR/NAME.key --tls-ca DIR/rootCA.pem`.
fn tls_args(dir: &Path, name: &str) -> Vec<String> {
    let f = |n: String| dir.join(n).display().to_string();
    vec![
        "--tls-cert".into(),
        f(format!("{name}.crt")),
        "--tls-key".into(),
        f(format!("{name}.key")),
        "--tls-ca".into(),
        f("rootCA.pem".into()),
    ]
}

fn tls_config(dir: &Path, name: &str) -> TlsConfig {
    TlsConfig::from_pem_files(
        dir.join("rootCA.pem"),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
    .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn opts() -> DownloadOptions {
    DownloadOptions {
        per_request_timeout: Duration::from_secs(20),
        max_retries: 1,
        ..DownloadOptions::default()
    }
}

/// `ferry serve --json ARGS...` on loopback: the process and its first ticket.
fn serve_json(args: &[&str]) -> (Proc, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serve(&all)
}

#[test]
fn certs_from_ferry_certs_run_a_mutual_tls_transfer() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    make_certs(&pki, &["server", "site-1"]);
    // keys are private
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.join("site-1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key mode {mode:o}");
    }
    // issuing again without --force keeps what is there
    let a = ferry()
        .args(["certs", "issue", "--dir", path_str(&pki), "site-1"])
        .assert()
        .code(2);
    assert!(error_line(&a.get_output().stderr).contains("--force"));
    // a dotted name is refused with the root to use
    let a = ferry()
        .args(["certs", "issue", "--dir", path_str(&pki), "site-1.j1"])
        .assert()
        .code(2);
    assert!(error_line(&a.get_output().stderr).contains("\"site-1\""));

    let src = d.path().join("model.bin");
    let data = random_file(&src, 2 * 1024 * 1024 + 3, 11);
    let mut args = vec![path_str(&src), "--name", "server", "--allow", "site-1"];
    let server_tls = tls_args(&pki, "server");
    args.extend(server_tls.iter().map(String::as_str));
    let (mut server, ticket) = serve(&args);
    assert!(ticket.parse::<Ticket>().unwrap().tls, "{ticket}");
    let out = d.path().join("out");
    ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .args(tls_args(&pki, "site-1"))
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    assert!(server.wait().success(), "{}", server.stderr_text());
}

/// A cell with a valid certificate for `site-evil` relays for a cell that calls itself
/// `site-1`: the sender refuses it, and `serve --allow site-1` does not count site-1 until the
/// real site-1 comes.
#[test]
fn a_valid_certificate_cannot_download_in_another_receivers_name() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    make_certs(&pki, &["server", "site-1", "site-evil"]);
    let src = d.path().join("model.bin");
    let data = random_file(&src, 1024 * 1024, 12);
    let mut args = vec![path_str(&src), "--name", "server", "--allow", "site-1"];
    let server_tls = tls_args(&pki, "server");
    args.extend(server_tls.iter().map(String::as_str));
    let (mut server, ticket) = serve_json(&args);
    let t: Ticket = ticket.parse().unwrap();

    let loot = d.path().join("loot");
    std::fs::create_dir_all(&loot).unwrap();
    rt().block_on(async {
        let evil = Cell::builder("site-evil")
            .unwrap()
            .tls(tls_config(&pki, "site-evil"))
            .build();
        assert_eq!(evil.connect(&t.url()).await.unwrap().as_str(), "server");
        let relay_url = evil.listen("tcp://127.0.0.1:0").await.unwrap();
        let fake = Cell::new("site-1").unwrap();
        fake.connect(&relay_url).await.unwrap();
        let service = DownloadService::new(&fake, ServiceOptions::default());
        let r = download_file(
            &service,
            &t.source,
            &RefId::new(t.ref_id.clone()),
            &loot,
            "model.bin",
            FileOptions::default(),
            opts(),
        )
        .await;
        let e = r.expect_err("the forged download must fail");
        assert!(e.to_string().contains("unauthenticated"), "{e}");
        service.shutdown().await;
        fake.shutdown().await;
        evil.shutdown().await;
    });
    assert!(list(&loot).is_empty());
    // the sender is still waiting for site-1: nothing counted
    assert!(server.child.try_wait().unwrap().is_none());
    // the real site-1 gets it, and that is what the sender reports
    let out = d.path().join("out");
    ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .args(tls_args(&pki, "site-1"))
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), data);
    assert!(server.wait().success());
    let outcome = server
        .rest()
        .into_iter()
        .map(|l| json(&l))
        .find(|v| v["event"] == "outcome")
        .expect("outcome line");
    assert_eq!(outcome["status"], "completed", "{outcome}");
    let receivers = outcome["objects"][0]["receivers"].as_object().unwrap();
    assert_eq!(
        receivers.keys().collect::<Vec<_>>(),
        ["site-1"],
        "{outcome}"
    );
}

/// A second `ferry get` under a receiver's name while that receiver downloads: refused with a
/// clear error, and the first one finishes. Then a cell relaying for "site-1" sends a pull and
/// a cancel in its name: refused, and site-1's download is not broken.
#[test]
fn a_second_receiver_or_a_forged_cancel_does_not_break_a_receiver() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.bin");
    let data = random_file(&src, 6 * 1024 * 1024, 13);
    let (mut server, ticket) = serve(&[
        path_str(&src),
        "--allow",
        "site-1",
        "--limit-rate",
        "1MiB",
        "--chunk",
        "256KiB",
    ]);
    let t: Ticket = ticket.parse().unwrap();
    let out = d.path().join("out");
    let mut get = Proc::spawn(&[
        "--json",
        "get",
        &ticket,
        "-o",
        path_str(&out),
        "--name",
        "site-1",
    ]);
    get.line_where(|l| json(l)["bytes"].as_u64().is_some_and(|b| b > 0));

    // the same name again: exit 2, naming the problem
    let out2 = d.path().join("out2");
    let a = ferry()
        .args(["get", &ticket, "-o", path_str(&out2), "--name", "site-1"])
        .assert()
        .code(2);
    let line = error_line(&a.get_output().stderr);
    assert!(
        line.contains("already holds the name \"site-1\"") && line.contains("--name"),
        "{line}"
    );
    assert!(list(&out2).is_empty());

    // a pull and a cancel in site-1's name, through a relay
    rt().block_on(async {
        let relay = Cell::new("site-evil").unwrap();
        relay.connect(&t.url()).await.unwrap();
        let relay_url = relay.listen("tcp://127.0.0.1:0").await.unwrap();
        let fake = Cell::new("site-1").unwrap();
        fake.connect(&relay_url).await.unwrap();
        // a cancel in site-1's name, as a request so that the answer can be read
        let cancel =
            ferry::core::message::encode(&CancelRequest::new(RefId::new(t.ref_id.clone())));
        let r = fake
            .send_request(
                CHANNEL,
                TOPIC_DOWNLOAD,
                &t.source,
                Message::from_msgpack(MsgpackBody::from_bytes(bytes::Bytes::from(cancel))),
                LONG,
            )
            .await;
        assert_eq!(
            r.return_code(),
            ReturnCode::Unauthenticated,
            "{:?}",
            r.error_text()
        );
        // and a whole download in its name
        let service = DownloadService::new(&fake, ServiceOptions::default());
        let loot = tempfile::tempdir().unwrap();
        let rid = RefId::new(t.ref_id.clone());
        let r = download_file(
            &service,
            &t.source,
            &rid,
            loot.path(),
            "x.bin",
            FileOptions::default(),
            opts(),
        )
        .await;
        assert!(r.is_err());
        assert!(list(loot.path()).is_empty());
        service.shutdown().await;
        fake.shutdown().await;
        relay.shutdown().await;
    });

    // the real site-1 is not disturbed
    assert!(get.wait().success(), "{}", get.stderr_text());
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), data);
    assert!(server.wait().success(), "{}", server.stderr_text());
}

/// `ferry serve` carries nothing between its peers.
#[test]
fn serve_does_not_relay_between_its_peers() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 1000, 14);
    let (mut server, ticket) = serve(&[path_str(&src)]);
    let t: Ticket = ticket.parse().unwrap();
    rt().block_on(async {
        let a = Cell::new("a").unwrap();
        a.connect(&t.url()).await.unwrap();
        let b = Cell::new("b").unwrap();
        b.connect(&t.url()).await.unwrap();
        let handled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = handled.clone();
        b.register_request_handler("x", "y", move |_m: Message| {
            h.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Message::new() }
        });
        let r = a.send_request("x", "y", "b", Message::new(), LONG).await;
        assert_eq!(
            r.return_code(),
            ReturnCode::CommError,
            "{:?}",
            r.error_text()
        );
        assert!(r.error_text().unwrap().contains("does not relay"));
        assert!(!handled.load(std::sync::atomic::Ordering::SeqCst));
        a.shutdown().await;
        b.shutdown().await;
    });
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(130));
}

#[test]
fn get_refuses_a_listener_that_is_not_the_tickets_sender() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    make_certs(&pki, &["server", "site-1", "site-2"]);
    let src = d.path().join("a.bin");
    random_file(&src, 1000, 15);
    // site-1 listens with its own certificate; the ticket is edited to name "server"
    let mut args = vec![path_str(&src), "--name", "site-1", "--ticket-format", "url"];
    let site1_tls = tls_args(&pki, "site-1");
    args.extend(site1_tls.iter().map(String::as_str));
    let (mut server, ticket) = serve(&args);
    let forged = ticket.replace("/site-1/", "/server/");
    assert_ne!(forged, ticket);
    let out = d.path().join("out");
    let a = ferry()
        .args(["get", &forged, "-o", path_str(&out)])
        .args(tls_args(&pki, "site-2"))
        .assert()
        .code(2);
    let line = error_line(&a.get_output().stderr);
    assert!(
        line.contains("\"site-1\"") && line.contains("\"server\"") && line.contains("certificate"),
        "{line}"
    );
    assert!(list(&out).is_empty());
    // without TLS the name is still checked (a wrong address, another program)
    let (mut plain, ticket) = serve(&[path_str(&src), "--name", "other", "--ticket-format", "url"]);
    let forged = ticket.replace("/other/", "/server/");
    let a = ferry()
        .args(["get", &forged, "-o", path_str(&out)])
        .assert()
        .code(2);
    let line = error_line(&a.get_output().stderr);
    assert!(
        line.contains("\"other\"") && line.contains("\"server\""),
        "{line}"
    );
    for s in [&mut server, &mut plain] {
        s.signal("INT");
        assert_eq!(s.wait().code(), Some(130));
    }
}

#[test]
fn serve_with_another_cells_certificate_exits_2() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    make_certs(&pki, &["site-1"]);
    let src = d.path().join("a.bin");
    random_file(&src, 100, 16);
    let a = ferry()
        .args(["serve", path_str(&src), "--listen", "tcp://127.0.0.1:0"])
        .args(["--name", "server"])
        .args(tls_args(&pki, "site-1"))
        .assert()
        .code(2);
    let line = error_line(&a.get_output().stderr);
    assert!(
        line.contains("\"site-1\"") && line.contains("\"server\"") && line.contains("--tls-cert"),
        "{line}"
    );
}

#[test]
fn allow_without_tls_warns() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("a.bin");
    random_file(&src, 100, 17);
    let (mut server, _ticket) = serve(&[path_str(&src), "--allow", "site-1"]);
    server.signal("INT");
    assert_eq!(server.wait().code(), Some(130));
    let err = server.stderr_text();
    assert!(
        err.contains("warning: --allow without TLS") && err.contains("anyone"),
        "{err}"
    );
    let help = ferry().args(["serve", "--help"]).assert().success();
    let help = String::from_utf8_lossy(&help.get_output().stdout).to_string();
    assert!(help.contains("anyone who can reach the port"), "{help}");
}

/// Certificate files that cannot work say which option and what to do.
#[test]
fn unusable_certificate_files_name_the_option() {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("pki");
    make_certs(&pki, &["ferry-sender"]);
    let src = d.path().join("a.bin");
    random_file(&src, 100, 18);
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let good = |n: &str| pki.join(n).display().to_string();
    for (opt, args) in [
        (
            "--tls-ca",
            [
                good("ferry-sender.crt"),
                good("ferry-sender.key"),
                path_str(&junk).to_string(),
            ],
        ),
        (
            "--tls-cert",
            [
                path_str(&junk).to_string(),
                good("ferry-sender.key"),
                good("rootCA.pem"),
            ],
        ),
        (
            "--tls-key",
            [
                good("ferry-sender.crt"),
                path_str(&junk).to_string(),
                good("rootCA.pem"),
            ],
        ),
    ] {
        let a = ferry()
            .args(["serve", path_str(&src), "--listen", "tcp://127.0.0.1:0"])
            .args([
                "--tls-cert",
                &args[0],
                "--tls-key",
                &args[1],
                "--tls-ca",
                &args[2],
            ])
            .assert()
            .code(2);
        let line = error_line(&a.get_output().stderr);
        assert!(
            line.contains(&format!("{opt} {}", junk.display())) && line.contains("PEM"),
            "{opt}: {line}"
        );
    }
}

/// Run a shell script in `dir`; `None` when openssl is not on this machine.
fn sh(dir: &Path, script: &str) -> Option<()> {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("openssl not found; skipping the openssl recipe");
        return None;
    }
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "script failed: {script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

/// The ```sh block after `<!-- openssl-recipe -->` in docs/user-guide.md.
fn guide_openssl_recipe() -> String {
    let guide = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/user-guide.md"),
    )
    .unwrap();
    let at = guide
        .find("<!-- openssl-recipe -->")
        .expect("the guide marks its openssl recipe");
    guide[at..]
        .lines()
        .skip_while(|l| l.trim() != "```sh")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_openssl_recipe_in_the_guide_makes_certificates_ferry_accepts() {
    let d = tempfile::tempdir().unwrap();
    let recipe = guide_openssl_recipe();
    assert!(recipe.contains("-extfile"), "{recipe}");
    if sh(d.path(), &recipe).is_none() {
        return;
    }
    let pki = d.path();
    let src = d.path().join("a.bin");
    let data = random_file(&src, 300_000, 19);
    let (mut server, ticket) = serve(&[
        path_str(&src),
        "--name",
        "server",
        "--tls-cert",
        path_str(&pki.join("server.crt")),
        "--tls-key",
        path_str(&pki.join("server.key")),
        "--tls-ca",
        path_str(&pki.join("rootCA.pem")),
    ]);
    let out = d.path().join("out");
    ferry()
        .args(["get", &ticket, "-o", path_str(&out)])
        .args(["--tls-cert", path_str(&pki.join("site-1.crt"))])
        .args(["--tls-key", path_str(&pki.join("site-1.key"))])
        .args(["--tls-ca", path_str(&pki.join("rootCA.pem"))])
        .assert()
        .success();
    assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), data);
    assert!(server.wait().success());

    // the same recipe without the extensions file makes X.509 v1, which ferry explains
    sh(
        pki,
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout v1.key -out v1.csr -subj /CN=server 2>/dev/null
         openssl x509 -req -in v1.csr -CA rootCA.pem -CAkey rootCA.key -CAcreateserial -days 30 -out v1.crt 2>/dev/null",
    );
    let a = ferry()
        .args([
            "serve",
            path_str(&src),
            "--listen",
            "tcp://127.0.0.1:0",
            "--name",
            "server",
        ])
        .args(["--tls-cert", path_str(&pki.join("v1.crt"))])
        .args(["--tls-key", path_str(&pki.join("v1.key"))])
        .args(["--tls-ca", path_str(&pki.join("rootCA.pem"))])
        .assert()
        .code(2);
    let line = error_line(&a.get_output().stderr);
    assert!(
        line.contains("--tls-cert")
            && line.contains("v1.crt")
            && line.contains("X.509 v1")
            && line.contains("v3"),
        "{line}"
    );
}
