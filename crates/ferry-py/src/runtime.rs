//! The tokio runtime behind every call, and [`block_on`]: run a future to completion with the
//! GIL released, while staying responsive to Ctrl-C and to Python callbacks.
//!
//! The GIL is released for the whole transfer, so other Python threads run while bytes move.
//! Every [`TICK`] the waiting thread takes the GIL back for a moment: it runs the caller's
//! `on_tick` (progress callbacks run there, on the caller's own thread) and
//! `PyErr_CheckSignals`, which is where a Ctrl-C on the main thread surfaces. Then the
//! operation is cancelled through its token, the future is driven to its end (so the cancel
//! reaches the peer and the consumer cleans up), and the exception is raised.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3::prelude::*;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use crate::errors;

/// How often a blocked call looks at signals and callbacks.
pub const TICK: Duration = Duration::from_millis(50);

/// How long a cancelled operation may take to wind down (send its cancel, clean up) before
/// the call gives up waiting for it and raises anyway.
const WIND_DOWN: Duration = Duration::from_secs(10);

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The process-wide runtime (multi-threaded, started on first use).
pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("ferry")
            .build()
            // Without a runtime nothing works; this fails only when the OS refuses threads.
            .expect("ferry: cannot start the tokio runtime (out of threads or memory?)")
    })
}

/// Run `fut` on the runtime with the GIL released. Every [`TICK`], with the GIL held,
/// `on_tick` runs and signals are checked; if either raises, `cancel` is cancelled, the future
/// is still awaited (at most [`WIND_DOWN`]) so it can tell the peer and clean up, and the
/// error is returned in place of the future's output: a `KeyboardInterrupt` becomes
/// `ferry.Interrupted` with `interrupted_msg`, anything else is raised as it is.
pub fn block_on<T, F>(
    py: Python<'_>,
    fut: F,
    cancel: &CancellationToken,
    interrupted_msg: &str,
    mut on_tick: impl FnMut(Python<'_>) -> PyResult<()>,
) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let rt = runtime();
    let mut handle = rt.spawn(fut);
    let mut stop: Option<PyErr> = None;
    loop {
        let waited = py.detach(|| {
            rt.block_on(async {
                let limit = if stop.is_some() { WIND_DOWN } else { TICK };
                tokio::time::timeout(limit, &mut handle).await
            })
        });
        match waited {
            Ok(joined) => {
                let out = joined
                    .map_err(|e| errors::transfer(format!("ferry: internal task failed: {e}")))?;
                return match stop {
                    Some(e) => Err(e),
                    None => Ok(out),
                };
            }
            Err(_elapsed) if stop.is_some() => {
                // The future did not wind down in time: leave it to finish in the background.
                return Err(stop.take().expect("checked"));
            }
            Err(_elapsed) => {
                let r = on_tick(py).and_then(|()| py.check_signals());
                if let Err(e) = r {
                    cancel.cancel();
                    stop = Some(
                        if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
                            && !e.is_instance_of::<errors::Interrupted>(py)
                        {
                            errors::interrupted(interrupted_msg.to_string())
                        } else {
                            e
                        },
                    );
                }
            }
        }
    }
}

/// Run a short future (setup, teardown) with the GIL released; no cancellation.
pub fn block_on_quick<T, F>(py: Python<'_>, fut: F) -> T
where
    T: Send,
    F: Future<Output = T> + Send,
{
    py.detach(|| runtime().block_on(fut))
}

/// A cancellation handle Python code can hold: `aget` cancels the download through it when
/// its asyncio task is cancelled.
#[pyclass(module = "ferry._ferry", frozen)]
#[derive(Clone, Default)]
pub struct CancelToken {
    pub(crate) token: CancellationToken,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Cancel the operation this token was passed to (it sends its cancel and raises
    /// `ferry.Interrupted`). Safe from any thread; cancelling twice is harmless.
    fn cancel(&self) {
        self.token.cancel();
    }

    /// Whether `cancel()` was called.
    #[getter]
    fn cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}
