//! The receiving functions: `get` (a ticket's object, or a whole set, into a directory),
//! `download_tensors` (a tensor dict into memory, as buffers numpy and torch wrap without
//! copying) and `download_bytes`.
//!
//! Each call makes its own cell, connects it to the ticket's sender, downloads, and shuts the
//! cell down; the transfer runs on the runtime with the GIL released (see [`crate::call`]).

use std::collections::HashMap;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry::fetch::{Fetch, FetchOptions};
use ferry::objects::TensorDictConsumer;
use ferry::ticket::Kind;
use ferry::{download_bytes as dl_bytes, download_object, DownloadError};
use pyo3::exceptions::PyUserWarning;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::buffer::TensorBuffer;
use crate::call::Call;
use crate::cells::Tls;
use crate::runtime::CancelToken;
use crate::{errors, set, ticket};

/// Download the object of `ticket` into `out_dir` (created if missing); returns its path.
///
/// A file is written as NAME.part, verified (size and BLAKE3) and renamed; with
/// `resume=True` a kept NAME.part is continued and kept again on failure. A tensor dict
/// (kind=tensors) is written as one .safetensors file. A set (kind=set: a `ferry serve` of a
/// directory or several paths) is every file of its verified manifest, below `out_dir`; the
/// path returned is then the directory that holds them.
#[pyfunction]
#[pyo3(signature = (ticket, out_dir, *, resume=false, overwrite=false, name=None, tls=None, progress=None, request_timeout=60.0, cancel=None))]
#[allow(clippy::too_many_arguments)]
pub fn get(
    py: Python<'_>,
    ticket: &Bound<'_, PyAny>,
    out_dir: PathBuf,
    resume: bool,
    overwrite: bool,
    name: Option<String>,
    tls: Option<Tls>,
    progress: Option<Py<PyAny>>,
    request_timeout: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<PathBuf> {
    let mut call = Call::new(
        ticket::from_arg(ticket)?,
        name,
        tls,
        progress,
        request_timeout,
        cancel.as_deref(),
    )?;
    let fopts = FetchOptions {
        overwrite,
        resume,
        // As `ferry get --force`: overwriting also discards a kept part of other content.
        discard_other_part: overwrite,
        ..FetchOptions::default()
    };
    if call.ticket.kind == Kind::Set {
        return set::get(py, call, out_dir, fopts);
    }
    let dest = out_dir.join(&call.ticket.name);
    if dest.is_dir() {
        return Err(errors::usage(format!(
            "{} is a directory; remove it or pick another out_dir",
            dest.display()
        )));
    }
    if dest.exists() && !overwrite {
        return Err(errors::usage(format!(
            "{} already exists; pass overwrite=True to replace it, or pick another out_dir",
            dest.display()
        )));
    }
    if resume && call.ticket.kind == Kind::Tensors {
        return Err(errors::usage(
            "resume=True applies to files; a tensor dict ticket is downloaded whole",
        ));
    }
    if resume {
        call.part = Some(PathBuf::from(format!("{}.part", dest.display())));
    }
    let resumed = Arc::clone(&call.resumed);
    let (path, discarded) = call.run(py, move |service, ticket, opts| async move {
        let fetch = Fetch::open(&ticket, &out_dir, fopts).await?;
        resumed.store(fetch.resumed_from(), Ordering::Relaxed);
        let discarded = fetch.discarded_part().map(str::to_string);
        fetch.run(&service, opts).await.map(|f| (f.path, discarded))
    })?;
    if let Some(why) = discarded {
        warn(py, &format!("{why}; started {} over", path.display()))?;
    }
    Ok(path)
}

/// Issue a `UserWarning` (something worth telling that did not fail the call).
pub fn warn(py: Python<'_>, msg: &str) -> PyResult<()> {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    PyErr::warn(py, &py.get_type::<PyUserWarning>(), &msg, 1)
}

/// Download a tensor dict into memory: a list of `(name, dtype, shape, TensorBuffer)` in the
/// sender's order. Aliased names (views of one buffer on the sender) share one buffer again.
#[pyfunction]
#[pyo3(signature = (ticket, *, writable=false, name=None, tls=None, progress=None, request_timeout=60.0, cancel=None))]
#[allow(clippy::too_many_arguments)]
pub fn download_tensors<'py>(
    py: Python<'py>,
    ticket: &Bound<'_, PyAny>,
    writable: bool,
    name: Option<String>,
    tls: Option<Tls>,
    progress: Option<Py<PyAny>>,
    request_timeout: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let call = Call::new(
        ticket::from_arg(ticket)?,
        name,
        tls,
        progress,
        request_timeout,
        cancel.as_deref(),
    )?
    .of_kind(
        Kind::Tensors,
        "not a tensor dict; use ferry.get() (or ferry.download_bytes() for a file)",
    )?;
    let dict = call.run(py, |service, ticket, opts| async move {
        let rid = ferry::core::RefId::new(ticket.ref_id.clone());
        // Held to the ticket's pin (the tensor-dict digest) whatever the sender sends.
        let consumer = TensorDictConsumer::new().pin(ticket.pin());
        let mut c = download_object(&service, &ticket.source, &rid, consumer, opts).await?;
        c.take()
            .ok_or_else(|| DownloadError::Local("download completed without tensors".into()))
    })?;
    // Aliases: (address, length) of a tensor already turned into a buffer → that buffer.
    let mut seen: HashMap<(usize, usize), Py<TensorBuffer>> = HashMap::new();
    let mut out = Vec::with_capacity(dict.len());
    for (name, t) in dict {
        let key = (t.data().as_ptr() as usize, t.data().len());
        let buf = match seen.get(&key) {
            Some(b) if !t.data().is_empty() => b.clone_ref(py),
            _ => {
                let b = if writable {
                    // Copy with the GIL released; the frame is released when `t` goes, so the
                    // peak stays near one dict.
                    let data = t.data().clone();
                    TensorBuffer::owned(py.detach(move || data.to_vec()))
                } else {
                    TensorBuffer::shared(t.data().clone())
                };
                let b = Py::new(py, b)?;
                seen.insert(key, b.clone_ref(py));
                b
            }
        };
        out.push(PyTuple::new(
            py,
            [
                name.into_pyobject(py)?.into_any(),
                t.dtype().to_string().into_pyobject(py)?.into_any(),
                PyTuple::new(py, t.shape())?.into_any(),
                buf.into_bound(py).into_any(),
            ],
        )?);
    }
    Ok(out)
}

/// Download an object served as bytes or a file (kind=file) into memory, as `bytes`.
#[pyfunction]
#[pyo3(signature = (ticket, *, name=None, tls=None, progress=None, request_timeout=60.0, cancel=None))]
pub fn download_bytes<'py>(
    py: Python<'py>,
    ticket: &Bound<'_, PyAny>,
    name: Option<String>,
    tls: Option<Tls>,
    progress: Option<Py<PyAny>>,
    request_timeout: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let call = Call::new(
        ticket::from_arg(ticket)?,
        name,
        tls,
        progress,
        request_timeout,
        cancel.as_deref(),
    )?
    .of_kind(
        Kind::File,
        "not bytes or a file; use ferry.download_tensors() for a tensor dict, ferry.get() for a set",
    )?;
    let ticket = call.ticket.clone();
    let data = call.run(py, |service, ticket, opts| async move {
        let rid = ferry::core::RefId::new(ticket.ref_id.clone());
        dl_bytes(&service, &ticket.source, &rid, opts).await
    })?;
    // A bytes object's chunks carry no pin of their own: hold the result to the ticket's.
    let got = (data.len() as u64, py.detach(|| blake3::hash(&data)));
    if got.0 != ticket.size || got.1.to_hex().as_str() != ticket.blake3 {
        return Err(errors::transfer(format!(
            "{}: the sender sent {} bytes with BLAKE3 {}, the ticket pins {} bytes with BLAKE3 {}; nothing was kept",
            ticket.name,
            got.0,
            got.1.to_hex(),
            ticket.size,
            ticket.blake3
        )));
    }
    Ok(PyBytes::new(py, &data))
}
