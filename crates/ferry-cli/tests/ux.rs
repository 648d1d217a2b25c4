//! What the command offers around the transfers: shell completions, manual pages, `FERRY_*`
//! environment variables, `-q` and `-v`. Real `ferry` processes on loopback.

mod common;

use common::*;
use ferry::ticket::Ticket;
use std::path::Path;

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn out_of(a: &assert_cmd::assert::Assert) -> (String, String) {
    let o = a.get_output();
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn completion_scripts_for_each_shell() {
    for (shell, marker) in [
        ("bash", "_ferry()"),
        ("zsh", "#compdef ferry"),
        ("fish", "complete -c ferry"),
    ] {
        let a = ferry().args(["completions", shell]).assert().success();
        let (out, _) = out_of(&a);
        assert!(out.contains(marker), "{shell}: {out:.300}");
        // subcommands and their options are in it
        for word in ["serve", "get", "ticket-format", "resume", "tls-cert"] {
            assert!(out.contains(word), "{shell} completes {word}");
        }
    }
    ferry().args(["completions", "tcsh"]).assert().code(2);
}

#[test]
fn manual_pages() {
    let a = ferry().arg("man").assert().success();
    let (page, _) = out_of(&a);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ferry"),
        "{page:.300}"
    );
    for word in ["serve", "get", "completions", "Exit codes"] {
        assert!(page.contains(word), "ferry(1) mentions {word}");
    }
    let a = ferry().args(["man", "serve"]).assert().success();
    let (page, _) = out_of(&a);
    assert!(page.contains(".TH ferry-serve"), "{page:.300}");
    assert!(
        page.contains("ferry\\-serve \\- Serve files"),
        "{page:.400}"
    );
    assert!(
        page.contains("listen") && page.contains("FERRY_LISTEN"),
        "options and their variables: {page}"
    );
    let a = ferry().args(["man", "rocket"]).assert().code(2);
    let (_, err) = out_of(&a);
    assert!(
        err.contains("ferry-serve") && err.contains("ferry-get"),
        "{err}"
    );
}

/// FERRY_LISTEN, FERRY_NAME, FERRY_TICKET_FORMAT, FERRY_OUTPUT and the three FERRY_TLS_* stand
/// for their options on both sides; an option on the command line wins over its variable.
#[test]
fn environment_variables_stand_for_options() {
    let pki = Pki::new();
    let (scert, skey) = pki.issue("env-sender");
    let (ccert, ckey) = pki.issue("site-env");
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("e.bin");
    let data = random_file(&src, 300_000, 61);
    let ca = pki.ca();
    let mut server = Proc::spawn_with_env(
        &["serve", path_str(&src)],
        &[
            ("FERRY_LISTEN", "tcp://127.0.0.1:0"),
            ("FERRY_NAME", "env-sender"),
            ("FERRY_TICKET_FORMAT", "url"),
            ("FERRY_TLS_CERT", path_str(&scert)),
            ("FERRY_TLS_KEY", path_str(&skey)),
            ("FERRY_TLS_CA", path_str(&ca)),
        ],
    );
    let ticket = server.line();
    assert!(ticket.starts_with("ferry+stcp://127.0.0.1:"), "{ticket}");
    let t: Ticket = ticket.parse().unwrap();
    assert_eq!(t.source, "env-sender");
    let out = d.path().join("from-env");
    let a = ferry()
        .args(["get", &ticket])
        .env("FERRY_OUTPUT", path_str(&out))
        .env("FERRY_NAME", "wrong-name")
        .args(["--name", "site-env"]) // the option wins over FERRY_NAME
        .env("FERRY_TLS_CERT", path_str(&ccert))
        .env("FERRY_TLS_KEY", path_str(&ckey))
        .env("FERRY_TLS_CA", path_str(&ca))
        .assert()
        .success();
    let (stdout, _) = out_of(&a);
    assert_eq!(stdout.trim(), out.join("e.bin").display().to_string());
    assert_eq!(std::fs::read(out.join("e.bin")).unwrap(), data);
    assert!(server.wait().success(), "{}", server.stderr_text());
    // an incomplete TLS set from the environment is the same usage error as on the command line
    let a = ferry()
        .args(["get", &ticket])
        .env("FERRY_TLS_CERT", path_str(&ccert))
        .assert()
        .code(2);
    let (_, err) = out_of(&a);
    assert!(
        err.contains("--tls-key") || err.contains("tls-key"),
        "{err}"
    );
}

/// `-q`: results and errors only. `-v`: info logs (unless RUST_LOG says otherwise).
#[test]
fn quiet_and_verbose() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("q.bin");
    random_file(&src, 2 * 1024 * 1024, 62);
    let (mut server, ticket) = serve(&["-q", path_str(&src), "--receivers", "4"]);

    let out = d.path().join("quiet");
    let a = ferry()
        .args(["-q", "get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let (stdout, stderr) = out_of(&a);
    assert_eq!(stdout.trim(), out.join("q.bin").display().to_string());
    assert_eq!(stderr, "", "nothing but errors on stderr");

    let out = d.path().join("quiet-json");
    let a = ferry()
        .args(["-q", "--json", "get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let (stdout, _) = out_of(&a);
    let events: Vec<serde_json::Value> = stdout.lines().map(json).collect();
    assert!(
        events.iter().all(|e| e["event"] != "progress"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["event"] == "done"), "{events:?}");

    let out = d.path().join("verbose");
    let a = ferry()
        .args(["-v", "get", &ticket, "-o", path_str(&out)])
        .assert()
        .success();
    let (_, stderr) = out_of(&a);
    assert!(stderr.contains("INFO"), "info logs: {stderr}");
    assert!(stderr.contains("got q.bin"), "{stderr}");

    let out = d.path().join("rust-log");
    let a = ferry()
        .args(["-v", "get", &ticket, "-o", path_str(&out)])
        .env("RUST_LOG", "error")
        .assert()
        .success();
    let (_, stderr) = out_of(&a);
    assert!(!stderr.contains("INFO"), "RUST_LOG wins over -v: {stderr}");

    // an error is printed with -q
    let a = ferry()
        .args(["-q", "get", "ferry1cutshort", "-o", path_str(&out)])
        .assert()
        .code(2);
    let (_, stderr) = out_of(&a);
    assert!(
        stderr.starts_with("ferry: error: malformed ticket"),
        "{stderr}"
    );
    ferry().args(["-q", "-v", "demo"]).assert().code(2);

    assert!(server.wait().success());
    let serve_err = server.stderr_text();
    assert!(
        !serve_err.contains("serving") && !serve_err.contains("done:"),
        "serve -q prints no progress lines: {serve_err}"
    );
}

/// The user guide's table of variables is the set the parser knows (`--help` shows them).
#[test]
fn the_guide_lists_every_environment_variable() {
    let mut in_help = std::collections::BTreeSet::new();
    for cmd in ["serve", "get"] {
        let a = ferry().args([cmd, "--help"]).assert().success();
        let (help, _) = out_of(&a);
        for part in help.split("[env: ").skip(1) {
            let var: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            in_help.insert(var);
        }
    }
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/user-guide.md"),
    )
    .unwrap();
    let section = guide
        .split("## Environment variables")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("an Environment variables section");
    let in_guide: std::collections::BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `FERRY_"))
        .flat_map(|l| {
            l.split('|')
                .nth(1)
                .unwrap_or("")
                .split(',')
                .map(|v| v.trim().trim_matches('`').to_string())
        })
        .collect();
    assert!(in_help.len() >= 9, "{in_help:?}");
    assert_eq!(in_guide, in_help);
}
