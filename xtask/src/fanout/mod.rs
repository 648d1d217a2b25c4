//! `cargo xtask bench fanout`: one sender and N receivers on a shaped test network (see
//! [`net`]), every host's egress capped at the same rate; for each mode and N, the time until
//! every receiver has the object verified, and the bytes the sender put on its link.
//!
//! Modes: `direct` (every `ferry get` pulls from `ferry serve --no-peers`), `peers`
//! (`get --share`, the sender schedules), `kill` (peers, and one sharing receiver is killed
//! at 40% of the one-copy time: every other one must still verify), `nginx` (nginx →
//! `curl` + `sha256sum -c`, what users do today), `relay` (a tree of `ferry relay` of fan-out
//! `--relay-fanout`, see [`relay`]).

mod net;
mod procs;
mod relay;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use net::Net;
use procs::Proc;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C (or SIGTERM) arrived: every wait checks it and the network is torn down.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe; `signal` is
    // given a valid `extern "C"` function pointer of the expected signature.
    let handler: extern "C" fn(libc::c_int) = on_signal;
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

const MIB: u64 = 1 << 20;

#[derive(Debug)]
struct Options {
    receivers: Vec<usize>,
    size: u64,
    rate: u64,
    modes: Vec<String>,
    dir: PathBuf,
    write_docs: bool,
    /// Mode `relay`: how many pull from the sender and from each relay.
    relay_fanout: usize,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("GiB") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("MiB") {
        (n, MIB)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a size like 256MiB"))?;
    Ok((n * mult as f64) as u64)
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        receivers: vec![1, 4, 16],
        size: 256 * MIB,
        rate: 40 * MIB,
        modes: ["direct", "relay", "peers", "kill", "nginx"]
            .map(String::from)
            .to_vec(),
        dir: PathBuf::from(format!("/dev/shm/ferry-fanout-{}", std::process::id())),
        write_docs: false,
        relay_fanout: 4,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--receivers" => {
                o.receivers = val()?
                    .split(',')
                    .map(|n| n.parse().context("--receivers N,N,..."))
                    .collect::<Result<_>>()?
            }
            "--size" => o.size = parse_size(val()?)?,
            "--rate" => o.rate = parse_size(val()?)?,
            "--modes" => o.modes = val()?.split(',').map(String::from).collect(),
            "--dir" => o.dir = PathBuf::from(val()?),
            "--write-docs" => o.write_docs = true,
            "--relay-fanout" => {
                o.relay_fanout = val()?.parse().context("--relay-fanout K (2 or more)")?
            }
            "--help" | "-h" => {
                println!("cargo xtask bench fanout [--receivers 1,4,16] [--size 256MiB] [--rate 40MiB] [--modes direct,relay,peers,kill,nginx] [--relay-fanout 4] [--dir DIR] [--write-docs]");
                std::process::exit(0);
            }
            other => bail!("unknown option {other}; try --help"),
        }
    }
    for m in &o.modes {
        if !["direct", "peers", "kill", "nginx", "relay"].contains(&m.as_str()) {
            bail!("unknown mode {m}: direct, peers, kill, nginx or relay");
        }
    }
    if o.receivers.iter().any(|&n| n == 0 || n > 200)
        || o.size == 0
        || o.rate < MIB
        || o.relay_fanout < 2
    {
        bail!(
            "--receivers 1..=200 each, --size > 0, --rate at least 1MiB, --relay-fanout at least 2"
        );
    }
    Ok(o)
}

/// One measured run.
#[derive(Debug, Clone)]
struct Row {
    mode: String,
    n: usize,
    secs: f64,
    sender_bytes: u64,
    note: String,
}

/// Run the bench with `args`; `ferry` is the release binary.
pub fn run(args: &[String], ferry: &Path, workspace: &Path) -> Result<()> {
    let o = parse(args)?;
    catch_signals();
    net::clean_stale();
    if let Err(e) = net::probe() {
        bail!("fanout: {e:#}; the bench stops here (the correctness tests of peer-assisted mode run on loopback in the test matrix)");
    }
    std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
    let result = measure(&o, ferry);
    let _ = std::fs::remove_dir_all(&o.dir);
    let rows = result?;
    let table = table(&o, &rows);
    println!("{table}");
    if o.write_docs {
        write_docs(workspace, &table)?;
    }
    Ok(())
}

fn measure(o: &Options, ferry: &Path) -> Result<Vec<Row>> {
    let src_dir = o.dir.join("src");
    std::fs::create_dir_all(&src_dir)?;
    let src = src_dir.join("model.bin");
    write_random(&src, o.size)?;
    let sha = sha256(&src)?;
    let mut rows = Vec::new();
    for &n in &o.receivers {
        for mode in &o.modes {
            if mode == "kill" && n < 2 {
                continue;
            }
            if interrupted() {
                bail!("interrupted");
            }
            eprintln!("fanout: {mode} to {n} receivers ...");
            let net = Net::build(n + 1, o.rate)?;
            let row = match mode.as_str() {
                "direct" => ferry_run(o, &net, ferry, &src, n, Flavor::Direct),
                "peers" => ferry_run(o, &net, ferry, &src, n, Flavor::Peers),
                "kill" => ferry_run(o, &net, ferry, &src, n, Flavor::Kill),
                "nginx" => nginx_run(o, &net, &src, &sha, n),
                _ => relay::run(o, &net, ferry, &src, n),
            };
            drop(net);
            for i in 0..n {
                let _ = std::fs::remove_dir_all(o.dir.join(format!("r{i}")));
            }
            // a relay killed on an error leaves its spill file behind
            for e in std::fs::read_dir(&o.dir)?.flatten() {
                if e.file_name().to_string_lossy().starts_with("relay-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let row = row.with_context(|| format!("{mode} to {n} receivers"))?;
            eprintln!(
                "fanout: {mode} n={n}: {:.1}s, sender sent {:.1} MiB {}",
                row.secs,
                row.sender_bytes as f64 / MIB as f64,
                row.note
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Direct,
    Peers,
    Kill,
}

/// Generous bound on one run: 4× the time all copies would take one after the other.
fn deadline(o: &Options, n: usize) -> Instant {
    Instant::now()
        + Duration::from_secs_f64(60.0 + 4.0 * (n as f64) * o.size as f64 / o.rate as f64)
}

fn ferry_run(o: &Options, net: &Net, ferry: &Path, src: &Path, n: usize, f: Flavor) -> Result<Row> {
    let bin = ferry.to_str().context("ferry path")?;
    let s = &net.hosts[0];
    let listen = format!("tcp://{}:7051", s.addr);
    let src_s = src.to_str().context("path")?;
    let count = n.to_string();
    let mut sargs = vec!["serve", src_s, "--listen", &listen];
    match f {
        Flavor::Direct => sargs.extend(["--receivers", &count, "--no-peers"]),
        Flavor::Peers => sargs.extend(["--receivers", &count]),
        Flavor::Kill => sargs.push("--keep-serving"),
    }
    let end = deadline(o, n);
    let mut server = Proc::spawn("serve", &s.ns, bin, &sargs)?;
    let (_, ticket) = server.line_where(end, |l| l.starts_with("ferry1"))?;
    let before = net.tx_bytes(0)?;
    let start = Instant::now();
    let mut gets = Vec::new();
    for i in 0..n {
        let out = o.dir.join(format!("r{i}"));
        let out_s = out.to_str().context("path")?.to_string();
        let name = format!("site-{i}");
        let mut a = vec![
            "--json",
            "get",
            ticket.as_str(),
            "-o",
            &out_s,
            "--name",
            &name,
        ];
        if f != Flavor::Direct {
            a.push("--share");
        }
        gets.push(Proc::spawn(&name, &net.hosts[i + 1].ns, bin, &a)?);
    }
    let victim = (f == Flavor::Kill).then_some(n / 2);
    if let Some(v) = victim {
        let at = start + Duration::from_secs_f64(0.4 * o.size as f64 / o.rate as f64);
        while Instant::now() < at {
            if interrupted() {
                bail!("interrupted");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        gets[v].signal("KILL");
    }
    let mut last = start;
    for (i, g) in gets.iter_mut().enumerate() {
        if Some(i) == victim {
            continue;
        }
        let (t, line) = g.line_where(end, |l| l.contains("\"event\":\"done\""))?;
        if !line.contains("BLAKE3") {
            bail!("{}: not verified: {line}", g.name);
        }
        last = last.max(t);
    }
    let secs = last.duration_since(start).as_secs_f64();
    let sender_bytes = match f {
        Flavor::Kill => {
            let b = net.tx_bytes(0)? - before;
            server.signal("INT");
            b
        }
        _ => {
            if !server.wait(end)? {
                bail!("ferry serve did not exit 0");
            }
            net.tx_bytes(0)? - before
        }
    };
    let note = match victim {
        Some(v) => format!("site-{v} killed at 40%; the other {} verified", n - 1),
        None => String::new(),
    };
    Ok(Row {
        mode: match f {
            Flavor::Direct => "ferry direct",
            Flavor::Peers => "ferry peers (--share)",
            Flavor::Kill => "ferry peers, a source killed",
        }
        .into(),
        n,
        secs,
        sender_bytes,
        note,
    })
}

fn nginx_run(o: &Options, net: &Net, src: &Path, sha: &str, n: usize) -> Result<Row> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("nginx is not installed (Debian: apt-get install nginx-light)")?;
    let s = &net.hosts[0];
    let conf = o.dir.join("nginx.conf");
    let root = src.parent().context("src dir")?;
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {pid}; error_log stderr;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on;\n\
               client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
               server {{ listen {addr}:8080; root {root}; }} }}\n",
            pid = o.dir.join("nginx.pid").display(),
            tmp = o.dir.display(),
            addr = s.addr,
            root = root.display()
        ),
    )?;
    let conf_s = conf.to_str().context("path")?;
    let _server = Proc::spawn("nginx", &s.ns, nginx, &["-c", conf_s, "-e", "stderr"])?;
    let url = format!("http://{}:8080/model.bin", s.addr);
    // wait until it answers
    let end = deadline(o, n);
    loop {
        let ok = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.hosts[1].ns,
                "curl",
                "-sf",
                "-o",
                "/dev/null",
                "-r",
                "0-0",
                &url,
            ])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        if Instant::now() > end || interrupted() {
            bail!("nginx did not answer at {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = net.tx_bytes(0)?;
    let start = Instant::now();
    let mut gets = Vec::new();
    for i in 0..n {
        let out = o.dir.join(format!("r{i}"));
        std::fs::create_dir_all(&out)?;
        let file = out.join("model.bin");
        let script = format!(
            "curl -sf -o {f} {url} && echo '{sha}  {f}' | sha256sum -c --quiet && echo verified",
            f = file.display()
        );
        gets.push(Proc::spawn(
            &format!("curl-{i}"),
            &net.hosts[i + 1].ns,
            "sh",
            &["-c", &script],
        )?);
    }
    let mut last = start;
    for g in gets.iter_mut() {
        let (t, _) = g.line_where(end, |l| l == "verified")?;
        last = last.max(t);
    }
    Ok(Row {
        mode: "nginx → curl + sha256sum".into(),
        n,
        secs: last.duration_since(start).as_secs_f64(),
        sender_bytes: net.tx_bytes(0)? - before,
        note: String::new(),
    })
}

fn write_random(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    let mut buf = vec![0u8; MIB as usize];
    while left > 0 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        let n = left.min(MIB) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_string())
}

fn table(o: &Options, rows: &[Row]) -> String {
    let mut t = format!(
        "{} object, every host's egress capped at {} MiB/s (tbf), one sender and N receivers, each in its own network namespace.\n\n\
         | mode | N | time until all verified | × time of N=1 | sender sent | × object size | note |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
        fmt_size(o.size),
        o.rate / MIB
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| {
                b.n == 1
                    && (b.mode == r.mode
                        || (r.mode.contains("killed") && b.mode.contains("--share")))
            })
            .map(|b| b.secs);
        let ratio = base.map_or("–".into(), |b| format!("{:.2}", r.secs / b));
        t += &format!(
            "| {} | {} | {:.1} s | {} | {:.0} MiB | {:.2} | {} |\n",
            r.mode,
            r.n,
            r.secs,
            ratio,
            r.sender_bytes as f64 / MIB as f64,
            r.sender_bytes as f64 / o.size as f64,
            r.note
        );
    }
    t
}

fn fmt_size(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", b / MIB)
    }
}

fn write_docs(workspace: &Path, table: &str) -> Result<()> {
    let path = workspace.join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path)?;
    let (begin, end) = ("<!-- bench:fanout:begin -->", "<!-- bench:fanout:end -->");
    let block = format!("{begin}\n{table}{end}");
    let new = match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{doc}\n## Fan-out on shaped links\n\n`cargo xtask bench fanout --write-docs` (as root):\n\n{block}\n"),
    };
    std::fs::write(&path, new)?;
    eprintln!("fanout: table written into {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_default_to_the_issue_and_bad_ones_are_refused() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.receivers, vec![1, 4, 16]);
        assert_eq!((o.size, o.rate), (256 * MIB, 40 * MIB));
        assert_eq!(o.modes, ["direct", "relay", "peers", "kill", "nginx"]);
        assert_eq!(o.relay_fanout, 4);
        let o = parse(&args(
            "--receivers 2,8 --size 1.5GiB --rate 20MiB --modes peers,relay --relay-fanout 8",
        ))
        .unwrap();
        assert_eq!(o.relay_fanout, 8);
        assert_eq!(o.receivers, vec![2, 8]);
        assert_eq!(o.size, 3 << 29);
        assert_eq!(o.rate, 20 * MIB);
        assert_eq!(o.modes, ["peers", "relay"]);
        for bad in [
            "--modes torrent",
            "--receivers 0",
            "--receivers 201",
            "--rate 1KiB",
            "--size x",
            "--bogus",
            "--size",
            "--relay-fanout 1",
            "--relay-fanout x",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_table_gives_ratios_to_the_one_receiver_run_of_each_mode() {
        let o = parse(&args("--size 100MiB")).unwrap();
        let row = |mode: &str, n, secs, bytes| Row {
            mode: mode.into(),
            n,
            secs,
            sender_bytes: bytes,
            note: String::new(),
        };
        let rows = [
            row("ferry peers (--share)", 1, 10.0, 100 * MIB),
            row("ferry peers (--share)", 16, 12.0, 101 * MIB),
            row("ferry peers, a source killed", 16, 13.0, 102 * MIB),
            row("ferry direct", 16, 160.0, 1600 * MIB),
        ];
        let t = table(&o, &rows);
        assert!(
            t.contains("| ferry peers (--share) | 16 | 12.0 s | 1.20 | 101 MiB | 1.01 |"),
            "{t}"
        );
        assert!(
            t.contains("| ferry peers, a source killed | 16 | 13.0 s | 1.30 |"),
            "{t}"
        );
        assert!(
            t.contains("| ferry direct | 16 | 160.0 s | – | 1600 MiB | 16.00 |"),
            "{t}"
        );
    }
}
