//! Processes started inside a host's namespace, with their stdout lines timestamped as they
//! arrive, and killed (with what they started) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A process in a namespace.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// `ip netns exec NS PROG ARGS...`.
    pub fn spawn(name: &str, ns: &str, prog: &str, args: &[&str]) -> Result<Proc> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, prog])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {prog} in {ns}"))?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send((Instant::now(), l)).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().context("stderr")?;
        let (etx, stderr) = mpsc::channel();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            let _ = etx.send(s);
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            lines,
            stderr,
        })
    }

    /// The next stdout line satisfying `pred` and when it arrived; fails past `deadline`, on
    /// exit, or when the bench is interrupted.
    pub fn line_where(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(Instant, String)> {
        loop {
            if super::interrupted() {
                bail!("interrupted");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let err = self.stderr_now();
                bail!("{}: no expected output in time; stderr: {err}", self.name);
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok((t, l)) if pred(&l) => return Ok((t, l)),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait().ok();
                    let err = self.stderr_now();
                    bail!(
                        "{} exited ({st:?}) before the expected output; stderr: {err}",
                        self.name
                    );
                }
            }
        }
    }

    /// Wait for the exit until `deadline`; `Ok(success)`.
    pub fn wait(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st.success());
            }
            if super::interrupted() {
                bail!("interrupted");
            }
            if Instant::now() > deadline {
                bail!("{} did not exit in time", self.name);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Send `sig` (e.g. `KILL`, `INT`) to the process `ip netns exec` became.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    fn stderr_now(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
