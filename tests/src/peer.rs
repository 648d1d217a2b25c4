//! [`PyPeer`]: one Python peer process (a real NVFlare cell) driven over its line protocol.
//!
//! The peer prints `READY <json>` once, then `RESULT <json>` lines (see `tests/py/README.md`);
//! its stderr goes to a log file whose tail is printed when a test fails.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::python::{python, script};

/// How long a peer may take to print READY, and the default wait for one RESULT. Generous on
/// purpose: NVFlare's imports alone take seconds on a loaded 2-core CI machine.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// How many stderr lines a failure report shows.
const LOG_TAIL_LINES: usize = 60;

/// The exit status of a Python peer whose listener port another process took before the
/// listener bound it (`EXIT_PORT_TAKEN` in tests/py/ports.py).
const EXIT_PORT_TAKEN: i32 = 75;

/// How many times a peer is started when its port was taken (each start picks a new port).
const PORT_TAKEN_ATTEMPTS: usize = 3;

/// What the stdout reader thread has collected so far.
#[derive(Default)]
struct InboxState {
    ready: Option<Value>,
    results: VecDeque<Value>,
    /// stdout reached EOF (the process ended or closed stdout).
    closed: bool,
    /// stdout lines that are not part of the protocol, kept for failure reports.
    stray: Vec<String>,
}

/// Shared between the reader thread and the waiting test (sync via the condvar, async via
/// the notify).
#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        // A panicking test thread must not hide the peer's output from later reports.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake(&self) {
        self.cond.notify_all();
        self.notify.notify_waiters();
    }
}

/// A running Python peer script.
///
/// Spawned with `--exit-on-stdin-eof`, so the process also ends if the test process dies;
/// killed (and reaped) on drop. Waiting methods come in a blocking form (for sync tests or
/// setup) and an `_async` form (for `#[tokio::test]` bodies, where blocking would starve the
/// Rust cell under test).
pub struct PyPeer {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    inbox: Arc<Inbox>,
    ready: Value,
    log_path: PathBuf,
    /// Holds the stderr log; kept on disk (not deleted) when the test panics.
    log_dir: Option<tempfile::TempDir>,
    reader: Option<JoinHandle<()>>,
}

impl PyPeer {
    /// Spawn `tests/py/<script>` with `args` and wait (blocking) for its READY line.
    ///
    /// # Panics
    /// If the interpreter is missing, the process cannot start, or READY does not arrive
    /// within [`DEFAULT_DEADLINE`]; the message carries the peer's stderr tail.
    pub fn spawn<I, S>(script_name: &str, args: I) -> PyPeer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::try_spawn(script_name, args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`PyPeer::spawn`], returning the error instead of panicking.
    pub fn try_spawn<I, S>(script_name: &str, args: I) -> Result<PyPeer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut attempt = 1;
        loop {
            let peer = Self::start(script_name, &args)?;
            let deadline = Instant::now() + DEFAULT_DEADLINE;
            let ready = peer.wait_inbox(deadline, |st| st.ready.take());
            if let Some(done) = peer.settled(ready, &mut attempt) {
                return done;
            }
        }
    }

    /// Spawn and wait for READY without blocking the async runtime (use this when the peer
    /// only becomes READY after the Rust side accepted its connection).
    ///
    /// # Panics
    /// Like [`PyPeer::spawn`].
    pub async fn spawn_async<I, S>(script_name: &str, args: I) -> PyPeer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::try_spawn_async(script_name, args)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`PyPeer::spawn_async`], returning the error instead of panicking.
    pub async fn try_spawn_async<I, S>(script_name: &str, args: I) -> Result<PyPeer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut attempt = 1;
        loop {
            let peer = Self::start(script_name, &args)?;
            let deadline = Instant::now() + DEFAULT_DEADLINE;
            let ready = peer.wait_inbox_async(deadline, |st| st.ready.take()).await;
            if let Some(done) = peer.settled(ready, &mut attempt) {
                return done;
            }
        }
    }

    /// Spawn any program that speaks the same line protocol (READY / RESULT on stdout, exits
    /// when stdin closes given `--exit-on-stdin-eof`), e.g. the `ferry-peer` test binary, and
    /// wait for its READY without blocking the runtime.
    ///
    /// # Panics
    /// Like [`PyPeer::spawn`].
    pub async fn spawn_program_async<I, S>(program: &Path, args: I) -> PyPeer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        let go = async {
            let mut peer = Self::start_command(&name, Command::new(program), args)?;
            let deadline = Instant::now() + DEFAULT_DEADLINE;
            let ready = peer.wait_inbox_async(deadline, |st| st.ready.take()).await;
            peer.ready = peer.settle_ready(ready)?;
            anyhow::Ok(peer)
        };
        go.await.unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Kill the process now (SIGKILL) and reap it; its output read so far stays available.
    pub fn kill(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn start<I, S>(script_name: &str, args: I) -> Result<PyPeer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = script(script_name);
        let mut cmd = Command::new(python());
        cmd.arg("-u").arg(&path);
        Self::start_command(script_name, cmd, args)
    }

    fn start_command<I, S>(script_name: &str, mut cmd: Command, args: I) -> Result<PyPeer>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let log_dir = tempfile::Builder::new()
            .prefix("ferry-interop-")
            .tempdir()
            .context("creating the peer log dir")?;
        let log_path = log_dir.path().join(format!("{script_name}.stderr.log"));
        let log = File::create(&log_path).context("creating the peer log file")?;

        cmd.args(args)
            .arg("--exit-on-stdin-eof")
            .current_dir(log_dir.path())
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("peer stdout")?;
        let stdin = child.stdin.take();

        let inbox = Arc::new(Inbox::default());
        let reader = {
            let inbox = inbox.clone();
            std::thread::Builder::new()
                .name(format!("pypeer-{script_name}"))
                .spawn(move || read_protocol(stdout, &inbox))
                .context("starting the peer stdout reader")?
        };
        Ok(PyPeer {
            name: script_name.to_string(),
            child,
            stdin,
            inbox,
            ready: Value::Null,
            log_path,
            log_dir: Some(log_dir),
            reader: Some(reader),
        })
    }

    /// The outcome of start number `attempt` whose wait for READY ended with `ready`: the
    /// peer (or why it has none), or `None` to start it again because its port was taken.
    fn settled(mut self, ready: Result<Value>, attempt: &mut usize) -> Option<Result<PyPeer>> {
        if ready.is_err() && *attempt < PORT_TAKEN_ATTEMPTS && self.port_was_taken() {
            *attempt += 1;
            return None;
        }
        Some(match self.settle_ready(ready) {
            Ok(ready) => {
                self.ready = ready;
                Ok(self)
            }
            Err(e) => Err(e),
        })
    }

    /// Whether the peer ended before READY because another process took the port its
    /// listener was to bind (`ports.py` exits with [`EXIT_PORT_TAKEN`]); starting it again
    /// picks another port.
    fn port_was_taken(&mut self) -> bool {
        self.status_once_closed()
            .is_some_and(|s| s.code() == Some(EXIT_PORT_TAKEN))
    }

    /// The exit status of a peer whose stdout closed (it is exiting: the status follows
    /// within moments); `None` while stdout is open or if it does not exit in 10 s.
    fn status_once_closed(&mut self) -> Option<ExitStatus> {
        if !self.inbox.lock().closed {
            return None;
        }
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return None,
            }
        }
        None
    }

    fn settle_ready(&mut self, ready: Result<Value>) -> Result<Value> {
        if ready.is_err() {
            // so the report says how it ended
            self.status_once_closed();
        }
        ready.map_err(|e| {
            let report = self.report();
            anyhow!("{}: no READY line: {e:#}\n{report}", self.name)
        })
    }

    /// The READY json.
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    /// A string field of the READY json (e.g. `"url"`, `"fqcn"`).
    ///
    /// # Panics
    /// If the field is missing or not a string.
    pub fn ready_str(&self, key: &str) -> &str {
        self.ready[key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: READY has no string {key:?}: {}", self.name, self.ready))
    }

    /// Path of the peer's stderr log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The peer's OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Write one line to the peer's stdin (e.g. `GO`, or a JSON request such as the
    /// receiver's `--refs-from-stdin` line).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("peer stdin already closed")?;
        writeln!(stdin, "{line}").context("writing to peer stdin")?;
        stdin.flush().context("flushing peer stdin")
    }

    /// Close the peer's stdin: the script then exits on its own (exit code 4).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next RESULT json, waiting up to [`DEFAULT_DEADLINE`] (blocking).
    ///
    /// # Panics
    /// On timeout or if the peer ended first; the message carries the stderr tail.
    pub fn next_result(&mut self) -> Value {
        self.wait_result(|_| true)
    }

    /// The next RESULT json without blocking the async runtime.
    ///
    /// # Panics
    /// Like [`PyPeer::next_result`].
    pub async fn next_result_async(&mut self) -> Value {
        self.wait_result_async(|_| true).await
    }

    /// The first RESULT (in arrival order) for which `pred` holds, waiting up to
    /// [`DEFAULT_DEADLINE`] (blocking). RESULTs that do not match stay queued for later calls.
    ///
    /// # Panics
    /// On timeout or if the peer ended first.
    pub fn wait_result(&mut self, pred: impl FnMut(&Value) -> bool) -> Value {
        self.try_wait_result(DEFAULT_DEADLINE, pred)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Async form of [`PyPeer::wait_result`].
    ///
    /// # Panics
    /// On timeout or if the peer ended first.
    pub async fn wait_result_async(&mut self, pred: impl FnMut(&Value) -> bool) -> Value {
        self.try_wait_result_async(DEFAULT_DEADLINE, pred)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The first RESULT whose `"event"` equals `event` (blocking).
    pub fn wait_event(&mut self, event: &str) -> Value {
        self.wait_result(|v| v["event"] == event)
    }

    /// Async form of [`PyPeer::wait_event`].
    pub async fn wait_event_async(&mut self, event: &str) -> Value {
        self.wait_result_async(|v| v["event"] == event).await
    }

    /// The first RESULT with `"event" == event` printed by cell `cell` (the `"cell"` field).
    pub async fn wait_cell_event_async(&mut self, cell: &str, event: &str) -> Value {
        self.wait_result_async(|v| v["event"] == event && v["cell"] == cell)
            .await
    }

    /// Blocking wait for a matching RESULT with an explicit timeout; errors carry the report.
    pub fn try_wait_result(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let r = self.wait_inbox(deadline, |st| take_matching(&mut st.results, &mut pred));
        r.map_err(|e| {
            let report = self.report();
            anyhow!("{}: no matching RESULT: {e:#}\n{report}", self.name)
        })
    }

    /// Async wait for a matching RESULT with an explicit timeout; errors carry the report.
    pub async fn try_wait_result_async(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let r = self
            .wait_inbox_async(deadline, |st| take_matching(&mut st.results, &mut pred))
            .await;
        r.map_err(|e| {
            let report = self.report();
            anyhow!("{}: no matching RESULT: {e:#}\n{report}", self.name)
        })
    }

    /// RESULTs received so far and not yet taken by a wait.
    pub fn pending_results(&self) -> Vec<Value> {
        self.inbox.lock().results.iter().cloned().collect()
    }

    /// Wait (blocking) for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let report = self.report();
                bail!("{} did not exit within {timeout:?}\n{report}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the process to exit on its own without blocking the runtime.
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let report = self.report();
                bail!("{} did not exit within {timeout:?}\n{report}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of the peer's stderr log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log_path, lines)
    }

    /// A failure report: exit status, stray stdout, pending RESULTs and the stderr tail.
    pub fn report(&mut self) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!("exited: {s}"),
            Ok(None) => "still running".to_string(),
            Err(e) => format!("status unknown: {e}"),
        };
        let (stray, pending) = {
            let st = self.inbox.lock();
            (
                st.stray.clone(),
                st.results.iter().cloned().collect::<Vec<_>>(),
            )
        };
        let mut s = format!(
            "--- peer {} (pid {}, {status}); stderr log {}\n",
            self.name,
            self.child.id(),
            self.log_path.display()
        );
        if !stray.is_empty() {
            s.push_str(&format!("--- stray stdout: {stray:?}\n"));
        }
        if !pending.is_empty() {
            s.push_str("--- RESULTs not taken:\n");
            for p in pending {
                let mut line = p.to_string();
                line.truncate(400);
                s.push_str(&line);
                s.push('\n');
            }
        }
        s.push_str(&format!("--- last {LOG_TAIL_LINES} stderr lines:\n"));
        s.push_str(&self.log_tail(LOG_TAIL_LINES));
        s
    }

    fn wait_inbox<T>(
        &self,
        deadline: Instant,
        mut take: impl FnMut(&mut InboxState) -> Option<T>,
    ) -> Result<T> {
        let mut st = self.inbox.lock();
        loop {
            if let Some(t) = take(&mut st) {
                return Ok(t);
            }
            if st.closed {
                bail!("the peer closed its stdout");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out");
            }
            st = self
                .inbox
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    async fn wait_inbox_async<T>(
        &self,
        deadline: Instant,
        mut take: impl FnMut(&mut InboxState) -> Option<T>,
    ) -> Result<T> {
        loop {
            let notified = self.inbox.notify.notified();
            tokio::pin!(notified);
            // Register before looking, so a wake between the look and the await is not lost.
            notified.as_mut().enable();
            {
                let mut st = self.inbox.lock();
                if let Some(t) = take(&mut st) {
                    return Ok(t);
                }
                if st.closed {
                    bail!("the peer closed its stdout");
                }
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("timed out");
            }
        }
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.report());
            if let Some(dir) = self.log_dir.take() {
                let kept = dir.keep();
                eprintln!("--- peer log kept in {}", kept.display());
            }
        }
    }
}

fn take_matching(
    results: &mut VecDeque<Value>,
    pred: &mut impl FnMut(&Value) -> bool,
) -> Option<Value> {
    let i = results.iter().position(pred)?;
    results.remove(i)
}

fn read_protocol(stdout: impl Read, inbox: &Inbox) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut st = inbox.lock();
        if let Some(json) = line.strip_prefix("READY ") {
            match serde_json::from_str(json) {
                Ok(v) => st.ready = Some(v),
                Err(_) => st.stray.push(line),
            }
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            match serde_json::from_str(json) {
                Ok(v) => st.results.push_back(v),
                Err(_) => st.stray.push(line),
            }
        } else {
            st.stray.push(line);
        }
        drop(st);
        inbox.wake();
    }
    inbox.lock().closed = true;
    inbox.wake();
}

fn tail_of(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)\n");
    };
    // Only the end of a possibly large log is of interest.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::from("(log not seekable)\n");
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    let mut out = all[all.len().saturating_sub(lines)..].join("\n");
    out.push('\n');
    out
}
