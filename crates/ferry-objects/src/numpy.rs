//! NumPy array dicts served item by item as one-key `.npz` blobs, as NVFlare's
//! `ArrayDownloadable` / `ArrayConsumer` (`app_common/np/np_downloader.py`) do.
//!
//! An NVFlare numpy item is what `np.savez(stream, allow_pickle=False, **{name: array})`
//! writes: an uncompressed (stored) zip archive holding one entry `NAME.npy`, an `.npy` file.
//! The object's state is the cacheable `{"start": s, "count": c}` and the chunk data a list of
//! such blobs (NVFlare packs items up to 2 MiB per chunk, [`ChunkPacking::MaxBytes`](crate::ChunkPacking::MaxBytes)).
//!
//! - [`NdArray`]: a dtype (NumPy's `descr` string, e.g. `"<f4"`), a shape and the C-order data.
//! - [`NdArrayDict`]: named arrays in insertion order.
//! - [`NpzSource`] / [`NpzDictObject`]: the producer, one item per array.
//! - [`NpzDictConsumer`]: rebuilds the dict (array data are zero-copy slices of the items).
//! - [`encode_npz`] / [`decode_npz`]: the item format on its own.
//!
//! ## Format notes
//!
//! - `.npy` (format 1.0; 2.0 and 3.0 are read too): magic `\x93NUMPY`, major, minor, header
//!   length (u16 LE for 1.0, u32 LE for 2.0/3.0), then a Python dict literal
//!   `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded with spaces and a
//!   final `\n` so the data start at a multiple of 64. The data follow, row-major.
//! - Only plain dtypes are supported (`b i u f c ? S a U V M m` with a size); object arrays
//!   (`O`, they need pickle) and structured dtypes (a list `descr`) are refused, as is
//!   `fortran_order: True` (a column-major buffer would be misread as row-major).
//! - Zip: NumPy writes every local header in ZIP64 form (sizes `0xFFFFFFFF`, real sizes in
//!   extra field `0x0001`), entries stored (method 0), fixed timestamp 1980-01-01. The writer
//!   here does the same, so its blobs are what NumPy writes up to the `.npy` header padding;
//!   the central directory and end record switch to ZIP64 only past 4 GiB. The reader walks
//!   the local headers (ZIP64 or not, with or without a data descriptor), verifies each
//!   entry's CRC-32 and stops at the central directory; compressed (`savez_compressed`) and
//!   encrypted entries are refused.

use crate::buffer_pool::BufferPool;
use crate::cacheable::{CacheOptions, CacheableObject, ItemError, ItemSource, ItemTracker};
use crate::delivery::Delivery;
use crate::item_dict::ItemDictAssembly;
use crate::ObjectsError;
use bytes::Bytes;
use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};
use std::collections::HashMap;
use std::sync::RwLock;

/// Magic of an `.npy` file.
const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Data alignment of `.npy` headers written here (NumPy's `ARRAY_ALIGN`).
const NPY_ALIGN: usize = 64;
/// Largest `.npy` header accepted (NumPy refuses headers above 10 000 bytes by default).
const MAX_NPY_HEADER: usize = 1 << 16;
/// Most dimensions accepted (NumPy's `NPY_MAXDIMS` is 64).
const MAX_DIMS: usize = 64;

const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const EOCD64_SIG: u32 = 0x0606_4b50;
const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const ZIP64_EXTRA_ID: u16 = 0x0001;
/// General purpose flag: the entry is encrypted.
const FLAG_ENCRYPTED: u16 = 1;
/// General purpose flag: sizes and CRC follow the data in a descriptor.
const FLAG_DESCRIPTOR: u16 = 1 << 3;
/// General purpose flag: the name is UTF-8.
const FLAG_UTF8: u16 = 1 << 11;
/// MS-DOS date of 1980-01-01 (the zip epoch; NumPy writes it too), time 00:00.
const DOS_DATE: u16 = (1 << 5) | 1;
const DOS_TIME: u16 = 0;
/// "Version needed to extract" for ZIP64 records (4.5) and plain ones (2.0).
const ZIP_VERSION_64: u16 = 45;
const ZIP_VERSION: u16 = 20;

fn invalid(name: &str, why: impl Into<String>) -> ObjectsError {
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

fn byte_len(dtype: &str, shape: &[u64]) -> Result<u64, String> {
    let item = descr_item_size(dtype)?;
    shape
        .iter()
        .try_fold(item, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("{dtype} {shape:?} overflows"))
}

/// The `.npy` header (magic, version, length, dict, padding) for `dtype` and `shape`.
fn npy_header(dtype: &str, shape: &[u64]) -> Vec<u8> {
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
fn npy_len(name: &str, buf: &[u8]) -> Result<u64, ObjectsError> {
    let (hdr_end, dtype, shape) = npy_header_parse(name, buf)?;
    let data = byte_len(&dtype, &shape).map_err(|why| invalid(name, why))?;
    (hdr_end as u64)
        .checked_add(data)
        .ok_or_else(|| invalid(name, "array size overflows"))
}

/// Parse an `.npy` header: (offset of the data, descr, shape).
fn npy_header_parse(name: &str, buf: &[u8]) -> Result<(usize, String, Vec<u64>), ObjectsError> {
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

fn parse_npy(name: &str, buf: Bytes) -> Result<NdArray, ObjectsError> {
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

/// An `.npz` archive (what `np.savez` writes) holding `arrays` as `NAME.npy` entries, stored
/// uncompressed. Names must be non-empty and unique.
pub fn encode_npz<'a>(
    arrays: impl IntoIterator<Item = (&'a str, &'a NdArray)>,
) -> Result<Vec<u8>, ObjectsError> {
    let mut out = Vec::new();
    encode_npz_into(arrays, &mut out)?;
    Ok(out)
}

/// [`encode_npz`], appending the archive to `buf` (a recycled buffer is filled without growing
/// when it is big enough). Offsets inside the archive count from where it starts in `buf`; on
/// error `buf` may hold part of an archive.
pub(crate) fn encode_npz_into<'a>(
    arrays: impl IntoIterator<Item = (&'a str, &'a NdArray)>,
    buf: &mut Vec<u8>,
) -> Result<(), ObjectsError> {
    let base = buf.len();
    let out = buf;
    // (name, crc, size, offset of the local header)
    let mut entries: Vec<(String, u32, u64, u64)> = Vec::new();
    for (name, arr) in arrays {
        if name.is_empty() {
            return Err(invalid(name, "empty name"));
        }
        let file = format!("{name}.npy");
        if entries.iter().any(|e| e.0 == file) {
            return Err(invalid(name, "duplicate name"));
        }
        if file.len() > usize::from(u16::MAX) {
            return Err(invalid(name, "name too long for a zip entry"));
        }
        let header = npy_header(&arr.dtype, &arr.shape);
        let size = (header.len() + arr.data.len()) as u64;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&arr.data);
        let crc = crc.finalize();
        let offset = (out.len() - base) as u64;
        let flags = if file.is_ascii() { 0 } else { FLAG_UTF8 };
        // Local header, ZIP64 form like NumPy's (`force_zip64=True`).
        put32(out, LOCAL_SIG);
        put16(out, ZIP_VERSION_64);
        put16(out, flags);
        put16(out, 0); // stored
        put16(out, DOS_TIME);
        put16(out, DOS_DATE);
        put32(out, crc);
        put32(out, u32::MAX);
        put32(out, u32::MAX);
        put16(out, file.len() as u16);
        put16(out, 20);
        out.extend_from_slice(file.as_bytes());
        put16(out, ZIP64_EXTRA_ID);
        put16(out, 16);
        put64(out, size);
        put64(out, size);
        out.extend_from_slice(&header);
        out.extend_from_slice(&arr.data);
        entries.push((file, crc, size, offset));
    }
    let cd_start = (out.len() - base) as u64;
    for (file, crc, size, offset) in &entries {
        let big_size = *size >= u64::from(u32::MAX);
        let big_off = *offset >= u64::from(u32::MAX);
        let mut extra = Vec::new();
        if big_size {
            put64(&mut extra, *size);
            put64(&mut extra, *size);
        }
        if big_off {
            put64(&mut extra, *offset);
        }
        let zip64 = !extra.is_empty();
        put32(out, CENTRAL_SIG);
        put16(out, ZIP_VERSION_64); // made by
        put16(out, if zip64 { ZIP_VERSION_64 } else { ZIP_VERSION });
        put16(out, if file.is_ascii() { 0 } else { FLAG_UTF8 });
        put16(out, 0);
        put16(out, DOS_TIME);
        put16(out, DOS_DATE);
        put32(out, *crc);
        let s32 = if big_size { u32::MAX } else { *size as u32 };
        put32(out, s32);
        put32(out, s32);
        put16(out, file.len() as u16);
        put16(out, if zip64 { extra.len() as u16 + 4 } else { 0 });
        put16(out, 0); // comment
        put16(out, 0); // disk
        put16(out, 0); // internal attributes
        put32(out, 0o600 << 16); // external: -rw-------
        put32(out, if big_off { u32::MAX } else { *offset as u32 });
        out.extend_from_slice(file.as_bytes());
        if zip64 {
            put16(out, ZIP64_EXTRA_ID);
            put16(out, extra.len() as u16);
            out.extend_from_slice(&extra);
        }
    }
    let cd_end = (out.len() - base) as u64;
    let cd_size = cd_end - cd_start;
    let n = entries.len() as u64;
    let zip64_end = cd_start >= u64::from(u32::MAX) || n >= u64::from(u16::MAX);
    if zip64_end {
        put32(out, EOCD64_SIG);
        put64(out, 44);
        put16(out, ZIP_VERSION_64);
        put16(out, ZIP_VERSION_64);
        put32(out, 0);
        put32(out, 0);
        put64(out, n);
        put64(out, n);
        put64(out, cd_size);
        put64(out, cd_start);
        put32(out, EOCD64_LOCATOR_SIG);
        put32(out, 0);
        put64(out, cd_end);
        put32(out, 1);
    }
    put32(out, EOCD_SIG);
    put16(out, 0);
    put16(out, 0);
    let n16 = if zip64_end { u16::MAX } else { n as u16 };
    put16(out, n16);
    put16(out, n16);
    put32(out, if zip64_end { u32::MAX } else { cd_size as u32 });
    put32(out, if zip64_end { u32::MAX } else { cd_start as u32 });
    put16(out, 0);
    Ok(())
}

fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Little-endian reads with bounds checks.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ObjectsError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end =
            end.ok_or_else(|| invalid("", format!("truncated npz archive at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, ObjectsError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, ObjectsError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, ObjectsError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

/// Parse an `.npz` archive (as `np.savez` writes it) into its arrays, in archive order. Array
/// data are zero-copy slices of `blob`; every entry's CRC-32 is checked.
pub fn decode_npz(blob: &Bytes) -> Result<Vec<(String, NdArray)>, ObjectsError> {
    let mut r = Reader { b: blob, at: 0 };
    let mut out: Vec<(String, NdArray)> = Vec::new();
    loop {
        if r.at == blob.len() && !out.is_empty() {
            // No central directory: tolerated, every entry was read and checked.
            return Ok(out);
        }
        let sig = r
            .u32()
            .map_err(|_| invalid("", format!("truncated npz archive at byte {}", r.at)))?;
        match sig {
            LOCAL_SIG => {}
            CENTRAL_SIG | EOCD_SIG | EOCD64_SIG => return Ok(out),
            _ if r.at == 4 => {
                return Err(invalid(
                    "",
                    "not an npz archive (wrong magic, expected a zip file)",
                ))
            }
            _ => {
                return Err(invalid(
                    "",
                    format!("bad zip record signature {sig:#010x} at byte {}", r.at - 4),
                ))
            }
        }
        let _version = r.u16()?;
        let flags = r.u16()?;
        let method = r.u16()?;
        let _time = r.u16()?;
        let _date = r.u16()?;
        let crc = r.u32()?;
        let csize32 = r.u32()?;
        let usize32 = r.u32()?;
        let name_len = usize::from(r.u16()?);
        let extra_len = usize::from(r.u16()?);
        let raw_name = r.take(name_len)?;
        let file = std::str::from_utf8(raw_name)
            .map_err(|_| invalid("", "zip entry name is not UTF-8"))?
            .to_string();
        let extra = r.take(extra_len)?;
        let name = file
            .strip_suffix(".npy")
            .ok_or_else(|| invalid(&file, "zip entry is not an .npy array"))?
            .to_string();
        if flags & FLAG_ENCRYPTED != 0 {
            return Err(invalid(&name, "encrypted zip entries are not supported"));
        }
        if method != 0 {
            return Err(invalid(
                &name,
                format!("zip compression method {method} is not supported (np.savez_compressed); use np.savez"),
            ));
        }
        let (mut csize, mut usize_) = (u64::from(csize32), u64::from(usize32));
        let mut zip64 = false;
        let mut ex = Reader { b: extra, at: 0 };
        while ex.at + 4 <= extra.len() {
            let id = ex.u16()?;
            let len = usize::from(ex.u16()?);
            let body = ex.take(len)?;
            if id == ZIP64_EXTRA_ID {
                zip64 = true;
                let mut z = Reader { b: body, at: 0 };
                if usize32 == u32::MAX {
                    usize_ = z.u64()?;
                }
                if csize32 == u32::MAX {
                    csize = z.u64()?;
                }
            }
        }
        let data_start = r.at;
        // (entry length, its CRC, bytes of data descriptor after the data)
        let (len, crc, descriptor) = if flags & FLAG_DESCRIPTOR != 0 {
            // Sizes follow the data: the .npy header says how long the entry is.
            let len = npy_len(&name, &blob[data_start..])?;
            let len_us = usize::try_from(len).map_err(|_| invalid(&name, "entry too large"))?;
            let mut d = Reader {
                b: blob,
                at: data_start,
            };
            d.take(len_us)
                .map_err(|_| invalid(&name, "truncated npz entry"))?;
            let mut crc = d.u32()?;
            if crc == DESCRIPTOR_SIG {
                crc = d.u32()?;
            }
            let (c, u) = if zip64 {
                (d.u64()?, d.u64()?)
            } else {
                (u64::from(d.u32()?), u64::from(d.u32()?))
            };
            if c != len || u != len {
                return Err(invalid(
                    &name,
                    format!("data descriptor sizes {c}/{u} disagree with the entry's {len} bytes"),
                ));
            }
            (len, crc, d.at - data_start - len_us)
        } else {
            if csize != usize_ {
                return Err(invalid(
                    &name,
                    "stored zip entry with different compressed and plain sizes",
                ));
            }
            (csize, crc, 0)
        };
        let len_us = usize::try_from(len).map_err(|_| invalid(&name, "entry too large"))?;
        let data = r.take(len_us).map_err(|_| {
            invalid(
                &name,
                format!(
                    "truncated npz entry: {len} bytes announced, {} present",
                    blob.len() - data_start
                ),
            )
        })?;
        let actual = crc32fast::hash(data);
        if actual != crc {
            return Err(invalid(
                &name,
                format!("CRC-32 mismatch (stored {crc:#010x}, computed {actual:#010x})"),
            ));
        }
        r.take(descriptor)?;
        if out.iter().any(|(n, _)| *n == name) {
            return Err(invalid(&name, "duplicate array name in the archive"));
        }
        let arr = parse_npy(&name, blob.slice(data_start..data_start + len_us))?;
        out.push((name, arr));
    }
}

/// Named arrays in insertion order; names are unique.
///
/// Equality compares names and arrays regardless of order.
#[derive(Clone, Debug, Default)]
pub struct NdArrayDict {
    entries: Vec<(String, NdArray)>,
    index: HashMap<String, usize>,
}

impl PartialEq for NdArrayDict {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(name, a)| other.get(name).is_some_and(|o| o == a))
    }
}

impl NdArrayDict {
    /// An empty dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `array` under `name` (non-empty, unique).
    pub fn insert(&mut self, name: impl Into<String>, array: NdArray) -> Result<(), ObjectsError> {
        let name = name.into();
        if name.is_empty() {
            return Err(invalid(&name, "empty name"));
        }
        if self.index.contains_key(&name) {
            return Err(invalid(&name, "duplicate name"));
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, array));
        Ok(())
    }

    /// The array named `name`.
    pub fn get(&self, name: &str) -> Option<&NdArray> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Number of arrays.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no arrays.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The arrays in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NdArray)> {
        self.entries.iter().map(|(n, a)| (n.as_str(), a))
    }

    /// Sum of the arrays' data lengths.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|(_, a)| a.data.len() as u64).sum()
    }
}

/// An [`ItemSource`] over an [`NdArrayDict`]: item `i` is the `i`-th array as a one-key `.npz`
/// blob, NVFlare's `ArrayDownloadable` item format.
#[derive(Debug)]
pub struct NpzSource {
    /// `None` after release (the arrays are dropped).
    arrays: RwLock<Option<Vec<(String, NdArray)>>>,
    /// Per item: data length (a lower bound of the blob, the size hint), kept after release.
    sizes: Vec<u64>,
    /// Blob buffers come back here once the cache and the connections are done with an item
    /// (a fresh multi-MiB allocation per item costs a page fault per 4 KiB).
    pool: BufferPool,
}

/// Idle blob buffers an [`NpzSource`] keeps.
const NPZ_POOL_IDLE: usize = 16;

impl NpzSource {
    /// Serve `dict`, one item per array in insertion order.
    pub fn new(dict: NdArrayDict) -> Self {
        let sizes = dict
            .entries
            .iter()
            .map(|(_, a)| a.data.len() as u64)
            .collect();
        Self {
            arrays: RwLock::new(Some(dict.entries)),
            sizes,
            pool: BufferPool::new(NPZ_POOL_IDLE),
        }
    }
}

impl ItemSource for NpzSource {
    fn item_count(&self) -> u64 {
        self.sizes.len() as u64
    }

    fn produce_item(&self, index: u64) -> Result<Bytes, ItemError> {
        let err = |reason: String| ItemError { index, reason };
        let guard = self.arrays.read().unwrap_or_else(|p| p.into_inner());
        let arrays = guard
            .as_ref()
            .ok_or_else(|| err("arrays requested after release".into()))?;
        let (name, arr) = usize::try_from(index)
            .ok()
            .and_then(|i| arrays.get(i))
            .ok_or_else(|| err("no such item".into()))?;
        // Zip and .npy headers are small; reserve the data plus room for them.
        let mut buf = self.pool.take_empty(arr.data.len() + 4096);
        encode_npz_into([(name.as_str(), arr)], &mut buf)
            .map_err(|e| err(format!("serializing {name:?}: {e}")))?;
        Ok(self.pool.freeze(buf))
    }

    fn item_size_hint(&self, index: u64) -> Option<u64> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.sizes.get(i))
            .copied()
    }

    fn release(&self) {
        *self.arrays.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.pool.clear();
    }
}

/// A NumPy array dict served as a shared, cached item object.
pub type NpzDictObject = CacheableObject<NpzSource>;

impl CacheableObject<NpzSource> {
    /// Serve `dict` (one array per item; use
    /// [`ChunkPacking::MaxBytes`](crate::ChunkPacking::MaxBytes)(crate::ChunkPacking::MaxBytes)`(2 MiB)` to pack chunks as
    /// NVFlare does).
    pub fn from_arrays(dict: NdArrayDict, options: CacheOptions) -> Result<Self, ObjectsError> {
        CacheableObject::new(NpzSource::new(dict), options)
    }
}

/// Rebuilds an array dict in memory from a NumPy item object (NVFlare's `add_arrays` or an
/// [`NpzDictObject`]).
///
/// Items may arrive in any order; the dict is built in the sender's order. Each item may hold
/// several arrays (all are taken, as NVFlare's `ArrayConsumer` does). A malformed item fails
/// the download with an error naming the item.
#[derive(Debug, Default)]
pub struct NpzDictConsumer {
    assembly: ItemDictAssembly<NdArrayDict>,
}

impl NpzDictConsumer {
    /// A new consumer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A consumer whose tracker has a custom item limit.
    pub fn with_tracker(tracker: ItemTracker) -> Self {
        Self {
            assembly: ItemDictAssembly::new(tracker),
        }
    }

    /// A handle that receives the dict when the download completes.
    pub fn delivery(&self) -> Delivery<NdArrayDict> {
        self.assembly.delivery()
    }

    /// The dict, once completed (taken once).
    pub fn take(&mut self) -> Option<NdArrayDict> {
        self.assembly.take()
    }
}

impl Consumer for NpzDictConsumer {
    /// `consume` never blocks: arrays are parsed in memory.
    fn blocks(&self) -> bool {
        false
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.assembly.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        false
    }

    fn consume(
        &mut self,
        _ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        self.assembly.consume(state, data, |index, blob| {
            decode_npz(blob).map_err(|e| ConsumeError::Integrity(format!("item {index}: {e}")))
        })
    }

    fn completed(&mut self, _ref_id: &str) -> Result<(), ConsumeError> {
        self.assembly.completed()
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        tracing::debug!(ref_id, reason, "numpy dict download failed");
        self.assembly.failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cacheable::ChunkPacking;
    use crate::testutil::{drive, pattern};
    use ferry_core::Downloadable;

    /// `np.savez(s, allow_pickle=False, **{"a.b": np.arange(6, dtype="<f4").reshape(2, 3)})`,
    /// written by NumPy 2.4.
    const NUMPY_F4: &str = "504b03042d0000000000000021004fe9002affffffffffffffff07001400612e622e6e70790100100098000000000000009800000000000000934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028322c2033292c207d202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000000000000803f0000004000004040000080400000a040504b01022d032d0000000000000021004fe9002a9800000098000000070000000000000000000000800100000000612e622e6e7079504b0506000000000100010035000000d10000000000";
    /// `np.savez(s, f=np.asfortranarray(np.arange(6, dtype="<i2").reshape(2, 3)))`.
    const NUMPY_FORTRAN: &str = "504b03042d00000000000000210068c6180fffffffffffffffff05001400662e6e7079010010008c000000000000008c00000000000000934e554d5059010076007b276465736372273a20273c6932272c2027666f727472616e5f6f72646572273a20547275652c20277368617065273a2028322c2033292c207d20202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020202020200a000003000100040002000500504b01022d032d00000000000000210068c6180f8c0000008c000000050000000000000000000000800100000000662e6e7079504b0506000000000100010033000000c30000000000";

    fn hex(s: &str) -> Bytes {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn arr(dtype: &str, shape: &[u64], seed: u64) -> NdArray {
        let n = byte_len(dtype, shape).unwrap() as usize;
        NdArray::new(dtype, shape.to_vec(), pattern(n, seed).into()).unwrap()
    }

    fn sample_dict() -> NdArrayDict {
        let mut d = NdArrayDict::new();
        d.insert("layer0.weight", arr("<f4", &[64, 32], 1)).unwrap();
        d.insert("layer1.bias", arr("<f8", &[17], 2)).unwrap();
        d.insert("layer2.index", arr("<i4", &[3, 5, 7], 3)).unwrap();
        d.insert("mask", arr("|u1", &[1000], 4)).unwrap();
        d.insert("flag", arr("|b1", &[3], 5)).unwrap();
        d.insert("scalar", arr("<f8", &[], 6)).unwrap();
        d.insert("empty", arr("<f2", &[0, 4], 7)).unwrap();
        d.insert("big_endian", arr(">i8", &[2, 2], 8)).unwrap();
        d.insert("ünïcode", arr("<U3", &[2], 9)).unwrap();
        d
    }

    #[test]
    fn reads_what_numpy_writes() {
        let got = decode_npz(&hex(NUMPY_F4)).unwrap();
        assert_eq!(got.len(), 1);
        let (name, a) = &got[0];
        assert_eq!(name, "a.b");
        assert_eq!(a.dtype(), "<f4");
        assert_eq!(a.shape(), &[2, 3]);
        let want: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        assert_eq!(&a.data()[..], &want[..]);
    }

    #[test]
    fn writes_what_numpy_writes_up_to_header_padding() {
        let a = NdArray::new(
            "<f4",
            vec![2, 3],
            (0..6)
                .flat_map(|i| (i as f32).to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        )
        .unwrap();
        let ours = encode_npz([("a.b", &a)]).unwrap();
        let numpy = hex(NUMPY_F4);
        // Same local header layout (ZIP64 form, stored, 1980 timestamp, same name)...
        assert_eq!(&ours[..14], &numpy[..14]);
        assert_eq!(&ours[26..30], &numpy[26..30]);
        // ... and the same array.
        assert_eq!(decode_npz(&Bytes::from(ours)).unwrap()[0].1, a);
    }

    #[test]
    fn npy_header_is_aligned_v1() {
        for shape in [vec![], vec![7], vec![2, 3], vec![1; 20]] {
            let h = npy_header("<f4", &shape);
            assert_eq!(&h[..6], NPY_MAGIC);
            assert_eq!(h[6], 1);
            assert_eq!(h.len() % NPY_ALIGN, 0, "{shape:?}");
            assert_eq!(*h.last().unwrap(), b'\n');
            let (end, d, s) = npy_header_parse("x", &h).unwrap();
            assert_eq!((end, d.as_str(), s), (h.len(), "<f4", shape));
        }
    }

    #[test]
    fn npy_round_trip() {
        for (_, a) in sample_dict().iter() {
            assert_eq!(&NdArray::from_npy(a.to_npy().into()).unwrap(), a);
        }
    }

    #[test]
    fn npz_round_trip_one_and_many_entries() {
        let d = sample_dict();
        for (name, a) in d.iter() {
            let blob = Bytes::from(encode_npz([(name, a)]).unwrap());
            let got = decode_npz(&blob).unwrap();
            assert_eq!(got, vec![(name.to_string(), a.clone())]);
        }
        let blob = Bytes::from(encode_npz(d.iter()).unwrap());
        let got = decode_npz(&blob).unwrap();
        assert_eq!(got.len(), d.len());
        for ((n1, a1), (n2, a2)) in got.iter().zip(d.iter()) {
            assert_eq!((n1.as_str(), a1), (n2, a2));
        }
    }

    #[test]
    fn appending_into_a_used_buffer_writes_the_same_archive() {
        let d = sample_dict();
        let whole = encode_npz(d.iter()).unwrap();
        // A recycled buffer: cleared, or still holding bytes before the archive.
        for prefix in [&b""[..], b"earlier bytes"] {
            let mut buf = Vec::with_capacity(8);
            buf.extend_from_slice(prefix);
            encode_npz_into(d.iter(), &mut buf).unwrap();
            assert_eq!(&buf[prefix.len()..], &whole[..], "prefix {prefix:?}");
        }
    }

    #[test]
    fn reads_entries_with_a_data_descriptor() {
        // A streaming zip writer: sizes 0 in the local header, flag bit 3, descriptor after.
        let a = arr("<i2", &[5], 3);
        let npy = a.to_npy();
        let crc = crc32fast::hash(&npy);
        let mut b = Vec::new();
        put32(&mut b, LOCAL_SIG);
        put16(&mut b, 20);
        put16(&mut b, FLAG_DESCRIPTOR);
        put16(&mut b, 0);
        put16(&mut b, 0);
        put16(&mut b, DOS_DATE);
        put32(&mut b, 0);
        put32(&mut b, 0);
        put32(&mut b, 0);
        put16(&mut b, 5);
        put16(&mut b, 0);
        b.extend_from_slice(b"x.npy");
        b.extend_from_slice(&npy);
        put32(&mut b, DESCRIPTOR_SIG);
        put32(&mut b, crc);
        put32(&mut b, npy.len() as u32);
        put32(&mut b, npy.len() as u32);
        put32(&mut b, EOCD_SIG);
        b.extend_from_slice(&[0; 18]);
        let got = decode_npz(&Bytes::from(b)).unwrap();
        assert_eq!(got, vec![("x".to_string(), a)]);
    }

    #[test]
    fn end_record_points_at_the_central_directory() {
        // Below 4 GiB the end record is the plain one and points at the central directory.
        let a = arr("<f4", &[4], 1);
        let blob = encode_npz([("w", &a)]).unwrap();
        let eocd = &blob[blob.len() - 22..];
        assert_eq!(&eocd[..4], &EOCD_SIG.to_le_bytes());
        let cd_off = u32::from_le_bytes(eocd[16..20].try_into().unwrap()) as usize;
        assert_eq!(&blob[cd_off..cd_off + 4], &CENTRAL_SIG.to_le_bytes());
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let blob = Bytes::from(encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap());
        // Up to the end of the entry's data every prefix is incomplete.
        let data_end = 30 + 5 + 20 + npy_header("<f4", &[8]).len() + 32;
        for n in 0..data_end {
            let err = decode_npz(&blob.slice(..n)).unwrap_err().to_string();
            assert!(
                err.contains("truncated") || err.contains("wrong magic"),
                "prefix {n}: {err}"
            );
        }
        // Only the central directory missing: every entry was read and checked.
        assert_eq!(decode_npz(&blob.slice(..data_end)).unwrap().len(), 1);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let err = decode_npz(&Bytes::from_static(b"\x93NUMPY\x01\x00")).unwrap_err();
        assert!(err.to_string().contains("wrong magic"), "{err}");
        let err = NdArray::from_npy(Bytes::from_static(b"PK\x03\x04 not npy")).unwrap_err();
        assert!(err.to_string().contains("wrong magic"), "{err}");
        // A zip whose entry is not an .npy file inside.
        let mut b = encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap();
        b[55] = b'X';
        let crc_fixed = {
            let data = &b[55..55 + npy_header("<f4", &[8]).len() + 32];
            crc32fast::hash(data)
        };
        b[14..18].copy_from_slice(&crc_fixed.to_le_bytes());
        let err = decode_npz(&Bytes::from(b)).unwrap_err();
        assert!(err.to_string().contains("wrong magic"), "{err}");
    }

    #[test]
    fn fortran_order_is_refused() {
        let err = decode_npz(&hex(NUMPY_FORTRAN)).unwrap_err().to_string();
        assert!(err.contains("Fortran"), "{err}");
        assert!(err.contains("\"f\""), "names the array: {err}");
    }

    #[test]
    fn crc_mismatch_is_refused() {
        let mut b = encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap();
        let last_data = 30 + 5 + 20 + npy_header("<f4", &[8]).len() + 31;
        b[last_data] ^= 0xff;
        let err = decode_npz(&Bytes::from(b)).unwrap_err().to_string();
        assert!(err.contains("CRC-32 mismatch"), "{err}");
    }

    #[test]
    fn unsupported_headers_and_entries_are_refused() {
        let npy = |dict: &str| {
            let mut v = NPY_MAGIC.to_vec();
            v.extend_from_slice(&[1, 0]);
            v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            v.extend_from_slice(dict.as_bytes());
            Bytes::from(v)
        };
        let cases = [
            (
                "{'descr': '|O', 'fortran_order': False, 'shape': (0,), }",
                "pickle",
            ),
            (
                "{'descr': [('a', '<i4')], 'fortran_order': False, 'shape': (0,), }",
                "structured",
            ),
            ("{'descr': '<f4', 'fortran_order': False, }", "no 'shape'"),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
                "unexpected key",
            ),
            (
                "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
                "True or False",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
                "bad dimension",
            ),
            (
                "{'descr': '<q9', 'fortran_order': False, 'shape': (2,), }",
                "not a supported",
            ),
            (
                "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
                "overflows",
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
                "needs 8 data bytes",
            ),
        ];
        for (dict, want) in cases {
            let err = NdArray::from_npy(npy(dict)).unwrap_err().to_string();
            assert!(err.contains(want), "{dict}: {err}");
        }
        // A compressed entry.
        let mut b = encode_npz([("w", &arr("<f4", &[8], 1))]).unwrap();
        b[8] = 8;
        let err = decode_npz(&Bytes::from(b)).unwrap_err().to_string();
        assert!(err.contains("savez_compressed"), "{err}");
    }

    #[test]
    fn array_construction_checks_length_and_dtype() {
        assert!(NdArray::new("<f4", vec![2], Bytes::from_static(&[0; 8])).is_ok());
        let e = NdArray::new("<f4", vec![3], Bytes::from_static(&[0; 8])).unwrap_err();
        assert!(e.to_string().contains("needs 12 bytes"), "{e}");
        assert!(NdArray::new("|O8", vec![1], Bytes::from_static(&[0; 8])).is_err());
        assert_eq!(descr_item_size("<M8[ns]"), Ok(8));
        assert_eq!(descr_item_size("<U10"), Ok(40));
        assert_eq!(descr_item_size("|b1"), Ok(1));
        assert_eq!(descr_item_size("?"), Ok(1));
        assert!(descr_item_size("<f4[ns]").is_err());
        assert!(descr_item_size("").is_err());
        let mut d = NdArrayDict::new();
        d.insert("a", arr("<f4", &[1], 1)).unwrap();
        assert!(d.insert("a", arr("<f4", &[1], 1)).is_err());
        assert!(d.insert("", arr("<f4", &[1], 1)).is_err());
    }

    #[test]
    fn object_to_consumer_with_both_packings() {
        let d = sample_dict();
        for packing in [
            ChunkPacking::PerChunk(1),
            ChunkPacking::PerChunk(3),
            ChunkPacking::MaxBytes(2 << 20),
            ChunkPacking::MaxBytes(100),
        ] {
            let obj = NpzDictObject::from_arrays(
                d.clone(),
                CacheOptions::default().with_packing(packing.clone()),
            )
            .unwrap();
            let mut c = NpzDictConsumer::new();
            let delivery = c.delivery();
            drive(&obj, &mut c, None, |chunks| chunks.reverse()).unwrap();
            assert!(delivery.is_ready());
            let got = c.take().unwrap();
            assert_eq!(got, d, "{packing:?}");
            // Chunks arrived in reverse; the dict keeps the sender's order.
            let names: Vec<&str> = got.iter().map(|(n, _)| n).collect();
            let sent: Vec<&str> = d.iter().map(|(n, _)| n).collect();
            assert_eq!(names, sent, "{packing:?}");
            obj.release();
        }
    }

    #[test]
    fn consumer_refuses_a_bad_item_naming_it() {
        let mut c = NpzDictConsumer::new();
        let state = State::new()
            .with(crate::cacheable::START, 4u64)
            .with(crate::cacheable::COUNT, 1u64);
        let err = c
            .consume(
                "R1",
                &state,
                ChunkData::Items(vec![Bytes::from_static(b"junk")]),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("item 4") && err.contains("wrong magic"),
            "{err}"
        );
        c.failed("R1", &err);
        assert!(c.take().is_none());
    }

    proptest::proptest! {
        /// Arbitrary corruption of a valid blob (bytes flipped, truncated, extended) gives a
        /// result or an error, never a panic; whatever parses has consistent arrays.
        #[test]
        fn corrupted_blobs_never_panic(
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..400,
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            let a = arr("<i4", &[3, 5], 1);
            let b = arr("|u1", &[7], 2);
            let mut blob = encode_npz([("a", &a), ("b", &b)]).unwrap();
            for (at, x) in flips {
                let n = blob.len();
                blob[at % n] ^= x;
            }
            blob.truncate(blob.len().min(cut.max(1) * 2));
            blob.extend_from_slice(&tail);
            if let Ok(arrays) = decode_npz(&Bytes::from(blob)) {
                for (_, x) in arrays {
                    let want = byte_len(x.dtype(), x.shape()).unwrap();
                    proptest::prop_assert_eq!(want, x.data().len() as u64);
                }
            }
        }
    }

    #[test]
    fn source_after_release_errors() {
        let src = NpzSource::new(sample_dict());
        assert_eq!(src.item_count(), 9);
        assert_eq!(src.item_size_hint(0), Some(64 * 32 * 4));
        assert!(src.produce_item(0).is_ok());
        assert!(src.produce_item(99).is_err());
        src.release();
        let e = src.produce_item(0).unwrap_err();
        assert!(e.reason.contains("after release"), "{e}");
    }
}
