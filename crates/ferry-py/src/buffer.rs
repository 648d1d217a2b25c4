//! `ferry.TensorBuffer`: one received tensor's memory, which numpy (and torch through numpy)
//! wrap without copying.

use bytes::Bytes;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One received tensor's memory, exposed to numpy through `__array_interface__` as a flat
/// `uint8` array (the Python layer views it with the tensor's dtype and shape). numpy keeps
/// this object alive as the array's base, and this object keeps ferry's buffer alive: no copy.
#[pyclass(module = "ferry._ferry", frozen)]
pub struct TensorBuffer {
    /// Read-only: a slice of the frame the tensor arrived in (held, never read here).
    _shared: Option<Bytes>,
    /// Writable: a private copy (`writable=True`).
    owned: Option<Vec<u8>>,
    /// Address of the first byte, taken once when the buffer was made (for `owned`, from
    /// `as_mut_ptr` before the `Vec` was moved in; moving a `Vec` does not move its heap data).
    addr: usize,
    len: usize,
}

impl TensorBuffer {
    /// A read-only view of `b` (a slice of a received frame).
    pub fn shared(b: Bytes) -> Self {
        Self {
            addr: b.as_ptr() as usize,
            len: b.len(),
            _shared: Some(b),
            owned: None,
        }
    }

    /// A writable buffer owning `v`.
    pub fn owned(mut v: Vec<u8>) -> Self {
        Self {
            addr: v.as_mut_ptr() as usize,
            len: v.len(),
            _shared: None,
            owned: Some(v),
        }
    }
}

#[pymethods]
impl TensorBuffer {
    /// numpy's array interface (version 3): a flat uint8 array over this buffer.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.addr, self.readonly()))?;
        Ok(d)
    }

    /// Bytes in the buffer.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    /// Whether arrays over this buffer are read-only (they are unless `writable=True`).
    #[getter]
    fn readonly(&self) -> bool {
        self.owned.is_none()
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!(
            "ferry.TensorBuffer({} bytes, {})",
            self.len,
            if self.readonly() {
                "read-only"
            } else {
                "writable"
            }
        )
    }
}
