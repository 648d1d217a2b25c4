//! Shared support for Ferry's workspace-level tests (`tests/tests/*.rs`).
//!
//! * [`python()`] finds the interop interpreter (NVFlare 2.9.0 + safetensors + numpy) and
//!   panics — interop tests fail, never skip — when it is missing.
//! * [`PyPeer`] runs one Python peer script from `tests/py/` (a real NVFlare cell), reads its
//!   `READY` / `RESULT` json lines, logs its stderr to a file whose tail is printed when the
//!   test fails, and kills it on drop.
//! * [`TestPki`] makes a CA and per-cell certificates for mutual TLS, as PEM strings and as
//!   files for NVFlare.
//! * [`pattern_bytes`], [`sha256_hex`] agree byte for byte with what the peers send/report.
//! * [`e2e`]: gates for deterministic mid-download points, test data and digests, sender and
//!   receiver cells for the download-service tests and the `ferry-peer` binary
//!   (`src/bin/ferry-peer.rs`).
//! * [`init_tracing`]: test logs (`RUST_LOG`, default `warn`) through the test writer.
//!
//! The scripts and their command lines are documented in `tests/py/README.md`.
//!
//! ```no_run
//! use ferry_tests::PyPeer;
//! let mut server = PyPeer::spawn("nv_server_cell.py", ["--timeout", "60"]);
//! let url = server.ready_str("url").to_string(); // e.g. tcp://127.0.0.1:41071
//! // ... connect a Ferry cell to `url`, send requests ...
//! let echo = server.wait_event("echo");
//! assert_eq!(echo["cell"], "server");
//! ```

pub mod e2e;
mod peer;
mod pki;
mod python;

pub use peer::{PyPeer, DEFAULT_DEADLINE};
pub use pki::{CellCert, TestPki};
pub use python::{
    args, pattern_bytes, py_dir, python, run_script, script, sha256_file_hex, sha256_hex,
    workspace_root, ScriptRun, PYTHON_ENV,
};

#[cfg(test)]
mod selftest;

/// Route `tracing` output of the code under test to the test harness's captured output,
/// filtered by `RUST_LOG` (default `warn`). Safe to call from every test: only the first call
/// in a process installs the subscriber.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Names shared with `tests/py/ferry_peer.py`.
pub mod names {
    /// Channel excluded from NVFlare's streaming: plain CoreCell request/reply.
    pub const PLAIN_CHANNEL: &str = "task";
    /// A stream channel: NVFlare `Cell`s stream requests and replies on it (`sm__*`).
    pub const STREAM_CHANNEL: &str = "ferry_stream";
    /// Topic of the echo handlers.
    pub const ECHO_TOPIC: &str = "echo";
    /// Topic of the fire-and-forget handlers (no reply).
    pub const NOTIFY_TOPIC: &str = "notify";
    /// App header on every echo reply; value = FQCN of the replying cell.
    pub const REPLY_HEADER: &str = "x-ferry-reply";
    /// App header a request may carry; echoed back as [`ECHO_HEADER`].
    pub const REQUEST_HEADER: &str = "x-ferry-req";
    /// App header of an echo reply carrying the request's [`REQUEST_HEADER`] value.
    pub const ECHO_HEADER: &str = "x-ferry-echo";
}
