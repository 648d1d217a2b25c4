//! # ferry-py — `import ferry`
//!
//! PyO3 bindings (abi3, CPython ≥ 3.9) over the [`ferry`] crate, built into a wheel by maturin
//! (`pip install ./crates/ferry-py`). This crate is the extension module `ferry._ferry`; the
//! Python package around it (`python/ferry`) adds the numpy/torch conversions and asyncio.
//!
//! - [`sender`]: `ferry.Sender` — a listening cell and one transaction; `add_file`,
//!   `add_tensors`, `add_bytes` return tickets; `wait` returns the outcome. [`events`]: the
//!   `Outcome` and the `Event`s its `on_event` gets.
//! - [`receive`]: `get`, `download_tensors`, `download_bytes` — one ticket each, over a
//!   [`call`] (the cell, the options, progress); [`set`]: `get` of a set ticket; [`buffer`]:
//!   the received tensors' memory.
//! - [`pool`]: the receiving cells, one per name, shared by the calls that overlap.
//! - [`ticket`]: `ferry.Ticket`, a ticket read into its fields (either written form).
//! - [`memory`]: Python memory served as ferry's `Bytes` without copying (the only `unsafe`).
//! - [`runtime`]: the tokio runtime, and blocking calls that release the GIL and still see
//!   Ctrl-C.
//! - [`cells`]: `ferry.TLS` and the cell naming rules; [`errors`]: the exception classes.

mod buffer;
mod call;
mod cells;
mod errors;
mod events;
mod memory;
mod pool;
mod receive;
mod runtime;
mod sender;
mod set;
mod ticket;

use pyo3::prelude::*;

/// ferry's data plane for Python: send files, tensor dicts and bytes to many receivers by
/// pull, over NVFlare-compatible cells, and receive them by ticket.
#[pymodule]
fn _ferry(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    errors::init_classes(py)?;
    m.add("FerryError", py.get_type::<errors::FerryError>())?;
    m.add("UsageError", py.get_type::<errors::UsageError>())?;
    m.add("TransferError", py.get_type::<errors::TransferError>())?;
    m.add("Interrupted", py.get_type::<errors::Interrupted>())?;
    m.add_class::<sender::Sender>()?;
    m.add_class::<events::Outcome>()?;
    m.add_class::<events::Event>()?;
    m.add_class::<call::Progress>()?;
    m.add_class::<buffer::TensorBuffer>()?;
    m.add_class::<ticket::PyTicket>()?;
    m.add_class::<runtime::CancelToken>()?;
    m.add_class::<cells::Tls>()?;
    m.add_function(wrap_pyfunction!(receive::get, m)?)?;
    m.add_function(wrap_pyfunction!(receive::download_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(receive::download_bytes, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
