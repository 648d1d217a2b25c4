//! The `.npy` array format: [`NdArray`] (dtype, shape, row-major data), its header (a small
//! Python dict literal, parsed by hand: no pickle, no eval) and the dtype sizes.

use crate::ObjectsError;
use bytes::Bytes;

/// Magic of an `.npy` file.
pub(super) const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Data alignment of `.npy` headers written here (NumPy's `ARRAY_ALIGN`).
pub(super) const NPY_ALIGN: usize = 64;
/// Largest `.npy` header accepted (NumPy refuses headers above 10 000 bytes by default).
const MAX_NPY_HEADER: usize = 1 << 16;
/// Most dimensions accepted (NumPy's `NPY_MAXDIMS` is 64).
const MAX_DIMS: usize = 64;

pub(in crate::numpy) fn invalid(name: &str, why: impl Into<String>) -> ObjectsError {
    ObjectsError::InvalidTensor {
        name: name.to_string(),
        why: why.into(),
    }
}

/// Bytes per element of a NumPy `descr` such as `"<f4"`, `"|u1"`, `"<U10"`, `"<M8[ns]"`, or why
/// it is not supported.
pub fn descr_item_size(descr: &str) -> Result<u64, String> {
    let body = descr.strip_prefix(['<', '>', '|', '=']).unwrap_or(descr);
    // A datetime unit suffix such as "[ns]" does not change the size.
    let body = match body.find('[') {
        Some(i) if body.ends_with(']') => {
            let unit = &body[i + 1..body.len() - 1];
            if unit.is_empty() || !unit.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("dtype {descr:?}: bad unit {unit:?}"));
            }
            if !matches!(body.as_bytes().first(), Some(b'M' | b'm')) {
                return Err(format!("dtype {descr:?}: only datetimes take a unit"));
            }
            &body[..i]
        }
        _ => body,
    };
    let mut chars = body.chars();
    let kind = chars
        .next()
        .ok_or_else(|| format!("dtype {descr:?} is empty"))?;
    let digits = chars.as_str();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 12 {
        return Err(format!("dtype {descr:?} is not a NumPy type string"));
    }
    let n: Option<u64> = digits.parse().ok();
    let need = |n: Option<u64>| n.ok_or_else(|| format!("dtype {descr:?} has no size"));
    match kind {
        '?' => Ok(n.unwrap_or(1)),
        'b' | 'i' | 'u' | 'f' | 'c' | 'S' | 'a' | 'V' | 'M' | 'm' => need(n),
        'U' => need(n)?
            .checked_mul(4)
            .ok_or_else(|| format!("dtype {descr:?} is too large")),
        'O' => Err(format!(
            "dtype {descr:?}: object arrays need pickle and are not supported"
        )),
        _ => Err(format!("dtype {descr:?} is not a supported NumPy type")),
    }
}

/// One NumPy array: dtype, shape and its data in C (row-major) order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NdArray {
    /// NumPy's `descr` string (byte order + kind + size), kept verbatim so the array goes back
    /// to NumPy exactly as it came.
    dtype: String,
    shape: Vec<u64>,
    data: Bytes,
}

impl NdArray {
    /// An array over `data`, whose length must match `dtype` (a NumPy `descr` string such as
    /// `"<f4"`) and `shape`.
    pub fn new(
        dtype: impl Into<String>,
        shape: Vec<u64>,
        data: Bytes,
    ) -> Result<Self, ObjectsError> {
        let dtype = dtype.into();
        let want = byte_len(&dtype, &shape).map_err(|why| invalid("", why))?;
        if want != data.len() as u64 {
            return Err(invalid(
                "",
                format!(
                    "{dtype} {shape:?} needs {want} bytes, the data has {}",
                    data.len()
                ),
            ));
        }
        if shape.len() > MAX_DIMS {
            return Err(invalid(
                "",
                format!("{} dimensions (at most {MAX_DIMS})", shape.len()),
            ));
        }
        Ok(Self { dtype, shape, data })
    }

    /// The dtype as NumPy's `descr` string, e.g. `"<f4"`.
    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// The shape (empty for a scalar).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The data, row-major.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The array as an `.npy` file (format 1.0, or 2.0 if the header needs it).
    pub fn to_npy(&self) -> Vec<u8> {
        let mut out = npy_header(&self.dtype, &self.shape);
        out.extend_from_slice(&self.data);
        out
    }

    /// Parse an `.npy` file; the array's data is a zero-copy slice of `buf`.
    pub fn from_npy(buf: Bytes) -> Result<Self, ObjectsError> {
        parse_npy("", buf)
    }
}

pub(super) fn byte_len(dtype: &str, shape: &[u64]) -> Result<u64, String> {
    let item = descr_item_size(dtype)?;
    shape
        .iter()
        .try_fold(item, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("{dtype} {shape:?} overflows"))
}

/// The `.npy` header (magic, version, length, dict, padding) for `dtype` and `shape`.
pub(super) fn npy_header(dtype: &str, shape: &[u64]) -> Vec<u8> {
    let dims = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        ds => format!(
            "({})",
            ds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    };
    let dict = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {dims}, }}");
    // Version 1.0 has a u16 length; fall back to 2.0 (u32) for huge shapes.
    let (version, prefix) = if dict.len() + 1 + 10 + NPY_ALIGN <= usize::from(u16::MAX) {
        (1u8, 10)
    } else {
        (2u8, 12)
    };
    let unpadded = prefix + dict.len() + 1;
    let pad = (NPY_ALIGN - unpadded % NPY_ALIGN) % NPY_ALIGN;
    let hlen = dict.len() + pad + 1;
    let mut out = Vec::with_capacity(prefix + hlen);
    out.extend_from_slice(NPY_MAGIC);
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(out.len() + pad, b' ');
    out.push(b'\n');
    out
}

/// Length of the `.npy` file that starts at `buf` (header + data), from its header alone.
pub(super) fn npy_len(name: &str, buf: &[u8]) -> Result<u64, ObjectsError> {
    let (hdr_end, dtype, shape) = npy_header_parse(name, buf)?;
    let data = byte_len(&dtype, &shape).map_err(|why| invalid(name, why))?;
    (hdr_end as u64)
        .checked_add(data)
        .ok_or_else(|| invalid(name, "array size overflows"))
}

/// Parse an `.npy` header: (offset of the data, descr, shape).
pub(super) fn npy_header_parse(
    name: &str,
    buf: &[u8],
) -> Result<(usize, String, Vec<u64>), ObjectsError> {
    if buf.len() < 10 || &buf[..6] != NPY_MAGIC {
        return Err(invalid(name, "not an .npy array (wrong magic)"));
    }
    let (hlen, start) = match buf[6] {
        1 => (usize::from(u16::from_le_bytes([buf[8], buf[9]])), 10),
        2 | 3 => {
            if buf.len() < 12 {
                return Err(invalid(name, "truncated .npy header"));
            }
            let n = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        v => {
            return Err(invalid(
                name,
                format!(".npy format version {v} is not supported"),
            ))
        }
    };
    if hlen > MAX_NPY_HEADER {
        return Err(invalid(
            name,
            format!(".npy header of {hlen} bytes is too large"),
        ));
    }
    let end = start + hlen;
    let text = buf
        .get(start..end)
        .ok_or_else(|| invalid(name, "truncated .npy header"))?;
    let text = std::str::from_utf8(text).map_err(|_| invalid(name, ".npy header is not text"))?;
    let header = HeaderParser::new(text).dict().map_err(|why| {
        invalid(
            name,
            format!("bad .npy header {:?}: {why}", text.trim_end()),
        )
    })?;
    if header.fortran_order {
        return Err(invalid(
            name,
            "Fortran-ordered (column-major) arrays are not supported; save a C-contiguous array",
        ));
    }
    if header.shape.len() > MAX_DIMS {
        return Err(invalid(
            name,
            format!("{} dimensions (at most {MAX_DIMS})", header.shape.len()),
        ));
    }
    descr_item_size(&header.descr).map_err(|why| invalid(name, why))?;
    Ok((end, header.descr, header.shape))
}

pub(super) fn parse_npy(name: &str, buf: Bytes) -> Result<NdArray, ObjectsError> {
    let (data_start, dtype, shape) = npy_header_parse(name, &buf)?;
    let want = byte_len(&dtype, &shape).map_err(|why| invalid(name, why))?;
    let have = (buf.len() - data_start) as u64;
    if have != want {
        return Err(invalid(
            name,
            format!("{dtype} {shape:?} needs {want} data bytes, the .npy file has {have}"),
        ));
    }
    Ok(NdArray {
        dtype,
        shape,
        data: buf.slice(data_start..),
    })
}

/// The fields of an `.npy` header dict.
struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
}

/// A parser for the small Python literal subset of `.npy` headers: a dict of quoted keys to
/// quoted strings, `True`/`False` and tuples of integers.
struct HeaderParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> HeaderParser<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            i: 0,
        }
    }

    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let q = self.peek().filter(|&c| c == b'\'' || c == b'"');
        let q = q.ok_or_else(|| format!("expected a string at {}", self.i))?;
        self.i += 1;
        let start = self.i;
        while let Some(&c) = self.s.get(self.i) {
            if c == q {
                let v = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                return Ok(v);
            }
            if c == b'\\' {
                return Err("escapes in strings are not supported".into());
            }
            self.i += 1;
        }
        Err("unterminated string".into())
    }

    fn word(&mut self) -> &'a [u8] {
        self.ws();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn boolean(&mut self) -> Result<bool, String> {
        match self.word() {
            b"True" => Ok(true),
            b"False" => Ok(false),
            w => Err(format!(
                "expected True or False, got {:?}",
                String::from_utf8_lossy(w)
            )),
        }
    }

    fn shape(&mut self) -> Result<Vec<u64>, String> {
        self.eat(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.peek() == Some(b')') {
                self.i += 1;
                return Ok(dims);
            }
            if dims.len() >= MAX_DIMS {
                return Err(format!("more than {MAX_DIMS} dimensions"));
            }
            let w = self.word();
            // Python 2 wrote longs as `3L`.
            let w = w.strip_suffix(b"L").unwrap_or(w);
            let d = std::str::from_utf8(w)
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or_else(|| format!("bad dimension {:?}", String::from_utf8_lossy(w)))?;
            dims.push(d);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b')') => {}
                _ => return Err("expected ',' or ')' in the shape".into()),
            }
        }
    }

    fn dict(mut self) -> Result<NpyHeader, String> {
        self.eat(b'{')?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                break;
            }
            let key = self.string()?;
            self.eat(b':')?;
            match key.as_str() {
                "descr" if self.peek() == Some(b'[') => {
                    return Err("structured dtypes are not supported".into())
                }
                "descr" => descr = Some(self.string()?),
                "fortran_order" => fortran = Some(self.boolean()?),
                "shape" => shape = Some(self.shape()?),
                other => return Err(format!("unexpected key {other:?}")),
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err("expected ',' or '}'".into()),
            }
        }
        if self.peek().is_some() {
            return Err("trailing characters after the dict".into());
        }
        Ok(NpyHeader {
            descr: descr.ok_or("no 'descr'")?,
            fortran_order: fortran.ok_or("no 'fortran_order'")?,
            shape: shape.ok_or("no 'shape'")?,
        })
    }
}
