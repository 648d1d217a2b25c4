//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod sim;

use ferry_core::{ConsumeError, Consumer, Downloadable, Produced, State};
use std::path::PathBuf;
use std::process::Command;

/// The interop Python: env `FERRY_INTEROP_PYTHON`, else the workspace venv. Panics with a
/// clear message when it is missing (interop tests never skip).
pub fn python() -> PathBuf {
    let path = std::env::var_os("FERRY_INTEROP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/interop-venv/bin/python")
        });
    assert!(
        path.exists(),
        "interop Python not found at {} — run `cargo xtask interop-setup` or set FERRY_INTEROP_PYTHON",
        path.display()
    );
    path
}

/// Run `python -c script args...`; panics with its stderr when it fails. Returns stdout.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("spawning the interop Python");
    assert!(
        out.status.success(),
        "python failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One receiver pulling `obj` stop-and-wait into `consumer` (plan, chunks, completed).
pub fn pull(obj: &dyn Downloadable, consumer: &mut dyn Consumer) -> Result<(), ConsumeError> {
    let result = (|| {
        if let Some(plan) = obj.plan() {
            consumer.plan_received(&plan)?;
        }
        let mut state: Option<State> = None;
        loop {
            match obj.produce(state.as_ref(), "site-1").expect("produce") {
                Produced::Data { data, state: s } => {
                    state = Some(consumer.consume("R1", &s, data)?);
                }
                Produced::Eof => break,
                Produced::Error { reason } | Produced::Invalid { reason } => {
                    return Err(ConsumeError::Other(reason))
                }
            }
        }
        consumer.completed("R1")
    })();
    if let Err(e) = &result {
        consumer.failed("R1", &e.to_string());
    }
    result
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
