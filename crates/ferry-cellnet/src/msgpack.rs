//! msgpack helpers: a writer that keeps large `bin` values as separate zero-copy segments, and
//! a bounded scanner that checks a body before it is decoded into an [`rmpv::Value`].

use bytes::Bytes;
use rmp::Marker;

use crate::segment::Segment;
use rmpv::Value;

/// `bin` (and pre-encoded) values at least this long become their own segment instead of
/// being copied into the current buffer.
const SEGMENT_THRESHOLD: usize = 64 * 1024;

/// The most nested containers a scanned value may have (as rmpv's own default).
pub const MAX_DEPTH: usize = 1024;

/// The most msgpack nodes [`decode_value`] accepts (4 Mi nodes ≈ 128 MiB of `Value`s). Bodies
/// with more nodes must be read through the raw msgpack fast path.
pub const MAX_VALUE_NODES: usize = 4 * 1024 * 1024;

/// A msgpack body as a list of segments whose concatenation is the encoded value.
///
/// This is the zero-copy form of a payload: a 8 MiB `bin` chunk stays in its own `Bytes` from
/// the producer to the socket, or in its file (a [`Segment::File`], see
/// [`from_parts`](Self::from_parts)) until the connection sends it from there. Build one with [`MsgpackWriter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MsgpackBody {
    segments: Vec<Segment>,
}

impl MsgpackBody {
    /// A body made of one contiguous, already encoded msgpack buffer.
    pub fn from_bytes(b: Bytes) -> Self {
        MsgpackBody {
            segments: vec![Segment::Bytes(b)],
        }
    }

    /// A body made of in-memory segments whose concatenation is one msgpack value.
    pub fn from_segments(segments: Vec<Bytes>) -> Self {
        MsgpackBody {
            segments: segments.into_iter().map(Segment::Bytes).collect(),
        }
    }

    /// A body made of segments, file regions among them, whose concatenation is one msgpack
    /// value.
    pub fn from_parts(segments: Vec<Segment>) -> Self {
        MsgpackBody { segments }
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Take the segments.
    pub fn into_segments(self) -> Vec<Segment> {
        self.segments
    }

    /// Total encoded length.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Segment::len).sum()
    }

    /// True if the body has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body as one contiguous buffer (no copy if it is a single segment in memory). File
    /// regions are read; one its file no longer holds makes the result empty, which no
    /// decoder accepts ([`read_contiguous`](Self::read_contiguous) says why instead).
    pub fn to_contiguous(&self) -> Bytes {
        self.read_contiguous().unwrap_or_default()
    }

    /// The body as one contiguous buffer, file regions read; `UnexpectedEof` if a file no
    /// longer holds its region.
    pub fn read_contiguous(&self) -> std::io::Result<Bytes> {
        match self.segments.as_slice() {
            [] => Ok(Bytes::new()),
            [Segment::Bytes(b)] => Ok(b.clone()),
            segments => {
                let mut v = Vec::with_capacity(self.len());
                for s in segments {
                    match s {
                        Segment::Bytes(b) => v.extend_from_slice(b),
                        Segment::File(r) => v.extend_from_slice(&r.read()?),
                    }
                }
                Ok(Bytes::from(v))
            }
        }
    }
}

/// Builds a [`MsgpackBody`] with NVFlare's encoding choices (`use_bin_type`, smallest int and
/// length markers, float64), keeping large `bin` values as zero-copy segments.
///
/// ```
/// use bytes::Bytes;
/// use ferry_cellnet::MsgpackWriter;
/// let chunk = Bytes::from(vec![7u8; 1 << 20]);
/// let mut w = MsgpackWriter::new();
/// w.map_len(2);
/// w.str("status").str("ok");
/// w.str("data").bin(chunk.clone());
/// let body = w.finish();
/// // the chunk was not copied: it is one of the segments
/// assert!(body
///     .segments()
///     .iter()
///     .any(|s| s.as_bytes().is_some_and(|b| b.as_ptr() == chunk.as_ptr())));
/// ```
#[derive(Debug, Default)]
pub struct MsgpackWriter {
    done: Vec<Segment>,
    cur: Vec<u8>,
}

impl MsgpackWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    fn cut(&mut self) {
        if !self.cur.is_empty() {
            self.done
                .push(Segment::Bytes(Bytes::from(std::mem::take(&mut self.cur))));
        }
    }

    fn push_segment(&mut self, b: Bytes) {
        if b.len() >= SEGMENT_THRESHOLD {
            self.cut();
            self.done.push(Segment::Bytes(b));
        } else {
            self.cur.extend_from_slice(&b);
        }
    }

    /// Write a map header for `n` key/value pairs.
    pub fn map_len(&mut self, n: u32) -> &mut Self {
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut self.cur, n);
        self
    }

    /// Write an array header for `n` elements.
    pub fn array_len(&mut self, n: u32) -> &mut Self {
        let _ = rmp::encode::write_array_len(&mut self.cur, n);
        self
    }

    /// Write a str.
    pub fn str(&mut self, s: &str) -> &mut Self {
        let _ = rmp::encode::write_str(&mut self.cur, s);
        self
    }

    /// Write an integer (smallest encoding; non-negative values use the uint family).
    pub fn int(&mut self, i: i64) -> &mut Self {
        let _ = rmp::encode::write_sint(&mut self.cur, i);
        self
    }

    /// Write an unsigned integer.
    pub fn uint(&mut self, u: u64) -> &mut Self {
        let _ = rmp::encode::write_uint(&mut self.cur, u);
        self
    }

    /// Write a float64.
    pub fn f64(&mut self, f: f64) -> &mut Self {
        let _ = rmp::encode::write_f64(&mut self.cur, f);
        self
    }

    /// Write a bool.
    pub fn bool(&mut self, b: bool) -> &mut Self {
        let _ = rmp::encode::write_bool(&mut self.cur, b);
        self
    }

    /// Write nil.
    pub fn nil(&mut self) -> &mut Self {
        let _ = rmp::encode::write_nil(&mut self.cur);
        self
    }

    /// Write a `bin`; bytes of 64 KiB or more are kept as their own segment (not copied).
    pub fn bin(&mut self, b: Bytes) -> &mut Self {
        // bin lengths above u32 cannot be expressed; callers are bounded by the message limit
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        let _ = rmp::encode::write_bin_len(&mut self.cur, len);
        self.push_segment(b);
        self
    }

    /// Append bytes that are already one or more complete msgpack values.
    pub fn raw(&mut self, b: Bytes) -> &mut Self {
        self.push_segment(b);
        self
    }

    /// Write a dynamic value, moving its large `bin`s into segments without copying them.
    pub fn value(&mut self, v: Value) -> &mut Self {
        match v {
            Value::Nil => self.nil(),
            Value::Boolean(b) => self.bool(b),
            Value::Integer(i) => {
                if let Some(u) = i.as_u64() {
                    self.uint(u)
                } else {
                    self.int(i.as_i64().unwrap_or_default())
                }
            }
            Value::F32(f) => {
                let _ = rmp::encode::write_f32(&mut self.cur, f);
                self
            }
            Value::F64(f) => self.f64(f),
            Value::String(s) => {
                let bytes = s.into_bytes();
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                let _ = rmp::encode::write_str_len(&mut self.cur, len);
                self.push_segment(Bytes::from(bytes));
                self
            }
            Value::Binary(b) => self.bin(Bytes::from(b)),
            Value::Array(items) => {
                self.array_len(items.len() as u32);
                for it in items {
                    self.value(it);
                }
                self
            }
            Value::Map(entries) => {
                self.map_len(entries.len() as u32);
                for (k, v) in entries {
                    self.value(k);
                    self.value(v);
                }
                self
            }
            Value::Ext(ty, data) => {
                let _ = rmp::encode::write_ext_meta(&mut self.cur, data.len() as u32, ty);
                self.push_segment(Bytes::from(data));
                self
            }
        }
    }

    /// Finish and return the body.
    pub fn finish(mut self) -> MsgpackBody {
        self.cut();
        MsgpackBody {
            segments: self.done,
        }
    }
}

/// Encode a value into one contiguous buffer.
pub fn encode_value(v: Value) -> Bytes {
    let mut w = MsgpackWriter::new();
    w.value(v);
    w.finish().to_contiguous()
}

/// Walk one msgpack value at the start of `buf` without allocating; returns the bytes it
/// spans and the number of nodes in it. Fails on truncation, reserved markers, more than
/// [`MAX_DEPTH`] nesting or more than `max_nodes` nodes.
pub fn scan(buf: &[u8], max_nodes: usize) -> Result<(usize, usize), String> {
    let mut pos = 0usize;
    let mut nodes = 0usize;
    // explicit stack of "values still to read" per open container, to avoid recursion
    let mut pending: Vec<u64> = Vec::new();
    let mut remaining_top = 1u64;
    loop {
        // find what to read next
        let need = match pending.last_mut() {
            Some(n) if *n == 0 => {
                pending.pop();
                continue;
            }
            Some(n) => n,
            None if remaining_top == 0 => return Ok((pos, nodes)),
            None => &mut remaining_top,
        };
        *need -= 1;
        nodes += 1;
        if nodes > max_nodes {
            return Err(format!("more than {max_nodes} msgpack nodes"));
        }
        let b = *buf.get(pos).ok_or("truncated msgpack")?;
        pos += 1;
        let take = |pos: &mut usize, n: usize| -> Result<u64, String> {
            let s = buf
                .get(*pos..pos.checked_add(n).ok_or("overflow")?)
                .ok_or("truncated msgpack")?;
            *pos += n;
            Ok(s.iter().fold(0u64, |a, &x| (a << 8) | x as u64))
        };
        let skip = |pos: &mut usize, n: u64| -> Result<(), String> {
            let end = (*pos as u64)
                .checked_add(n)
                .filter(|&e| e <= buf.len() as u64)
                .ok_or("truncated msgpack")?;
            *pos = end as usize;
            Ok(())
        };
        let children: u64 = match Marker::from_u8(b) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                0
            }
            Marker::U8 | Marker::I8 => {
                skip(&mut pos, 1)?;
                0
            }
            Marker::U16 | Marker::I16 => {
                skip(&mut pos, 2)?;
                0
            }
            Marker::U32 | Marker::I32 | Marker::F32 => {
                skip(&mut pos, 4)?;
                0
            }
            Marker::U64 | Marker::I64 | Marker::F64 => {
                skip(&mut pos, 8)?;
                0
            }
            Marker::FixStr(n) => {
                skip(&mut pos, n as u64)?;
                0
            }
            Marker::Str8 | Marker::Bin8 => {
                let n = take(&mut pos, 1)?;
                skip(&mut pos, n)?;
                0
            }
            Marker::Str16 | Marker::Bin16 => {
                let n = take(&mut pos, 2)?;
                skip(&mut pos, n)?;
                0
            }
            Marker::Str32 | Marker::Bin32 => {
                let n = take(&mut pos, 4)?;
                skip(&mut pos, n)?;
                0
            }
            Marker::FixArray(n) => n as u64,
            Marker::Array16 => take(&mut pos, 2)?,
            Marker::Array32 => take(&mut pos, 4)?,
            Marker::FixMap(n) => 2 * n as u64,
            Marker::Map16 => 2 * take(&mut pos, 2)?,
            Marker::Map32 => 2 * take(&mut pos, 4)?,
            Marker::FixExt1 => {
                skip(&mut pos, 2)?;
                0
            }
            Marker::FixExt2 => {
                skip(&mut pos, 3)?;
                0
            }
            Marker::FixExt4 => {
                skip(&mut pos, 5)?;
                0
            }
            Marker::FixExt8 => {
                skip(&mut pos, 9)?;
                0
            }
            Marker::FixExt16 => {
                skip(&mut pos, 17)?;
                0
            }
            Marker::Ext8 => {
                let n = take(&mut pos, 1)?;
                skip(&mut pos, n + 1)?;
                0
            }
            Marker::Ext16 => {
                let n = take(&mut pos, 2)?;
                skip(&mut pos, n + 1)?;
                0
            }
            Marker::Ext32 => {
                let n = take(&mut pos, 4)?;
                skip(&mut pos, n + 1)?;
                0
            }
            Marker::Reserved => return Err("reserved msgpack marker 0xc1".into()),
        };
        if children > 0 {
            if pending.len() >= MAX_DEPTH {
                return Err("msgpack nesting too deep".into());
            }
            pending.push(children);
        }
    }
}

/// Decode exactly one msgpack value spanning all of `buf`, refusing bodies with more than
/// `max_nodes` nodes (so the decoded size stays proportional to a known bound).
pub fn decode_value(buf: &[u8], max_nodes: usize) -> Result<Value, String> {
    let (used, _) = scan(buf, max_nodes)?;
    if used != buf.len() {
        return Err(format!(
            "{} trailing bytes after the msgpack value",
            buf.len() - used
        ));
    }
    let mut rd = buf;
    rmpv::decode::read_value(&mut rd).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::spec_example;

    #[test]
    fn writer_matches_python_bytes() {
        // f3-wire.md §3: {"a":1,"b":b"xy","l":[1,"s"],"d":{"k":None},"f":1.5,"t":True}
        let v = spec_example();
        let b = encode_value(v.clone());
        let want: Vec<u8> = [
            &[0x86, 0xa1, 0x61, 0x01, 0xa1, 0x62, 0xc4, 0x02, 0x78, 0x79][..],
            &[
                0xa1, 0x6c, 0x92, 0x01, 0xa1, 0x73, 0xa1, 0x64, 0x81, 0xa1, 0x6b, 0xc0,
            ],
            &[
                0xa1, 0x66, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xa1, 0x74, 0xc3,
            ],
        ]
        .concat();
        assert_eq!(&b[..], &want[..]);
        assert_eq!(decode_value(&b, 100).unwrap(), v);
        assert_eq!(scan(&b, 100).unwrap(), (want.len(), 17));
    }

    #[test]
    fn large_uint_uses_uint64() {
        // sm__id in §7 is cf 00 06 61 4a e2 78 a0 cf
        let b = encode_value(Value::from(0x0006_614a_e278_a0cf_u64));
        assert_eq!(
            &b[..],
            &[0xcf, 0x00, 0x06, 0x61, 0x4a, 0xe2, 0x78, 0xa0, 0xcf]
        );
    }

    #[test]
    fn scan_rejects_bad_input() {
        assert!(scan(&[0xc1], 10).is_err());
        assert!(scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 10).is_err()); // huge array, no data
        assert!(scan(&[0xc6, 0xff, 0xff, 0xff, 0xff], 10).is_err()); // huge bin, no data
        assert!(scan(&[0x92, 0x01], 10).is_err());
        let deep = vec![0x91u8; 2000];
        assert!(scan(&deep, usize::MAX).is_err());
        assert!(decode_value(&[0x01, 0x02], 10).is_err()); // trailing
        assert!(decode_value(&[0x93, 0xc0, 0xc0, 0xc0], 3).is_err()); // 4 nodes > 3
    }
}
