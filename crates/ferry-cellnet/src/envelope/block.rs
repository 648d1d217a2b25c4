//! The header block of a stamp of a known [`super::Shape`], written on the stack.
//!
//! Sealing a REQ or a REPLY writes 30 short pieces: 15 keys and 15 values, most of them a few
//! to 40 bytes. Appended to a `Vec` one by one, each piece was a capacity check, a `memcpy`
//! call and a length update (over half of the cost of sealing), and the Vec was left with
//! room to spare, so that `Bytes::from` allocated again. Here the block is written into a
//! stack buffer: each key is one fixed 32-byte move of its padded bytes, a value of up to 32
//! bytes two overlapping fixed-width moves; the block is then copied, in one piece, into a
//! `Vec` of exactly its size (which `Bytes::from` keeps as it is). A block that does not fit
//! is left to the caller to write another way.

/// The pre-encoded keys of a shape: each key's msgpack, zero-padded to 32 bytes, and its
/// length.
pub(crate) type PaddedKeys = [([u8; KEY_ROOM], u8)];

/// Room for a key's msgpack (a fixstr: at most 32 bytes).
pub(crate) const KEY_ROOM: usize = 32;

/// The stack buffer's size: a stamp's block is 250–350 bytes unless its names are long. The
/// last [`KEY_ROOM`] bytes are room for a padded key written near the end.
pub(crate) const BUF: usize = 512;

/// A stack buffer, filled from the front.
pub(crate) struct Block {
    buf: [u8; BUF],
    /// Bytes written so far; past [`BUF`] once a write did not fit ([`Block::next`]), so
    /// that every later write fails too and the block is refused.
    at: usize,
}

/// `key` padded to [`KEY_ROOM`] bytes (a const: the keys of a shape are laid out at compile
/// time).
pub(crate) const fn padded(key: &[u8]) -> ([u8; KEY_ROOM], u8) {
    assert!(key.len() <= KEY_ROOM);
    let mut out = [0u8; KEY_ROOM];
    let mut i = 0;
    while i < key.len() {
        out[i] = key[i];
        i += 1;
    }
    (out, key.len() as u8)
}

impl Block {
    /// An empty block.
    #[inline(always)]
    pub fn new() -> Block {
        Block {
            buf: [0; BUF],
            at: 0,
        }
    }

    /// The bytes written, as a `Vec` of exactly their size; `None` if they did not fit.
    pub fn finish(&self) -> Option<Vec<u8>> {
        self.buf.get(..self.at).map(<[u8]>::to_vec)
    }

    /// The next `n` bytes of the buffer, if there is room for them (else the block is full).
    #[inline(always)]
    fn next(&mut self, n: usize) -> Option<&mut [u8]> {
        // `at` is at most BUF + 1 and `n` the length of a slice: no overflow
        match self.buf.get_mut(self.at..self.at + n) {
            Some(dst) => Some(dst),
            None => {
                self.at = BUF + 1;
                None
            }
        }
    }

    /// Append a padded key: all [`KEY_ROOM`] bytes are copied, `len` of them kept.
    #[inline(always)]
    pub fn key(&mut self, (bytes, len): &([u8; KEY_ROOM], u8)) {
        if let Some(dst) = self.next(KEY_ROOM) {
            dst.copy_from_slice(bytes);
            self.at += usize::from(*len);
        }
    }

    /// Append one byte.
    #[inline(always)]
    pub fn byte(&mut self, b: u8) {
        if let Some(dst) = self.next(1) {
            dst[0] = b;
            self.at += 1;
        }
    }

    /// Append `src`.
    #[inline(always)]
    pub fn bytes(&mut self, src: &[u8]) {
        let n = src.len();
        if let Some(dst) = self.next(n) {
            copy_short(dst, src);
            self.at += n;
        }
    }

    /// Append a msgpack str, in its shortest form (as `rmp` writes it).
    #[inline(always)]
    pub fn str(&mut self, s: &str) {
        let n = s.len();
        if n < 32 {
            self.byte(0xa0 | n as u8);
        } else if n < 256 {
            self.bytes(&[0xd9, n as u8]);
        } else {
            // longer than the buffer can mostly hold: written right anyway
            match u16::try_from(n) {
                Ok(n) => {
                    self.byte(0xda);
                    self.bytes(&n.to_be_bytes());
                }
                Err(_) => {
                    self.byte(0xdb);
                    self.bytes(&(n as u32).to_be_bytes());
                }
            }
        }
        self.bytes(s.as_bytes());
    }

    /// Append a msgpack float64.
    #[inline(always)]
    pub fn f64(&mut self, f: f64) {
        let mut b = [0xcb; 9];
        b[1..].copy_from_slice(&f.to_bits().to_be_bytes());
        if let Some(dst) = self.next(9) {
            dst.copy_from_slice(&b);
            self.at += 9;
        }
    }

    /// Append a msgpack non-negative integer in its shortest form (as `rmp` writes it).
    pub fn uint(&mut self, n: u64) {
        if n < 128 {
            self.byte(n as u8);
        } else if n < 256 {
            self.bytes(&[0xcc, n as u8]);
        } else if n < 65_536 {
            self.byte(0xcd);
            self.bytes(&(n as u16).to_be_bytes());
        } else if n < 1 << 32 {
            self.byte(0xce);
            self.bytes(&(n as u32).to_be_bytes());
        } else {
            self.byte(0xcf);
            self.bytes(&n.to_be_bytes());
        }
    }
}

/// `dst.copy_from_slice(src)` (same lengths): a piece of up to 32 bytes as two overlapping
/// fixed-width moves rather than a `memcpy` call.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if n > 32 || n != dst.len() {
        dst.copy_from_slice(src);
    } else if n >= 16 {
        dst[..16].copy_from_slice(&src[..16]);
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_copy_copies_every_length() {
        let src: Vec<u8> = (1..=80).collect();
        for n in 0..=80 {
            let mut dst = vec![0u8; n];
            copy_short(&mut dst, &src[..n]);
            assert_eq!(dst, &src[..n], "{n}");
        }
    }

    #[test]
    fn values_are_written_as_rmp_writes_them() {
        let long = "y".repeat(70_000);
        for n in [
            0, 1, 3, 4, 7, 8, 15, 16, 31, 32, 33, 255, 256, 65_535, 65_536,
        ] {
            let s = &long[..n];
            let mut want = Vec::new();
            rmp::encode::write_str(&mut want, s).unwrap();
            let mut b = Block::new();
            b.str(s);
            if want.len() <= BUF {
                assert_eq!(b.finish().unwrap(), want, "{n}");
            } else {
                assert_eq!(b.finish(), None, "{n}");
            }
        }
        for n in [
            0,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            1 << 32,
            u64::MAX,
        ] {
            let mut want = Vec::new();
            rmp::encode::write_uint(&mut want, n).unwrap();
            let mut b = Block::new();
            b.uint(n);
            assert_eq!(b.finish().unwrap(), want, "{n}");
        }
        let mut want = Vec::new();
        rmp::encode::write_f64(&mut want, -1.5e300).unwrap();
        let mut b = Block::new();
        b.f64(-1.5e300);
        assert_eq!(b.finish().unwrap(), want);
    }

    #[test]
    fn keys_are_copied_padded_and_kept_at_their_length() {
        let mut b = Block::new();
        b.key(&padded(b"\xa3abc"));
        b.key(&padded(&[0xbf; 32]));
        b.byte(1);
        let mut want = b"\xa3abc".to_vec();
        want.extend([0xbf; 32]);
        want.push(1);
        assert_eq!(b.finish().unwrap(), want);
    }

    #[test]
    fn a_block_that_does_not_fit_is_none_not_cut() {
        let mut b = Block::new();
        b.bytes(&[7; BUF]);
        assert_eq!(b.finish().map(|v| v.len()), Some(BUF));
        b.byte(8);
        assert_eq!(b.finish(), None);
        // a key needs all its padded room
        let mut b = Block::new();
        b.bytes(&[7; BUF - KEY_ROOM + 1]);
        b.key(&padded(b"\xa1k"));
        assert_eq!(b.finish(), None);
        let mut b = Block::new();
        b.bytes(&[7; BUF - KEY_ROOM]);
        b.key(&padded(b"\xa1k"));
        assert_eq!(b.finish().map(|v| v.len()), Some(BUF - KEY_ROOM + 2));
        // and a write that did not fit spoils the block, even if later ones do
        let mut b = Block::new();
        b.bytes(&[7; BUF - 4]);
        b.f64(1.0);
        b.byte(1);
        assert_eq!(b.finish(), None);
    }
}
