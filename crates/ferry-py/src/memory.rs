//! Python memory as ferry's [`Bytes`], without copying: numpy arrays, torch tensors and `bytes`
//! objects handed to a `Sender` are served straight from the memory Python already holds.
//!
//! This module holds the crate's only `unsafe` code: one slice over memory that Python owns.
//! The pointer and length never come from user input: they are read from the exporting object
//! itself (numpy's `__array_interface__`, torch's `data_ptr()`/`nbytes`, CPython's
//! `PyBytes_AsString`), and the object is kept alive by the [`Bytes`] for as long as any slice
//! of it exists.

use bytes::Bytes;
use ferry::objects::tensors::Dtype;
use ferry::objects::Tensor;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::errors;

/// Memory owned by a Python object: `len` bytes at `ptr`, kept valid by holding `owner`.
struct PyMemory {
    ptr: usize,
    len: usize,
    /// The object that owns the memory (the array, the tensor, the `bytes`). Dropping it
    /// without the GIL is fine: PyO3 defers the decref to the next time a thread attaches.
    _owner: Py<PyAny>,
}

impl AsRef<[u8]> for PyMemory {
    fn as_ref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr`/`len` describe memory owned by `_owner` (checked non-null when the
        // `PyMemory` was built), read from the owner itself right after it was checked to be
        // an unshared-layout, C-contiguous buffer of exactly `len` bytes:
        // - valid and unmoved for the slice's lifetime: the slice borrows `self`, which holds a
        //   strong reference to the owner. A numpy array keeps its data buffer (or its `base`)
        //   alive and in place while referenced (`ndarray.resize` refuses to reallocate an
        //   array that has other references), a torch tensor keeps its storage alive, and a
        //   `bytes` object's data lives inline in the immutable object;
        // - initialised: numpy, torch and CPython only export initialised memory;
        // - not written while we read: `bytes` are immutable; for arrays and tensors this is
        //   the documented contract of `Sender.add_tensors` (do not modify them until the
        //   transaction ends), the same contract CPython itself relies on when it reads a
        //   buffer with the GIL released (hashlib, socket.send); a write that breaks it would
        //   change what receivers get, never memory safety of this process beyond that read;
        // - `len` fits in `isize`: it came from Python's own sizes, which are `Py_ssize_t`.
        #[allow(unsafe_code)]
        let data = unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) };
        data
    }
}

/// Wrap `len` bytes at `ptr`, owned by `owner`, as [`Bytes`] (no copy).
fn share(owner: Bound<'_, PyAny>, ptr: usize, len: usize) -> PyResult<Bytes> {
    if ptr == 0 && len > 0 {
        return Err(errors::usage("the object exports a null data pointer"));
    }
    Ok(Bytes::from_owner(PyMemory {
        ptr,
        len,
        _owner: owner.unbind(),
    }))
}

/// A Python `bytes` object as [`Bytes`], without copying (they are immutable).
pub fn bytes_from_py(b: &Bound<'_, PyBytes>) -> PyResult<Bytes> {
    let data = b.as_bytes();
    share(b.clone().into_any(), data.as_ptr() as usize, data.len())
}

/// The safetensors dtype of a numpy dtype name or a torch dtype without its `torch.` prefix.
pub fn dtype_from_name(name: &str) -> Option<Dtype> {
    Some(match name {
        "bool" => Dtype::BOOL,
        "uint8" => Dtype::U8,
        "int8" => Dtype::I8,
        "int16" => Dtype::I16,
        "uint16" => Dtype::U16,
        "int32" => Dtype::I32,
        "uint32" => Dtype::U32,
        "int64" => Dtype::I64,
        "uint64" => Dtype::U64,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "float32" => Dtype::F32,
        "float64" => Dtype::F64,
        "complex64" => Dtype::C64,
        "float8_e4m3fn" => Dtype::F8_E4M3,
        "float8_e5m2" => Dtype::F8_E5M2,
        "float8_e4m3fnuz" => Dtype::F8_E4M3FNUZ,
        "float8_e5m2fnuz" => Dtype::F8_E5M2FNUZ,
        "float8_e8m0fnu" => Dtype::F8_E8M0,
        _ => return None,
    })
}

/// Turn one value of the mapping given to `add_tensors` into a [`Tensor`] sharing its memory.
/// Accepted: numpy arrays (anything with `__array_interface__` and a numpy `dtype`) and torch
/// tensors on the CPU, C-contiguous, of a dtype safetensors knows.
pub fn tensor_from_py(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let bad = |why: String| errors::usage(format!("tensor {name:?}: {why}"));
    if is_torch_tensor(obj)? {
        return torch_tensor(obj).map_err(|e| prefix(obj.py(), e, name));
    }
    if !obj.hasattr("__array_interface__")? {
        return Err(bad(format!(
            "expected a numpy array or a torch tensor, got {}",
            obj.get_type().name()?
        )));
    }
    numpy_array(obj).map_err(|e| prefix(obj.py(), e, name))
}

/// Put "tensor NAME: " before a usage error's message.
fn prefix(py: Python<'_>, e: PyErr, name: &str) -> PyErr {
    if e.is_instance_of::<errors::UsageError>(py) {
        errors::usage(format!("tensor {name:?}: {}", e.value(py)))
    } else {
        e
    }
}

fn is_torch_tensor(obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    let module = obj.get_type().getattr("__module__")?;
    let module: String = module.extract().unwrap_or_default();
    Ok(module == "torch" || module.starts_with("torch."))
        .map(|is| is && obj.hasattr("data_ptr").unwrap_or(false))
}

fn numpy_array(obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let ai = obj.getattr("__array_interface__")?;
    let ai = ai
        .cast::<PyDict>()
        .map_err(|_| errors::usage("__array_interface__ is not a dict"))?;
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        ai.get_item(k)?
            .ok_or_else(|| errors::usage(format!("__array_interface__ has no {k:?}")))
    };
    if !get("strides")?.is_none() {
        return Err(errors::usage(
            "the array is not C-contiguous; pass numpy.ascontiguousarray(a) (ferry sends arrays without copying them)",
        ));
    }
    let data = get("data")?;
    let data = data.cast::<PyTuple>().map_err(|_| {
        errors::usage("the array does not expose a data pointer (data is not a tuple)")
    })?;
    let ptr: usize = data.get_item(0)?.extract()?;
    let shape: Vec<usize> = get("shape")?.extract()?;
    let dtype = obj
        .getattr("dtype")
        .map_err(|_| errors::usage("the array has no dtype"))?;
    let dname: String = dtype.getattr("name")?.extract()?;
    let order: String = dtype.getattr("byteorder")?.extract()?;
    let little = cfg!(target_endian = "little");
    if order == ">" || (order == "=" && !little) {
        return Err(errors::usage(format!(
            "{dname} is big-endian; safetensors is little-endian: pass a.astype(a.dtype.newbyteorder('<'))"
        )));
    }
    let dt = dtype_from_name(&dname).ok_or_else(|| {
        errors::usage(format!(
            "numpy dtype {dname} has no safetensors equivalent (bool, (u)int8..64, float16/32/64, complex64, bfloat16 and float8 from ml_dtypes)"
        ))
    })?;
    let nbytes: usize = obj.getattr("nbytes")?.extract()?;
    let data = share(obj.clone(), ptr, nbytes)?;
    Tensor::new(dt, shape, data).map_err(|e| errors::usage(e.to_string()))
}

fn torch_tensor(obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    // A detached tensor shares the storage; holding it keeps the storage alive.
    let t = obj.call_method0("detach")?;
    let device: String = t.getattr("device")?.str()?.extract()?;
    if device != "cpu" {
        return Err(errors::usage(format!(
            "the tensor is on {device}; move it to the CPU first (t.cpu())"
        )));
    }
    let layout: String = t.getattr("layout")?.str()?.extract()?;
    if layout != "torch.strided" {
        return Err(errors::usage(format!(
            "the tensor has layout {layout}; only dense (strided) tensors can be sent (t.to_dense())"
        )));
    }
    if !t.call_method0("is_contiguous")?.extract::<bool>()? {
        return Err(errors::usage(
            "the tensor is not contiguous; pass t.contiguous() (ferry sends tensors without copying them)",
        ));
    }
    let dname: String = t.getattr("dtype")?.str()?.extract()?;
    let dt = dname
        .strip_prefix("torch.")
        .and_then(dtype_from_name)
        .ok_or_else(|| errors::usage(format!("{dname} has no safetensors equivalent")))?;
    let numel: usize = t.call_method0("numel")?.extract()?;
    let elem: usize = t.call_method0("element_size")?.extract()?;
    let nbytes = numel
        .checked_mul(elem)
        .ok_or_else(|| errors::usage("the tensor's size overflows"))?;
    let ptr: usize = t.call_method0("data_ptr")?.extract()?;
    let shape: Vec<usize> = t.getattr("shape")?.extract()?;
    let data = share(t, ptr, nbytes)?;
    Tensor::new(dt, shape, data).map_err(|e| errors::usage(e.to_string()))
}
