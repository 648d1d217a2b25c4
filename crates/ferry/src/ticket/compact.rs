//! The compact form of a ticket: `ferry1` followed by lowercase RFC 4648 base32 (no padding) of
//! the bytes below, so a ticket is only `[a-z0-9]` and survives a shell unquoted.
//!
//! ```text
//! flags     1 byte   bit 0: TLS (stcp); bit 1: the ref id is `R` + a UUID, stored as 16 bytes;
//!                    bits 2-3: kind (0 file, 1 tensors, 2 set); other bits 0
//! size      LEB128 u64 (at most 10 bytes)
//! b3        32 bytes
//! port      u16, big-endian
//! host      LEB128 length, UTF-8
//! source    LEB128 length, UTF-8 (the sender's FQCN)
//! ref id    16 bytes (UUID) or LEB128 length, UTF-8
//! name      LEB128 length, UTF-8
//! checksum  4 bytes: the first 4 bytes of BLAKE3("ferry-ticket/1" || everything above)
//! ```
//!
//! The `1` after `ferry` is the version of this layout (it is not a base32 digit, so the prefix
//! never runs into the data). A ticket cut short or with a character changed fails the checksum
//! (a random error passes it with probability 2⁻³²); the reader says it is cut short or
//! mistyped. Every length is checked against what is left before anything is read, so parsing
//! is bounded by the input's length and never panics.

use super::{Kind, Ticket, TicketError, MAX_NAME_LEN};

/// What every compact ticket starts with.
pub const PREFIX: &str = "ferry1";

/// Domain of the checksum.
const CHECKSUM_DOMAIN: &[u8] = b"ferry-ticket/1";
const CHECKSUM_LEN: usize = 4;

const FLAG_TLS: u8 = 1;
const FLAG_UUID_REF: u8 = 1 << 1;
const KIND_SHIFT: u8 = 2;
const KIND_MASK: u8 = 0b11 << KIND_SHIFT;

/// Longest string field (the name; host, sender and ref id are checked tighter by the caller).
const MAX_FIELD: u64 = MAX_NAME_LEN as u64;

/// `t` in the compact form.
pub(super) fn write(t: &Ticket) -> String {
    let mut out = Vec::with_capacity(96 + t.name.len());
    let uuid_ref = uuid_ref(&t.ref_id);
    let kind = match t.kind {
        Kind::File => 0,
        Kind::Tensors => 1,
        Kind::Set => 2,
    };
    let flags =
        u8::from(t.tls) | if uuid_ref.is_some() { FLAG_UUID_REF } else { 0 } | kind << KIND_SHIFT;
    out.push(flags);
    leb128(&mut out, t.size);
    out.extend_from_slice(t.pin().blake3.as_bytes());
    let (host, port) = t.addr.rsplit_once(':').unwrap_or((&t.addr, "0"));
    out.extend_from_slice(&port.parse::<u16>().unwrap_or(0).to_be_bytes());
    field(&mut out, host);
    field(&mut out, &t.source);
    match uuid_ref {
        Some(u) => out.extend_from_slice(u.as_bytes()),
        None => field(&mut out, &t.ref_id),
    }
    field(&mut out, &t.name);
    let sum = checksum(&out);
    out.extend_from_slice(&sum);
    let mut s = String::with_capacity(PREFIX.len() + out.len() * 8 / 5 + 1);
    s.push_str(PREFIX);
    s.push_str(
        &data_encoding::BASE32_NOPAD
            .encode(&out)
            .to_ascii_lowercase(),
    );
    s
}

/// Parse what follows [`PREFIX`] (the caller validates the fields).
pub(super) fn parse(body: &str) -> Result<Ticket, TicketError> {
    let cut = || {
        TicketError(
            "it is cut short or mistyped (its checksum does not match); copy the whole ferry1... line"
                .into(),
        )
    };
    if !body
        .bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        let bad = body
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || ('2'..='7').contains(c)))
            .unwrap_or('?');
        return Err(TicketError(format!(
            "{bad:?} cannot be in a compact ticket (only a-z and 2-7 follow ferry1)"
        )));
    }
    let bytes = data_encoding::BASE32_NOPAD
        .decode(body.to_ascii_uppercase().as_bytes())
        .map_err(|_| cut())?;
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
        return Err(cut());
    };
    let (payload, sum) = bytes.split_at(split);
    if checksum(payload) != sum {
        return Err(cut());
    }
    // The checksum matched: what follows is what a sender wrote, unless it was forged; still
    // every read is checked.
    let mut r = Reader(payload);
    let flags = r.byte()?;
    if flags & !(FLAG_TLS | FLAG_UUID_REF | KIND_MASK) != 0 {
        return Err(TicketError(format!(
            "unknown flags {flags:#04x}: written by a newer ferry?"
        )));
    }
    let kind = match (flags & KIND_MASK) >> KIND_SHIFT {
        0 => Kind::File,
        1 => Kind::Tensors,
        2 => Kind::Set,
        k => return Err(TicketError(format!("unknown kind {k}"))),
    };
    let size = r.leb128()?;
    let blake3 = blake3::Hash::from_bytes(r.array::<32>()?)
        .to_hex()
        .to_string();
    let port = u16::from_be_bytes(r.array::<2>()?);
    let host = r.field("host")?;
    let source = r.field("sender name")?;
    let ref_id = if flags & FLAG_UUID_REF != 0 {
        format!("R{}", uuid::Uuid::from_bytes(r.array::<16>()?))
    } else {
        r.field("ref id")?
    };
    let name = r.field("name")?;
    if !r.0.is_empty() {
        return Err(TicketError(format!(
            "{} unexpected bytes at its end",
            r.0.len()
        )));
    }
    Ok(Ticket {
        tls: flags & FLAG_TLS != 0,
        addr: format!("{host}:{port}"),
        source,
        ref_id,
        kind,
        name,
        size,
        blake3,
    })
}

/// `R` + a UUID in its canonical lowercase form (what ferry's ref ids are), as its 16 bytes.
fn uuid_ref(ref_id: &str) -> Option<uuid::Uuid> {
    let u = uuid::Uuid::parse_str(ref_id.strip_prefix('R')?).ok()?;
    // Only when it prints back identically: the receiver rebuilds the ref id from the bytes.
    (format!("R{u}") == ref_id).then_some(u)
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(CHECKSUM_DOMAIN);
    h.update(payload);
    let mut out = [0; CHECKSUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field(out: &mut Vec<u8>, s: &str) {
    leb128(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads the payload front to back; every read checks what is left.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn short() -> TicketError {
        TicketError("its data ends early".into())
    }

    fn byte(&mut self) -> Result<u8, TicketError> {
        let (&b, rest) = self.0.split_first().ok_or_else(Self::short)?;
        self.0 = rest;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TicketError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or_else(Self::short)?;
        self.0 = rest;
        Ok(*head)
    }

    fn leb128(&mut self) -> Result<u64, TicketError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            // the 10th byte may hold only the top bit of a u64
            if i == 9 && bits > 1 {
                break;
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(TicketError("a number in it overflows 64 bits".into()))
    }

    fn field(&mut self, what: &str) -> Result<String, TicketError> {
        let len = self.leb128()?;
        if len > MAX_FIELD || len > self.0.len() as u64 {
            return Err(TicketError(format!("its {what} is longer than the ticket")));
        }
        let (s, rest) = self.0.split_at(len as usize);
        self.0 = rest;
        String::from_utf8(s.to_vec()).map_err(|_| TicketError(format!("its {what} is not UTF-8")))
    }
}
