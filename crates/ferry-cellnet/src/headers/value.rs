//! One msgpack value of a header block read straight from its bytes into an [`rmpv::Value`].
//!
//! `rmpv::decode::read_value` reads through `std::io::Read`: each str goes through
//! `read_to_end` with its probing reads and growth, and a str that is not UTF-8 is kept to
//! be found by a second walk. Here strs and bins are copied once into a buffer of their
//! exact length, and a str that is not UTF-8 fails at once (Python's `msgpack.unpackb`
//! refuses it too). Bad input is an error, never a panic: every str or bin length is checked
//! against what is left of the input before it is copied, a container reserves nothing for
//! what it claims (it grows with what is read), and nesting is bounded by [`MAX_DEPTH`].

use rmpv::Value;

use crate::msgpack::MAX_DEPTH;

/// Why a value could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ReadError {
    /// The input ended inside the value.
    #[error("truncated msgpack")]
    Truncated,
    /// A str that is not UTF-8.
    #[error("a str that is not UTF-8")]
    NotUtf8,
    /// The reserved marker 0xc1.
    #[error("reserved msgpack marker 0xc1")]
    Reserved,
    /// Not a map where the header block starts.
    #[error("not a map")]
    NotMap,
    /// A key that is not a str.
    #[error("a key that is not a str")]
    NotStr,
    /// Containers nested deeper than [`MAX_DEPTH`].
    #[error("msgpack nesting too deep")]
    TooDeep,
}

/// Take `n` bytes off the front of `rd`.
fn take<'a>(rd: &mut &'a [u8], n: usize) -> Result<&'a [u8], ReadError> {
    if rd.len() < n {
        return Err(ReadError::Truncated);
    }
    let (head, rest) = rd.split_at(n);
    *rd = rest;
    Ok(head)
}

/// A big-endian unsigned integer of `n` (≤ 8) bytes.
fn uint(rd: &mut &[u8], n: usize) -> Result<u64, ReadError> {
    Ok(take(rd, n)?
        .iter()
        .fold(0u64, |a, &b| (a << 8) | u64::from(b)))
}

/// A length of `n` bytes (a str, bin, array, map or ext size).
fn len(rd: &mut &[u8], n: usize) -> Result<usize, ReadError> {
    usize::try_from(uint(rd, n)?).map_err(|_| ReadError::Truncated)
}

/// A str of `n` bytes.
fn str<'a>(rd: &mut &'a [u8], n: usize) -> Result<&'a str, ReadError> {
    std::str::from_utf8(take(rd, n)?).map_err(|_| ReadError::NotUtf8)
}

/// Check a str of `n` bytes without making it: header strs are nearly always ASCII, which
/// an inlined word-wise check confirms in a fraction of a `from_utf8` call.
fn check_str(rd: &mut &[u8], n: usize) -> Result<(), ReadError> {
    let b = take(rd, n)?;
    if b.is_ascii() || std::str::from_utf8(b).is_ok() {
        Ok(())
    } else {
        Err(ReadError::NotUtf8)
    }
}

/// The length of the map that starts `rd`.
pub(super) fn map_len(rd: &mut &[u8]) -> Result<usize, ReadError> {
    let m = take(rd, 1)?[0];
    match m {
        0x80..=0x8f => Ok(usize::from(m & 0x0f)),
        0xde => len(rd, 2),
        0xdf => len(rd, 4),
        _ => Err(ReadError::NotMap),
    }
}

/// The bytes of the str that starts `rd`, not yet checked for UTF-8 (a known key need not
/// be: [`super::scan`] checks only the others).
pub(super) fn key<'a>(rd: &mut &'a [u8]) -> Result<&'a [u8], ReadError> {
    let m = take(rd, 1)?[0];
    let n = match m {
        0xa0..=0xbf => usize::from(m & 0x1f),
        0xd9..=0xdb => len(rd, 1 << (m - 0xd9))?,
        _ => return Err(ReadError::NotStr),
    };
    take(rd, n)
}

/// An array's elements.
///
/// Nothing is reserved ahead, whatever the array claims: its Vec grows with the elements
/// actually read, so what it holds is at most twice what the input made (at least 4 slots,
/// for at least 2 input bytes). Reserving even 16 elements ahead let nested claims that the
/// input never fills cost 1 KiB per 3 input bytes (the `headers` fuzz target's finding).
fn array(rd: &mut &[u8], n: usize, depth: usize) -> Result<Value, ReadError> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(read_at(rd, depth)?);
    }
    Ok(Value::Array(v))
}

/// A map's entries, grown as they are read (see [`array()`]).
fn map(rd: &mut &[u8], n: usize, depth: usize) -> Result<Value, ReadError> {
    let mut m = Vec::new();
    for _ in 0..n {
        let k = read_at(rd, depth)?;
        m.push((k, read_at(rd, depth)?));
    }
    Ok(Value::Map(m))
}

fn ext(rd: &mut &[u8], n: usize) -> Result<Value, ReadError> {
    let ty = take(rd, 1)?[0] as i8;
    Ok(Value::Ext(ty, take(rd, n)?.to_vec()))
}

/// Check one value off the front of `rd` without building it: the same errors for the same
/// input as [`read`], the same bytes consumed, and no allocation whatever the input claims.
pub(super) fn skip(rd: &mut &[u8]) -> Result<(), ReadError> {
    skip_at(rd, 0)
}

/// `n` values in a row, inside `depth` containers.
fn skip_n(rd: &mut &[u8], n: usize, depth: usize) -> Result<(), ReadError> {
    for _ in 0..n {
        skip_at(rd, depth)?;
    }
    Ok(())
}

/// [`skip`] inside `depth` containers.
fn skip_at(rd: &mut &[u8], depth: usize) -> Result<(), ReadError> {
    let m = take(rd, 1)?[0];
    if matches!(m, 0x80..=0x9f | 0xdc..=0xdf) && depth >= MAX_DEPTH {
        return Err(ReadError::TooDeep);
    }
    let inner = depth + 1;
    match m {
        0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => {}
        0x80..=0x8f => {
            for _ in 0..usize::from(m & 0x0f) {
                skip_at(rd, inner)?;
                skip_at(rd, inner)?;
            }
        }
        0x90..=0x9f => skip_n(rd, usize::from(m & 0x0f), inner)?,
        0xa0..=0xbf => check_str(rd, usize::from(m & 0x1f))?,
        0xc1 => return Err(ReadError::Reserved),
        0xc4..=0xc6 => {
            let n = len(rd, 1 << (m - 0xc4))?;
            take(rd, n)?;
        }
        0xc7..=0xc9 => {
            let n = len(rd, 1 << (m - 0xc7))?;
            take(rd, 1)?;
            take(rd, n)?;
        }
        0xca | 0xd2 => drop(take(rd, 4)?),
        0xcb | 0xd3 => drop(take(rd, 8)?),
        0xcc..=0xcf => drop(take(rd, 1 << (m - 0xcc))?),
        0xd0 => drop(take(rd, 1)?),
        0xd1 => drop(take(rd, 2)?),
        0xd4..=0xd8 => drop(take(rd, 1 + (1 << (m - 0xd4)))?),
        0xd9..=0xdb => {
            let n = len(rd, 1 << (m - 0xd9))?;
            check_str(rd, n)?;
        }
        0xdc | 0xdd => {
            let n = len(rd, if m == 0xdc { 2 } else { 4 })?;
            skip_n(rd, n, inner)?;
        }
        0xde | 0xdf => {
            let n = len(rd, if m == 0xde { 2 } else { 4 })?;
            for _ in 0..n {
                skip_at(rd, inner)?;
                skip_at(rd, inner)?;
            }
        }
    }
    Ok(())
}

/// The str a value checked by [`skip`] holds, `None` if it is not a str.
pub(super) fn as_str(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(as_str_bytes(v)?).ok()
}

/// The bytes of the str a value checked by [`skip`] holds (UTF-8, as `skip` checked), `None`
/// if it is not a str: [`as_str`] without checking the UTF-8 again, for a caller that only
/// compares or parses the bytes.
pub(super) fn as_str_bytes(mut v: &[u8]) -> Option<&[u8]> {
    let rd = &mut v;
    let m = take(rd, 1).ok()?[0];
    let n = match m {
        0xa0..=0xbf => usize::from(m & 0x1f),
        0xd9..=0xdb => len(rd, 1 << (m - 0xd9)).ok()?,
        _ => return None,
    };
    take(rd, n).ok()
}

/// The length of the array a value checked by [`skip`] is, `None` if it is not an array.
pub(super) fn array_len(mut v: &[u8]) -> Option<usize> {
    let rd = &mut v;
    let m = take(rd, 1).ok()?[0];
    match m {
        0x90..=0x9f => Some(usize::from(m & 0x0f)),
        0xdc => len(rd, 2).ok(),
        0xdd => len(rd, 4).ok(),
        _ => None,
    }
}

/// Read one value off the front of `rd`: at most [`MAX_DEPTH`] containers deep (the
/// reader recurses once per level), every length checked against the input.
pub(super) fn read(rd: &mut &[u8]) -> Result<Value, ReadError> {
    read_at(rd, 0)
}

/// [`read`] inside `depth` containers.
fn read_at(rd: &mut &[u8], depth: usize) -> Result<Value, ReadError> {
    let m = take(rd, 1)?[0];
    if matches!(m, 0x80..=0x9f | 0xdc..=0xdf) && depth >= MAX_DEPTH {
        return Err(ReadError::TooDeep);
    }
    let inner = depth + 1;
    Ok(match m {
        0x00..=0x7f => Value::from(m),
        0x80..=0x8f => return map(rd, usize::from(m & 0x0f), inner),
        0x90..=0x9f => return array(rd, usize::from(m & 0x0f), inner),
        0xa0..=0xbf => Value::from(str(rd, usize::from(m & 0x1f))?),
        0xc0 => Value::Nil,
        0xc1 => return Err(ReadError::Reserved),
        0xc2 => Value::Boolean(false),
        0xc3 => Value::Boolean(true),
        0xc4..=0xc6 => {
            let n = len(rd, 1 << (m - 0xc4))?;
            Value::Binary(take(rd, n)?.to_vec())
        }
        0xc7..=0xc9 => {
            let n = len(rd, 1 << (m - 0xc7))?;
            return ext(rd, n);
        }
        0xca => Value::F32(f32::from_bits(uint(rd, 4)? as u32)),
        0xcb => Value::F64(f64::from_bits(uint(rd, 8)?)),
        0xcc..=0xcf => Value::from(uint(rd, 1 << (m - 0xcc))?),
        0xd0 => Value::from(take(rd, 1)?[0] as i8),
        0xd1 => Value::from(uint(rd, 2)? as u16 as i16),
        0xd2 => Value::from(uint(rd, 4)? as u32 as i32),
        0xd3 => Value::from(uint(rd, 8)? as i64),
        0xd4..=0xd8 => return ext(rd, 1 << (m - 0xd4)),
        0xd9..=0xdb => {
            let n = len(rd, 1 << (m - 0xd9))?;
            Value::from(str(rd, n)?)
        }
        0xdc | 0xdd => {
            let n = len(rd, if m == 0xdc { 2 } else { 4 })?;
            return array(rd, n, inner);
        }
        0xde | 0xdf => {
            let n = len(rd, if m == 0xde { 2 } else { 4 })?;
            return map(rd, n, inner);
        }
        0xe0..=0xff => Value::from(m as i8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rmpv's reader, for comparison.
    fn rmpv_read(b: &[u8]) -> Value {
        rmpv::decode::read_value(&mut &b[..]).unwrap()
    }

    #[test]
    fn every_marker_reads_as_rmpv_reads_it() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0x05],
            vec![0xe0],
            vec![0xff],
            vec![0xc0],
            vec![0xc2],
            vec![0xc3],
            vec![0xcc, 0xff],
            vec![0xcd, 0x01, 0x00],
            vec![0xce, 0, 0, 1, 0],
            vec![0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            vec![0xd0, 0x80],
            vec![0xd1, 0x80, 0x00],
            vec![0xd2, 0x80, 0, 0, 0],
            vec![0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            vec![0xca, 0x3f, 0xc0, 0, 0],
            vec![0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0],
            vec![0xa2, b'h', b'i'],
            vec![0xd9, 0x01, b'x'],
            vec![0xda, 0x00, 0x01, b'x'],
            vec![0xdb, 0, 0, 0, 1, b'x'],
            vec![0xc4, 0x02, 1, 2],
            vec![0xc5, 0x00, 0x01, 9],
            vec![0xc6, 0, 0, 0, 1, 9],
            vec![0xd4, 0x07, 0xaa],
            vec![0xd5, 0xf9, 1, 2],
            vec![0xd6, 1, 1, 2, 3, 4],
            vec![0xd7, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0xd8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![0xc7, 0x01, 0x05, 0xee],
            vec![0xc8, 0x00, 0x01, 0x05, 0xee],
            vec![0xc9, 0, 0, 0, 1, 0x05, 0xee],
            vec![0x92, 0x01, 0xa1, b's'],
            vec![0xdc, 0x00, 0x01, 0xc0],
            vec![0xdd, 0, 0, 0, 1, 0xc0],
            vec![0x81, 0xa1, b'k', 0x91, 0x80],
            vec![0xde, 0x00, 0x01, 0x01, 0x02],
            vec![0xdf, 0, 0, 0, 1, 0x01, 0x02],
        ];
        for b in cases {
            let mut rd = &b[..];
            assert_eq!(read(&mut rd).unwrap(), rmpv_read(&b), "{b:02x?}");
            assert!(rd.is_empty(), "{b:02x?} left {rd:02x?}");
        }
    }

    /// `skip` accepts what `read` accepts, refuses what it refuses, and stops where it stops.
    fn skip_agrees_with_read(b: &[u8]) {
        let (mut r1, mut r2) = (b, b);
        let read = read(&mut r1);
        let skipped = skip(&mut r2);
        match (&read, &skipped) {
            (Ok(_), Ok(())) => assert_eq!(r1.len(), r2.len(), "{b:02x?}"),
            (Err(a), Err(b2)) => assert_eq!(a, b2, "{b:02x?}"),
            _ => panic!("read {read:?}, skip {skipped:?} for {b:02x?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn skip_agrees_with_read_on_any_input(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            skip_agrees_with_read(&b);
        }

        #[test]
        fn skip_agrees_with_read_on_mutated_values(i in 0usize..40, at in 0usize..16, byte in proptest::prelude::any::<u8>()) {
            let v = sample_values();
            let mut b = v[i % v.len()].clone();
            if !b.is_empty() {
                let at = at % b.len();
                b[at] = byte;
            }
            skip_agrees_with_read(&b);
        }
    }

    fn sample_values() -> Vec<Vec<u8>> {
        let nested = Value::Map(vec![(
            "k".into(),
            Value::Array(vec![
                Value::from(-3),
                "x".into(),
                Value::F32(1.5),
                Value::Binary(vec![1, 2, 3]),
                Value::Ext(5, vec![9; 4]),
                Value::from(u64::MAX),
                Value::Nil,
                Value::from(true),
            ]),
        )]);
        let mut out = Vec::new();
        for v in [
            nested,
            Value::from("a str of more than thirty-one bytes, str8"),
            Value::Array(vec![Value::Array(vec!["site-1".into(), Value::F64(1.0)])]),
        ] {
            let mut b = Vec::new();
            rmpv::encode::write_value(&mut b, &v).unwrap();
            out.push(b);
        }
        out
    }

    #[test]
    fn skip_agrees_with_read_on_every_marker_and_bad_input() {
        for b in sample_values() {
            skip_agrees_with_read(&b);
            for cut in 0..b.len() {
                skip_agrees_with_read(&b[..cut]);
            }
        }
        let nested: Vec<u8> = [0xdd, 0xff, 0xff, 0xff, 0xff].repeat(1000);
        skip_agrees_with_read(&nested);
        skip_agrees_with_read(&[0x81u8; 5000]);
        skip_agrees_with_read(&[0x91, 0xa1, 0xc3]);
        skip_agrees_with_read(&[0xc1]);
        for m in 0..=255u8 {
            skip_agrees_with_read(&[m, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
            skip_agrees_with_read(&[m]);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let err = |b: &[u8]| read(&mut &b[..]).unwrap_err();
        assert_eq!(err(&[]), ReadError::Truncated);
        assert_eq!(err(&[0xc1]), ReadError::Reserved);
        assert_eq!(err(&[0xa2, b'x']), ReadError::Truncated);
        assert_eq!(err(&[0xa1, 0xff]), ReadError::NotUtf8);
        assert_eq!(err(&[0x91, 0xa1, 0xc3]), ReadError::NotUtf8);
        // a claimed 4 Gi-element array or bin with nothing behind it reserves nothing big
        assert_eq!(err(&[0xdd, 0xff, 0xff, 0xff, 0xff]), ReadError::Truncated);
        assert_eq!(
            err(&[0xc6, 0xff, 0xff, 0xff, 0xff, 0]),
            ReadError::Truncated
        );
        assert_eq!(err(&[0xdf, 0xff, 0xff, 0xff, 0xff]), ReadError::Truncated);
        // nested claims of 4 Gi elements each: refused, nothing reserved in proportion
        let nested: Vec<u8> = [0xdd, 0xff, 0xff, 0xff, 0xff].repeat(1000);
        assert_eq!(err(&nested), ReadError::Truncated);
        // nesting: MAX_DEPTH containers are read, one more is refused
        let mut ok = vec![0x91u8; MAX_DEPTH];
        ok.push(0xc0);
        assert!(read(&mut &ok[..]).is_ok());
        let mut deep = vec![0x91u8; MAX_DEPTH + 1];
        deep.push(0xc0);
        assert_eq!(err(&deep), ReadError::TooDeep);
        assert_eq!(err(&[0x81u8; 5000]), ReadError::TooDeep);
    }
}
