//! Process groups: children spawned, their stdout lines timestamped, killed and reaped (with `wait4`) when a measurement ends.

use crate::os;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// One child process and what it said.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) log: PathBuf,
    pub(crate) ready: Option<Value>,
    pub(crate) done: Option<(Instant, Value)>,
    /// The machine's busy CPU seconds ([`os::machine_busy_s`]) when the DONE line arrived.
    pub(crate) done_busy_s: Option<f64>,
    pub(crate) result: Option<Value>,
    pub(crate) eof: bool,
    /// Exit status and kernel accounting, once reaped with wait4.
    pub(crate) reaped: Option<(i32, os::Usage)>,
}

/// A line (or EOF) from a child's stdout, with the time it arrived.
pub(crate) struct Line {
    pub(crate) proc: usize,
    pub(crate) at: Instant,
    /// [`os::machine_busy_s`] when a DONE line arrived (read by the thread that took it off
    /// the pipe, so the orchestrator's own scheduling does not move it).
    pub(crate) busy_s: Option<f64>,
    pub(crate) text: Option<String>,
}

/// The processes of one measurement; all are killed and reaped when the group ends.
pub(crate) struct Group {
    pub(crate) procs: Vec<Proc>,
    pub(crate) tx: mpsc::Sender<Line>,
    pub(crate) rx: mpsc::Receiver<Line>,
    pub(crate) log_dir: PathBuf,
}

impl Group {
    pub(crate) fn new(log_dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&log_dir)?;
        let (tx, rx) = mpsc::channel();
        Ok(Self {
            procs: Vec::new(),
            tx,
            rx,
            log_dir,
        })
    }

    pub(crate) fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<usize> {
        let log = self.log_dir.join(format!("{name}.log"));
        let err = File::create(&log)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let idx = self.procs.len();
        let out = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let tx = self.tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(text) = line else { break };
                let at = Instant::now();
                let busy_s = if text.starts_with("DONE") {
                    os::machine_busy_s()
                } else {
                    None
                };
                let _ = tx.send(Line {
                    proc: idx,
                    at,
                    busy_s,
                    text: Some(text),
                });
            }
            let _ = tx.send(Line {
                proc: idx,
                at: Instant::now(),
                busy_s: None,
                text: None,
            });
        });
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            stdin,
            log,
            ready: None,
            done: None,
            done_busy_s: None,
            result: None,
            eof: false,
            reaped: None,
        });
        Ok(idx)
    }

    pub(crate) fn log_tail(&self, idx: usize) -> String {
        let p = &self.procs[idx];
        let text = fs::read_to_string(&p.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(15);
        format!(
            "--- last lines of {} ({}) ---\n{}",
            p.name,
            p.log.display(),
            lines[from..].join("\n")
        )
    }

    /// Take one line from any child (until `deadline`) and record it.
    pub(crate) fn pump(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match self.rx.recv_timeout(left) {
            Ok(l) => l,
            Err(_) => {
                let waiting: Vec<&str> = self
                    .procs
                    .iter()
                    .filter(|p| p.result.is_none())
                    .map(|p| p.name.as_str())
                    .collect();
                bail!("deadline reached; still waiting for {waiting:?}");
            }
        };
        let i = line.proc;
        let Some(text) = line.text else {
            self.procs[i].eof = true;
            if self.procs[i].result.is_none() {
                bail!(
                    "{} ended without a RESULT line\n{}",
                    self.procs[i].name,
                    self.log_tail(i)
                );
            }
            return Ok(());
        };
        let (kind, rest) = text.split_once(' ').unwrap_or((text.as_str(), "{}"));
        let parse = |s: &str| -> Result<Value> {
            serde_json::from_str(s).with_context(|| format!("bad line from child: {text}"))
        };
        match kind {
            "READY" => self.procs[i].ready = Some(parse(rest)?),
            "DONE" => {
                self.procs[i].done = Some((line.at, parse(rest)?));
                self.procs[i].done_busy_s = line.busy_s;
            }
            "RESULT" => {
                let v = parse(rest)?;
                if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
                    bail!("{} failed: {e}\n{}", self.procs[i].name, self.log_tail(i));
                }
                self.procs[i].result = Some(v);
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn wait_ready(&mut self, idx: usize, deadline: Instant) -> Result<Value> {
        while self.procs[idx].ready.is_none() {
            self.pump(deadline)
                .with_context(|| format!("waiting for {} to be ready", self.procs[idx].name))?;
        }
        Ok(self.procs[idx].ready.clone().expect("checked"))
    }

    pub(crate) fn wait_results(&mut self, deadline: Instant) -> Result<()> {
        while self.procs.iter().any(|p| p.result.is_none()) {
            self.pump(deadline)?;
        }
        Ok(())
    }

    pub(crate) fn send(&mut self, idx: usize, line: &str) -> Result<()> {
        let p = &mut self.procs[idx];
        let stdin = p
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", p.name))?;
        stdin.write_all(line.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Close every stdin, give the children `grace` to exit, kill the rest; reap all with
    /// wait4 (which is where peak RSS and CPU come from).
    pub(crate) fn finish(&mut self, grace: Duration) -> Result<()> {
        for p in &mut self.procs {
            p.stdin = None;
        }
        let until = Instant::now() + grace;
        loop {
            let mut pending = false;
            for p in &mut self.procs {
                if p.reaped.is_none() {
                    p.reaped = os::wait4(p.child.id(), false)?;
                    pending |= p.reaped.is_none();
                }
            }
            if !pending {
                return Ok(());
            }
            if Instant::now() >= until {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        for p in &mut self.procs {
            if p.reaped.is_none() {
                let _ = p.child.kill();
                p.reaped = os::wait4(p.child.id(), true)?;
            }
        }
        Ok(())
    }

    pub(crate) fn usage(&self, idx: usize) -> os::Usage {
        self.procs[idx].reaped.map(|r| r.1).unwrap_or_default()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if p.reaped.is_none() {
                p.stdin = None;
                let _ = p.child.kill();
                p.reaped = os::wait4(p.child.id(), true).ok().flatten();
            }
        }
    }
}
