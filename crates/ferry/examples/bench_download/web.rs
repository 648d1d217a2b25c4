//! The nginx → curl baseline of the file-disk scenario: what users would run without ferry.
//!
//! The sender role starts Debian's nginx (`nginx-light`) from a temporary prefix (its own
//! config, pid file, logs and temp paths; no system service, nothing under `/etc`), on a free
//! loopback port, serving the source file with `sendfile`. Each receiver role runs one
//! `curl -o FILE URL` and then fsyncs the file, as ferry's receivers fsync theirs.
//!
//! CPU: the sender reads the CPU time of the nginx master and its workers from
//! `/proc/PID/stat` when it announces itself and again when the access log holds one
//! complete response per receiver; a receiver counts its own CPU (the fsync) and curl's
//! (`getrusage(RUSAGE_CHILDREN)` once curl is reaped).

use crate::args::*;
use crate::child::*;
use crate::common::*;
use crate::os;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Where the nginx binary is, or why it is not there. Looks on `PATH` and in `/usr/sbin`;
/// when it is missing and `apt-get` is there, installs `nginx-light` (saying so).
pub(crate) fn find_or_install_nginx() -> Result<PathBuf, String> {
    if let Some(p) = locate_nginx() {
        return Ok(p);
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        return Err(
            "nginx is not installed and there is no apt-get to install nginx-light \
                    (install nginx, or --skip nginx)"
                .into(),
        );
    }
    eprintln!("bench_download: nginx not found; installing the Debian package nginx-light");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "nginx-light"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let ok = matches!(install(), Ok(s) if s.success())
        || (matches!(
            Command::new("apt-get").arg("update").stdout(Stdio::null()).status(),
            Ok(s) if s.success()
        ) && matches!(install(), Ok(s) if s.success()));
    match locate_nginx() {
        Some(p) => Ok(p),
        None if ok => Err(
            "apt-get installed nginx-light but no nginx binary is on PATH or in /usr/sbin".into(),
        ),
        None => Err(
            "nginx is not installed and `apt-get install nginx-light` failed \
                     (run it as root, or --skip nginx)"
                .into(),
        ),
    }
}

fn locate_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// Whether `curl` runs (the receivers need it).
pub(crate) fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The config of one nginx instance: everything under `prefix`, one file at `/object`.
fn config(prefix: &Path, port: u16, file: &Path) -> String {
    let p = |name: &str| prefix.join(name).display().to_string();
    format!(
        "daemon off;\n\
         worker_processes auto;\n\
         pid \"{pid}\";\n\
         error_log stderr warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
         \x20 access_log \"{access}\";\n\
         \x20 client_body_temp_path \"{body}\";\n\
         \x20 proxy_temp_path \"{proxy}\";\n\
         \x20 fastcgi_temp_path \"{fcgi}\";\n\
         \x20 uwsgi_temp_path \"{uwsgi}\";\n\
         \x20 scgi_temp_path \"{scgi}\";\n\
         \x20 sendfile on;\n\
         \x20 tcp_nopush on;\n\
         \x20 default_type application/octet-stream;\n\
         \x20 server {{\n\
         \x20   listen 127.0.0.1:{port};\n\
         \x20   location = /object {{ alias \"{file}\"; }}\n\
         \x20 }}\n\
         }}\n",
        pid = p("nginx.pid"),
        access = p("access.log"),
        body = p("body"),
        proxy = p("proxy"),
        fcgi = p("fastcgi"),
        uwsgi = p("uwsgi"),
        scgi = p("scgi"),
        file = file.display(),
    )
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds of `pid` (utime + stime from `/proc/PID/stat`), 0 when it is gone.
fn proc_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name is in parentheses and may hold spaces: fields after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime field 15.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / os::clock_ticks()
}

/// `pid` and its children (nginx's workers).
fn family(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = fs::read_to_string(format!("/proc/{child}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// VmHWM of `pid` in KiB.
fn proc_hwm_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Complete `200` responses in nginx's access log.
fn responses(log: &Path) -> usize {
    fs::read_to_string(log)
        .map(|s| s.lines().filter(|l| l.contains("\" 200 ")).count())
        .unwrap_or(0)
}

/// Child role: nginx serving `a.file` to `a.receivers` curl receivers.
pub fn nginx_sender(a: &SenderArgs) -> Result<()> {
    watch_stdin_eof();
    let nginx = a
        .nginx
        .clone()
        .ok_or_else(|| anyhow!("nginx-sender needs --nginx PATH"))?;
    let file = fs::canonicalize(&a.file)?;
    let prefix = tempfile::Builder::new().prefix("bench-nginx-").tempdir()?;
    let access = prefix.path().join("access.log");
    // A free port can be taken between our probe and nginx's bind: try a few.
    let mut started = None;
    for _ in 0..5 {
        let port = free_port()?;
        let conf = prefix.path().join("nginx.conf");
        fs::write(&conf, config(prefix.path(), port, &file))?;
        let mut child = Command::new(&nginx)
            .arg("-p")
            .arg(prefix.path())
            .arg("-c")
            .arg(&conf)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait()? {
                eprintln!("nginx on port {port} exited at start with {st}; retrying");
                break;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                started = Some((child, port));
                break;
            }
            if Instant::now() > until {
                let _ = child.kill();
                bail!("nginx did not listen on 127.0.0.1:{port} within 20 s");
            }
            thread::sleep(Duration::from_millis(10));
        }
        if started.is_some() {
            break;
        }
    }
    let (mut child, port) = started.ok_or_else(|| anyhow!("nginx failed to start 5 times"))?;
    let pid = child.id();
    // The readiness probe above may have logged a line: count from here.
    let before = responses(&access);
    let cpu = |pids: &[u32]| pids.iter().map(|&p| proc_cpu_s(p)).sum::<f64>();
    let pids = family(pid);
    let cpu0 = cpu(&pids);
    emit(
        "READY",
        &json!({"url": format!("http://127.0.0.1:{port}/object"), "fqcn": SENDER_FQCN, "refs": []}),
    );
    while responses(&access) < before + a.receivers {
        if let Some(st) = child.try_wait()? {
            bail!("nginx exited during the transfer with {st}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    // Workers may have been replaced (they are not, but count whoever is there now).
    let pids_end = family(pid);
    let cpu_s = cpu(&pids_end) - cpu0;
    let hwm: u64 = pids_end.iter().map(|&p| proc_hwm_kib(p)).sum();
    os::signal(pid, libc::SIGQUIT);
    let _ = child.wait();
    emit("RESULT", &json!({"cpu_s": cpu_s, "procs_hwm_kib": hwm}));
    Ok(())
}

/// Child role: `curl -o FILE URL`, then fsync FILE.
pub fn curl_receiver(a: &ReceiverArgs) -> Result<()> {
    let dir = a
        .out_dir
        .clone()
        .ok_or_else(|| anyhow!("--out-dir needed"))?;
    let path = dir.join("received.bin");
    emit("READY", &json!({"fqcn": a.fqcn}));
    wait_go()?;
    let cpu0 = cpu_now() + os::children_usage().cpu_s();
    let st = Command::new("curl")
        .args(["-sS", "--fail", "-o"])
        .arg(&path)
        .arg(&a.url)
        .stdin(Stdio::null())
        .status()
        .context("running curl")?;
    if !st.success() {
        bail!("curl {} failed with {st}", a.url);
    }
    let f = File::options().write(true).open(&path)?;
    f.sync_all()?;
    drop(f);
    let cpu = cpu_now() + os::children_usage().cpu_s() - cpu0;
    let n = fs::metadata(&path)?.len();
    emit("DONE", &json!({"bytes": n}));
    let b3 = blake3_file(&path, None)?;
    fs::remove_file(&path)?;
    emit(
        "RESULT",
        &json!({"bytes": n, "blake3": b3, "cpu_s": cpu,
                "maxrss_kib": os::self_usage().maxrss_kib}),
    );
    Ok(())
}
