//! The URL form of a ticket:
//! `ferry+tcp://HOST:PORT/SENDER/REF?kind=KIND&name=NAME&size=BYTES&b3=DIGEST`.

use super::{Kind, Ticket, TicketError};

/// What a shell leaves of an unquoted ticket, and what to do.
const QUOTE_HINT: &str =
    "a shell cuts an unquoted URL ticket at its first `&`: put the whole ticket in single quotes, or use the compact ferry1... form";

/// `t` in the URL form.
pub(super) fn write(t: &Ticket) -> String {
    format!(
        "ferry+{}://{}/{}/{}?kind={}&name={}&size={}&b3={}",
        if t.tls { "stcp" } else { "tcp" },
        t.addr,
        t.source,
        t.ref_id,
        t.kind.as_str(),
        pct_encode_path(&t.name),
        t.size,
        t.blake3
    )
}

/// Parse the URL form (the caller validates the fields).
pub(super) fn parse(s: &str) -> Result<Ticket, TicketError> {
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
    let mut kind = None;
    let mut name = None;
    let mut size = None;
    let mut blake3 = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = pct_decode(v).ok_or_else(|| TicketError(format!("bad percent-encoding in {k}")))?;
        match k {
            "kind" => {
                kind = Some(
                    Kind::parse(&v).ok_or_else(|| TicketError(format!("unknown kind {v:?}")))?,
                )
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
                blake3 = Some(v)
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
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
