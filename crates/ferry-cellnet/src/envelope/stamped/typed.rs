//! The stamp of a REQ that expects a reply or of a REPLY, as the values it sets rather than
//! a list of keyed fields.
//!
//! Such a stamp sets the same 15 keys in the same order every time. Kept as a
//! `Vec<(key, Field)>`, each send allocated the list, pushed 15 fields and, to write them,
//! walked it beside a key table, matching each field's kind. Here the values sit in a struct
//! and [`Typed::encode`] writes them in order into a `Vec` of exactly the block's size: the
//! keys and the values that never change (`cn__secure`, the message type, the return code,
//! the route's array markers) as constant runs of bytes, compiled in, between the values
//! that do.

use super::{put_str, str_len, uint_len, Field, Shape};
use crate::envelope::MsgType;
use crate::headers::keys;

/// The values of a [`Shape`]d stamp (the keys are the shape's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Typed<'a> {
    /// Which of the two stamps: the keys and their order.
    pub shape: Shape,
    /// `cn__topic`.
    pub topic: &'a str,
    /// `cn__channel`.
    pub channel: &'a str,
    /// `cn__destination`.
    pub destination: &'a str,
    /// `cn__req_id`.
    pub req_id: &'a str,
    /// `cn__optional` of a REQ (a REPLY's is always false).
    pub optional: bool,
    /// This cell: `cn__from`, `cn__origin` and the route's one hop.
    pub me: &'a str,
    /// `cn__to`: empty until [`super::super::seal`] names the next hop.
    pub to: &'a str,
    /// `cn__payload_encoding`.
    pub encoding: &'a str,
    /// `cn__payload_len`.
    pub len: u64,
    /// `cn__send_time` and the route hop's time.
    pub at: f64,
}

/// `cn__return_code` of a REPLY stamp (the reply's own map has none).
const OK: &str = "ok";

/// The msgpack of a str of under 32 bytes, at compile time (`N` = its length + 1).
const fn fixstr<const N: usize>(k: &str) -> [u8; N] {
    let b = k.as_bytes();
    assert!(b.len() + 1 == N && b.len() < 32);
    let mut out = [0u8; N];
    out[0] = 0xa0 | b.len() as u8;
    let mut i = 0;
    while i < b.len() {
        out[i + 1] = b[i];
        i += 1;
    }
    out
}

/// The total length of `parts`.
const fn total(parts: &[&[u8]]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

/// `parts` one after the other (`N` = their total length).
const fn cat<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    assert!(total(parts) == N);
    let mut out = [0u8; N];
    let mut at = 0;
    let mut i = 0;
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[at] = parts[i][j];
            at += 1;
            j += 1;
        }
        i += 1;
    }
    out
}

/// A str's msgpack, as a `&[u8]` for [`run!`].
macro_rules! s {
    ($k:expr) => {
        &fixstr::<{ $k.len() + 1 }>($k) as &[u8]
    };
}

/// Pieces of msgpack joined into one constant array at compile time.
macro_rules! run {
    ($($p:expr),* $(,)?) => {{
        const PARTS: &[&[u8]] = &[$($p),*];
        const N: usize = total(PARTS);
        const RUN: [u8; N] = cat::<N>(PARTS);
        &RUN
    }};
}

/// msgpack `true` and `false`.
const TRUE: &[u8] = &[0xc3];
/// msgpack `false`.
const FALSE: &[u8] = &[0xc2];
/// The route `[[hop, time]]` up to its hop: a fixarray of 1 holding a fixarray of 2.
const ROUTE_OPEN: &[u8] = &[0x91, 0x92];
/// A fixmap of the 15 keys.
const MAP15: &[u8] = &[0x80 | 15];

/// A writer into a zeroed buffer of exactly the block's size: each piece is copied in
/// place, a short one as fixed-width moves rather than a `memcpy` call and no capacity
/// check. A piece that would not fit is not written, but still moves the position on, so
/// that a miscounted size shows at the end ([`Cursor::done`]) instead of cutting the block.
struct Cursor<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Cursor<'_> {
    /// Copy `src` here.
    #[inline(always)]
    fn put(&mut self, src: &[u8]) {
        let n = src.len();
        if let Some(dst) = self.buf.get_mut(self.at..self.at + n) {
            copy_short(dst, src);
        }
        self.at += n;
    }

    /// Copy a constant run here (its length known at compile time).
    #[inline(always)]
    fn run<const N: usize>(&mut self, src: &[u8; N]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + N) {
            dst.copy_from_slice(src);
        }
        self.at += N;
    }

    /// A msgpack str, in its shortest form (as `rmp` writes it).
    #[inline(always)]
    fn str(&mut self, s: &str) {
        let n = s.len();
        if n < 32 {
            self.run(&[0xa0 | n as u8]);
        } else if n < 256 {
            self.run(&[0xd9, n as u8]);
        } else if let Ok(n) = u16::try_from(n) {
            let [a, b] = n.to_be_bytes();
            self.run(&[0xda, a, b]);
        } else {
            // a header block is far below 4 GiB (`Limits::max_header_size`)
            let [a, b, c, d] = (n as u32).to_be_bytes();
            self.run(&[0xdb, a, b, c, d]);
        }
        self.put(s.as_bytes());
    }

    /// A msgpack float64.
    #[inline(always)]
    fn f64(&mut self, f: f64) {
        let [a, b, c, d, e, g, h, i] = f.to_bits().to_be_bytes();
        self.run(&[0xcb, a, b, c, d, e, g, h, i]);
    }

    /// A msgpack non-negative integer in its shortest form (as `rmp` writes it).
    fn uint(&mut self, n: u64) {
        if n < 128 {
            self.run(&[n as u8]);
        } else if n < 256 {
            self.run(&[0xcc, n as u8]);
        } else if n < 65_536 {
            let [a, b] = (n as u16).to_be_bytes();
            self.run(&[0xcd, a, b]);
        } else if n < 1 << 32 {
            let [a, b, c, d] = (n as u32).to_be_bytes();
            self.run(&[0xce, a, b, c, d]);
        } else {
            let [a, b, c, d, e, g, h, i] = n.to_be_bytes();
            self.run(&[0xcf, a, b, c, d, e, g, h, i]);
        }
    }

    /// True if exactly the whole buffer was written.
    fn done(&self) -> bool {
        self.at == self.buf.len()
    }
}

/// `size` zero bytes, in a Vec of exactly that capacity.
// Not `vec![0; size]`, as clippy would have it: that is `calloc`, which does not take a
// freed block from glibc's per-thread cache; it cost a round trip 250 more instructions
// than `malloc` and a `memset`.
#[allow(clippy::slow_vector_initialization)]
fn zeroed(size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    out.resize(size, 0);
    out
}

/// `dst.copy_from_slice(src)` (same lengths): a piece of up to 64 bytes as two overlapping
/// fixed-width moves rather than a `memcpy` call.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    if n > 64 || n != dst.len() {
        dst.copy_from_slice(src);
    } else if n >= 32 {
        dst[..32].copy_from_slice(&src[..32]);
        dst[n - 32..].copy_from_slice(&src[n - 32..]);
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

impl<'a> Typed<'a> {
    /// The fields this stamp sets, in its shape's order (what the generic path writes).
    pub fn fields(&self) -> [(&'static str, Field<'a>); 15] {
        let route = Field::Route(self.me, self.at);
        match self.shape {
            Shape::Request => [
                (keys::TOPIC, Field::Str(self.topic)),
                (keys::CHANNEL, Field::Str(self.channel)),
                (keys::DESTINATION, Field::Str(self.destination)),
                (keys::REQ_ID, Field::Str(self.req_id)),
                (keys::REPLY_EXPECTED, Field::Bool(true)),
                (keys::SECURE, Field::Bool(false)),
                (keys::OPTIONAL, Field::Bool(self.optional)),
                (keys::FROM, Field::Str(self.me)),
                (keys::TO, Field::Str(self.to)),
                (keys::ORIGIN, Field::Str(self.me)),
                (keys::MSG_TYPE, Field::Str(MsgType::REQ)),
                (keys::ROUTE, route),
                (keys::PAYLOAD_ENCODING, Field::Str(self.encoding)),
                (keys::PAYLOAD_LEN, Field::U64(self.len)),
                (keys::SEND_TIME, Field::F64(self.at)),
            ],
            Shape::Reply => [
                (keys::SECURE, Field::Bool(false)),
                (keys::OPTIONAL, Field::Bool(false)),
                (keys::RETURN_CODE, Field::Str(OK)),
                (keys::CHANNEL, Field::Str(self.channel)),
                (keys::TOPIC, Field::Str(self.topic)),
                (keys::FROM, Field::Str(self.me)),
                (keys::TO, Field::Str(self.to)),
                (keys::ORIGIN, Field::Str(self.me)),
                (keys::DESTINATION, Field::Str(self.destination)),
                (keys::REQ_ID, Field::Str(self.req_id)),
                (keys::MSG_TYPE, Field::Str(MsgType::REPLY)),
                (keys::ROUTE, route),
                (keys::PAYLOAD_ENCODING, Field::Str(self.encoding)),
                (keys::PAYLOAD_LEN, Field::U64(self.len)),
                (keys::SEND_TIME, Field::F64(self.at)),
            ],
        }
    }

    /// The length of [`Typed::encode`]'s bytes but for the constant runs.
    fn values_len(&self) -> usize {
        str_len(self.topic.len())
            + str_len(self.channel.len())
            + str_len(self.destination.len())
            + str_len(self.req_id.len())
            + 3 * str_len(self.me.len())
            + str_len(self.to.len())
            + str_len(self.encoding.len())
            + uint_len(self.len)
            // the route's time and the send time
            + 2 * 9
    }

    /// The header block: byte for byte what the fields ([`Typed::fields`]) written as one
    /// map on their own encode to, in a `Vec` of exactly its size (which `Bytes::from`
    /// keeps as it is).
    pub fn encode(&self) -> Vec<u8> {
        match self.shape {
            Shape::Request => self.encode_request(),
            Shape::Reply => self.encode_reply(),
        }
    }

    /// [`Typed::encode`] the generic way, field by field (what a miscounted size falls back
    /// to).
    pub(super) fn generic(&self) -> Vec<u8> {
        let mut out = vec![0x80 | 15];
        for (k, v) in self.fields() {
            put_str(&mut out, k);
            v.encode(&mut out);
        }
        out
    }

    fn encode_request(&self) -> Vec<u8> {
        let head = run!(MAP15, s!(keys::TOPIC));
        let channel = run!(s!(keys::CHANNEL));
        let destination = run!(s!(keys::DESTINATION));
        let req_id = run!(s!(keys::REQ_ID));
        let flags = run!(
            s!(keys::REPLY_EXPECTED),
            TRUE,
            s!(keys::SECURE),
            FALSE,
            s!(keys::OPTIONAL),
        );
        let from = run!(s!(keys::FROM));
        let to = run!(s!(keys::TO));
        let origin = run!(s!(keys::ORIGIN));
        let route = run!(
            s!(keys::MSG_TYPE),
            s!(MsgType::REQ),
            s!(keys::ROUTE),
            ROUTE_OPEN
        );
        let encoding = run!(s!(keys::PAYLOAD_ENCODING));
        let len = run!(s!(keys::PAYLOAD_LEN));
        let time = run!(s!(keys::SEND_TIME));
        let runs = head.len()
            + channel.len()
            + destination.len()
            + req_id.len()
            + flags.len()
            + 1
            + from.len()
            + to.len()
            + origin.len()
            + route.len()
            + encoding.len()
            + len.len()
            + time.len();
        let size = runs + self.values_len();
        let mut out = zeroed(size);
        let mut w = Cursor {
            buf: &mut out,
            at: 0,
        };
        w.run(head);
        w.str(self.topic);
        w.run(channel);
        w.str(self.channel);
        w.run(destination);
        w.str(self.destination);
        w.run(req_id);
        w.str(self.req_id);
        w.run(flags);
        w.run(&[if self.optional { 0xc3 } else { 0xc2 }]);
        w.run(from);
        w.str(self.me);
        w.run(to);
        w.str(self.to);
        w.run(origin);
        w.str(self.me);
        w.run(route);
        w.str(self.me);
        w.f64(self.at);
        w.run(encoding);
        w.str(self.encoding);
        w.run(len);
        w.uint(self.len);
        w.run(time);
        w.f64(self.at);
        if !w.done() {
            return self.generic();
        }
        out
    }

    fn encode_reply(&self) -> Vec<u8> {
        let head = run!(
            MAP15,
            s!(keys::SECURE),
            FALSE,
            s!(keys::OPTIONAL),
            FALSE,
            s!(keys::RETURN_CODE),
            s!(OK),
            s!(keys::CHANNEL),
        );
        let topic = run!(s!(keys::TOPIC));
        let from = run!(s!(keys::FROM));
        let to = run!(s!(keys::TO));
        let origin = run!(s!(keys::ORIGIN));
        let destination = run!(s!(keys::DESTINATION));
        let req_id = run!(s!(keys::REQ_ID));
        let route = run!(
            s!(keys::MSG_TYPE),
            s!(MsgType::REPLY),
            s!(keys::ROUTE),
            ROUTE_OPEN
        );
        let encoding = run!(s!(keys::PAYLOAD_ENCODING));
        let len = run!(s!(keys::PAYLOAD_LEN));
        let time = run!(s!(keys::SEND_TIME));
        let runs = head.len()
            + topic.len()
            + from.len()
            + to.len()
            + origin.len()
            + destination.len()
            + req_id.len()
            + route.len()
            + encoding.len()
            + len.len()
            + time.len();
        let size = runs + self.values_len();
        let mut out = zeroed(size);
        let mut w = Cursor {
            buf: &mut out,
            at: 0,
        };
        w.run(head);
        w.str(self.channel);
        w.run(topic);
        w.str(self.topic);
        w.run(from);
        w.str(self.me);
        w.run(to);
        w.str(self.to);
        w.run(origin);
        w.str(self.me);
        w.run(destination);
        w.str(self.destination);
        w.run(req_id);
        w.str(self.req_id);
        w.run(route);
        w.str(self.me);
        w.f64(self.at);
        w.run(encoding);
        w.str(self.encoding);
        w.run(len);
        w.uint(self.len);
        w.run(time);
        w.f64(self.at);
        if !w.done() {
            return self.generic();
        }
        out
    }
}
