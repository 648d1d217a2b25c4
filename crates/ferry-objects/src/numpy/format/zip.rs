//! The `.npz` container: an uncompressed zip of `NAME.npy` entries, written the way NumPy
//! writes it (ZIP64 local headers) and read back with every entry's CRC-32 checked.

use super::npy::{invalid, npy_header, npy_len, parse_npy, NdArray};
use crate::ObjectsError;
use bytes::Bytes;

pub(super) const LOCAL_SIG: u32 = 0x0403_4b50;
pub(super) const CENTRAL_SIG: u32 = 0x0201_4b50;
pub(super) const EOCD_SIG: u32 = 0x0605_4b50;
pub(super) const EOCD64_SIG: u32 = 0x0606_4b50;
pub(super) const EOCD64_LOCATOR_SIG: u32 = 0x0706_4b50;
pub(super) const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
pub(super) const ZIP64_EXTRA_ID: u16 = 0x0001;
/// General purpose flag: the entry is encrypted.
pub(super) const FLAG_ENCRYPTED: u16 = 1;
/// General purpose flag: sizes and CRC follow the data in a descriptor.
pub(super) const FLAG_DESCRIPTOR: u16 = 1 << 3;
/// General purpose flag: the name is UTF-8.
pub(super) const FLAG_UTF8: u16 = 1 << 11;
/// MS-DOS date of 1980-01-01 (the zip epoch; NumPy writes it too), time 00:00.
pub(super) const DOS_DATE: u16 = (1 << 5) | 1;
pub(super) const DOS_TIME: u16 = 0;
/// "Version needed to extract" for ZIP64 records (4.5) and plain ones (2.0).
pub(super) const ZIP_VERSION_64: u16 = 45;
pub(super) const ZIP_VERSION: u16 = 20;

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
        let header = npy_header(arr.dtype(), arr.shape());
        let size = (header.len() + arr.data().len()) as u64;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(arr.data());
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
        out.extend_from_slice(arr.data());
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

pub(super) fn put16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
pub(super) fn put32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
pub(super) fn put64(v: &mut Vec<u8>, x: u64) {
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
