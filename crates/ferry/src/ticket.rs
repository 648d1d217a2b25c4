//! Tickets: one copy-pasteable string that tells a receiver everything it needs to pull an
//! object — where the sender listens, the sender's cell name, the ref id, and what the object is.
//! `ferry serve` prints them and `ferry get` reads them; they live in this library so that every
//! front end (the CLI, the Python bindings) writes and reads the same strings.
//!
//! Shape: `ferry+tcp://HOST:PORT/SOURCE_FQCN/REF_ID?kind=file&name=NAME&size=BYTES&b3=DIGEST`
//! (`ferry+stcp://` when the sender listens with TLS). Query values are percent-encoded.
//!
//! `name` is a relative path of plain components (`model.bin`, `ckpt/shard-0.bin` when a
//! directory is served); `get` recreates it below its output directory and refuses anything that
//! could escape it. `size` and `b3` pin the content: for a file its length and BLAKE3 digest,
//! for a tensor dict its tensor data size and tensor-dict digest
//! ([`tensor_dict_pin`](ferry_objects::tensors::tensor_dict_pin)). A receiver holds the sender
//! to them whatever it sends ([`Ticket::pin`], [`crate::fetch`]), so a ticket received over a
//! trusted channel pins the content even over plain TCP. `name`, `kind`, `size` and `b3` are
//! required: a ticket without them is refused (it is most often one a shell cut at its first
//! unquoted `&`). Unknown query keys are ignored, so newer senders can add hints.

use ferry_objects::verify::Pin;
use std::fmt;

/// What kind of object a ticket points at (decides the consumer on the receiving side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A file: written to `NAME` in the output directory.
    File,
    /// A safetensors tensor dict: written as one `.safetensors` file.
    Tensors,
}

impl Kind {
    /// `file` or `tensors`: the ticket's `kind=` value (and the `kind` of `serve --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Tensors => "tensors",
        }
    }
}

/// A parsed ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Whether the sender listens with TLS (`stcp`).
    pub tls: bool,
    /// `HOST:PORT` of the sender's listener.
    pub addr: String,
    /// The sender cell's FQCN.
    pub source: String,
    /// The ref id to pull.
    pub ref_id: String,
    /// What the object is.
    pub kind: Kind,
    /// Where to write, relative to the output directory: plain components joined by `/`.
    pub name: String,
    /// Size in bytes (a file's length; a tensor dict's tensor data, each item once).
    pub size: u64,
    /// Digest of the object, 64 lowercase hex digits: a file's BLAKE3, or a tensor dict's
    /// tensor-dict digest.
    pub blake3: String,
}

/// Longest accepted `name` (bytes), and most components in it.
const MAX_NAME_LEN: usize = 4096;
const MAX_NAME_DEPTH: usize = 64;

/// Check that `name` is a relative path of plain components: no empty, `.` or `..` component,
/// no leading `/`, no backslash or NUL. This is what keeps a hostile ticket from writing outside
/// the output directory.
pub fn check_relative_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty file name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("file name longer than {MAX_NAME_LEN} bytes"));
    }
    if name.contains(['\\', '\0']) {
        return Err(format!("file name {name:?} has a backslash or NUL"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > MAX_NAME_DEPTH {
        return Err(format!(
            "file name {name:?} is more than {MAX_NAME_DEPTH} levels deep"
        ));
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(format!("file name {name:?} is not a plain relative path"));
    }
    Ok(())
}

/// Why a string is not a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ticket: {0} (a ticket looks like ferry+tcp://HOST:PORT/SENDER/REF?kind=file&name=NAME; copy it whole from `ferry serve`)")]
pub struct TicketError(String);

/// What a shell leaves of an unquoted ticket, and what to do.
const QUOTE_HINT: &str =
    "a shell cuts an unquoted ticket at its first `&`: put the whole ticket in single quotes";

impl Ticket {
    /// The cellnet URL of the sender (`tcp://HOST:PORT` or `stcp://HOST:PORT`).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "stcp" } else { "tcp" }, self.addr)
    }

    /// The content this ticket pins: its size and digest.
    pub fn pin(&self) -> Pin {
        // `blake3` was validated by the parser; a hand-built ticket with a bad digest pins
        // the all-zero digest, which no content has, so it fails verification rather than
        // passing unchecked.
        let digest = blake3::Hash::from_hex(&self.blake3)
            .unwrap_or_else(|_| blake3::Hash::from_bytes([0; 32]));
        Pin::new(self.size, digest)
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ferry+{}://{}/{}/{}?kind={}&name={}",
            if self.tls { "stcp" } else { "tcp" },
            self.addr,
            self.source,
            self.ref_id,
            self.kind.as_str(),
            pct_encode_path(&self.name)
        )?;
        write!(f, "&size={}&b3={}", self.size, self.blake3)
    }
}

impl std::str::FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (tls, rest) = if let Some(r) = s.strip_prefix("ferry+tcp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("ferry+stcp://") {
            (true, r)
        } else {
            return Err(TicketError(
                "it does not start with ferry+tcp:// or ferry+stcp://".into(),
            ));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut parts = path.split('/');
        let (Some(addr), Some(source), Some(ref_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError(
                "expected HOST:PORT/SENDER/REF after the scheme".into(),
            ));
        };
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| TicketError(format!("{addr:?} has no port")))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(TicketError(format!("{addr:?} is not HOST:PORT")));
        }
        ferry_core::validate_fqcn(source).map_err(|e| TicketError(format!("sender name: {e}")))?;
        if ref_id.is_empty()
            || !ref_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TicketError(format!("{ref_id:?} is not a ref id")));
        }
        let mut kind = None;
        let mut name = None;
        let mut size = None;
        let mut blake3 = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v =
                pct_decode(v).ok_or_else(|| TicketError(format!("bad percent-encoding in {k}")))?;
            match k {
                "kind" => {
                    kind = Some(match v.as_str() {
                        "file" => Kind::File,
                        "tensors" => Kind::Tensors,
                        other => return Err(TicketError(format!("unknown kind {other:?}"))),
                    })
                }
                "name" => name = Some(v),
                "size" => {
                    size = Some(
                        v.parse::<u64>()
                            .map_err(|_| TicketError(format!("size {v:?} is not a number")))?,
                    )
                }
                "b3" => {
                    if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(TicketError(format!("b3 {v:?} is not a BLAKE3 digest")));
                    }
                    blake3 = Some(v.to_ascii_lowercase())
                }
                _ => {} // unknown keys: ignored, so newer senders can add hints
            }
        }
        let missing: Vec<&str> = [
            ("name", name.is_none()),
            ("kind", kind.is_none()),
            ("size", size.is_none()),
            ("b3", blake3.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, absent)| absent.then_some(k))
        .collect();
        let (Some(kind), Some(name), Some(size), Some(blake3)) = (kind, name, size, blake3) else {
            return Err(TicketError(format!(
                "it has no {} (a ticket pins name, kind, size and b3); {QUOTE_HINT}",
                missing.join(", ")
            )));
        };
        check_relative_name(&name).map_err(TicketError)?;
        Ok(Ticket {
            tls,
            addr: addr.to_string(),
            source: source.to_string(),
            ref_id: ref_id.to_string(),
            kind,
            name,
            size,
            blake3,
        })
    }
}

fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Like [`pct_encode`] but keeps `/` between path components readable.
fn pct_encode_path(s: &str) -> String {
    s.split('/').map(pct_encode).collect::<Vec<_>>().join("/")
}

fn pct_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sample() -> Ticket {
        Ticket {
            tls: false,
            addr: "127.0.0.1:7001".into(),
            source: "ferry-sender".into(),
            ref_id: "R3c1e7f6a-1111-4222-8333-944455556666".into(),
            kind: Kind::File,
            name: "model weights (v2).bin".into(),
            size: 1 << 30,
            blake3: "ab".repeat(32),
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.to_string();
        assert!(
            s.starts_with("ferry+tcp://127.0.0.1:7001/ferry-sender/R3c1e"),
            "{s}"
        );
        assert!(!s.contains(' '));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
        let tls = Ticket {
            tls: true,
            kind: Kind::Tensors,
            size: 0,
            blake3: "0f".repeat(32),
            name: "ckpt/shard 0.safetensors".into(),
            ..sample()
        };
        assert!(tls.to_string().contains("name=ckpt/shard%200.safetensors"));
        assert_eq!(tls.to_string().parse::<Ticket>().unwrap(), tls);
        assert_eq!(tls.url(), "stcp://127.0.0.1:7001");
    }

    #[test]
    fn malformed_tickets_are_refused() {
        let tail = format!("kind=file&name=x&size=1&b3={}", "ab".repeat(32));
        for bad in [
            "",
            "http://x:1/a/R1",
            "ferry+tcp://127.0.0.1/a/R1",
            "ferry+tcp://127.0.0.1:0/a/R1",
            "ferry+tcp://127.0.0.1:99999/a/R1",
            "ferry+tcp://127.0.0.1:7001/a..b/R1",
            "ferry+tcp://127.0.0.1:7001/a/R1/extra",
            "ferry+tcp://127.0.0.1:7001/a/",
            "ferry+tcp://127.0.0.1:7001/a/R1?kind=rocket",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=..",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=%2e%2e%2fetc",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=%zz",
            "ferry+tcp://127.0.0.1:7001/a/R1?size=big",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=/etc/passwd",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=a/../../b",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=a//b",
            "ferry+tcp://127.0.0.1:7001/a/R1?name=a%5Cb",
            "ferry+tcp://127.0.0.1:7001/a/R1?b3=1234",
            "ferry+tcp://127.0.0.1:7001/a/R1?b3=",
            "not a ticket at all",
        ] {
            assert!(bad.parse::<Ticket>().is_err(), "{bad:?} parsed");
            // the same with every required key present (the bad value last, so it wins) is
            // still refused
            if let Some(query) = bad.strip_prefix("ferry+tcp://127.0.0.1:7001/a/R1?") {
                let full = format!("ferry+tcp://127.0.0.1:7001/a/R1?{tail}&{query}");
                assert!(full.parse::<Ticket>().is_err(), "{full:?} parsed");
            }
        }
        assert!(format!("ferry+tcp://127.0.0.1:7001/a/R1?{tail}")
            .parse::<Ticket>()
            .is_ok());
    }
}

#[cfg(test)]
mod name_tests {
    use super::tests::sample;
    use super::*;

    #[test]
    fn relative_names() {
        assert!(check_relative_name("a.bin").is_ok());
        assert!(check_relative_name("dir/sub/a.bin").is_ok());
        for bad in ["", "/a", "a/", "..", "a/./b", "a/../b", "a\\b", "a\0b"] {
            assert!(check_relative_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_relative_name(&format!("{}b", "a/".repeat(100))).is_err());
    }

    #[test]
    fn unknown_keys_are_ignored_and_digests_lowercased() {
        let t: Ticket = format!(
            "ferry+tcp://h:1/s/R1?kind=file&name=a&size=3&b3={}&future=1",
            "AB".repeat(32)
        )
        .parse()
        .unwrap();
        assert_eq!(t.blake3, "ab".repeat(32));
        assert_eq!(t.url(), "tcp://h:1");
        assert_eq!(t.pin().size, 3);
        assert_eq!(t.pin().hex(), "ab".repeat(32));
    }

    /// What a shell leaves of an unquoted ticket (cut at the first `&`), or a ticket missing
    /// any pinned key, is refused with the hint to quote it.
    #[test]
    fn cut_short_tickets_are_refused_with_a_hint_to_quote() {
        let whole = sample().to_string();
        let cut = whole.split('&').next().unwrap();
        let e = cut.parse::<Ticket>().unwrap_err().to_string();
        assert!(
            e.contains("no name, size, b3") && e.contains("single quotes"),
            "{e}"
        );
        let bare = whole.split('?').next().unwrap();
        let e = bare.parse::<Ticket>().unwrap_err().to_string();
        assert!(e.contains("no name, kind, size, b3"), "{e}");
        for key in ["kind", "name", "size", "b3"] {
            let without: Vec<&str> = whole
                .split(['?', '&'])
                .skip(1)
                .filter(|kv| !kv.starts_with(&format!("{key}=")))
                .collect();
            let t = format!("{bare}?{}", without.join("&"));
            let e = t.parse::<Ticket>().unwrap_err().to_string();
            assert!(e.contains(&format!("no {key} ")), "{t}: {e}");
        }
    }
}
