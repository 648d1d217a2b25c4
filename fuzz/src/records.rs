//! Length-prefixed records: how a target that needs several byte strings (frames of a
//! connection, replies of a download) cuts them out of one fuzz input.
//!
//! A record is `len: u16 (big-endian)` then `len` bytes; a truncated last record is what is
//! left. The seed corpus uses the same layout (see `fuzz/capture/make_seeds.py`).

/// Cuts records off the front of an input.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Records<'a> {
    /// Records of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Records { rest: input }
    }

    /// One byte (0 when the input is exhausted).
    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((b, rest)) => {
                self.rest = rest;
                *b
            }
            None => 0,
        }
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next record, `None` when the input is exhausted.
    pub fn next_record(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = match self.rest {
            [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
            _ => 0,
        };
        let body = &self.rest[self.rest.len().min(2)..];
        let (rec, rest) = body.split_at(len.min(body.len()));
        self.rest = rest;
        Some(rec)
    }
}

/// Encode records (the inverse of [`Records`]; seeds and tests).
pub fn encode(records: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let len = u16::try_from(r.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&r[..len as usize]);
    }
    out
}
