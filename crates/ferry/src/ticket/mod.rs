//! Tickets: one copy-pasteable string that tells a receiver everything it needs to pull an
//! object — where the sender listens, the sender's cell name, the ref id, and what the object is.
//! `ferry serve` prints them and `ferry get` reads them; they live in this library so that every
//! front end (the CLI, the Python bindings) writes and reads the same strings.
//!
//! A ticket has two written forms, and [`Ticket::from_str`](std::str::FromStr) reads both:
//!
//! - **compact** (what [`Display`](std::fmt::Display) writes): `ferry1` followed by lowercase
//!   base32 of a small binary encoding with a checksum, only `[a-z0-9]` — it survives a shell
//!   unquoted, a line break in an e-mail client, a double-click selection. A ticket cut short or
//!   mistyped fails its checksum and is refused. See [`compact`] for the layout.
//! - **URL** ([`Ticket::to_url`]): `ferry+tcp://HOST:PORT/SOURCE_FQCN/REF_ID?kind=file&name=NAME&size=BYTES&b3=DIGEST`
//!   (`ferry+stcp://` when the sender listens with TLS), readable by people and by NVFlare users
//!   who need the address, sender and ref id. Query values are percent-encoded; it must be quoted
//!   in a shell (`?`, `&`).
//!
//! `name` is a relative path of plain components (`model.bin`, `ckpt/shard-0.bin`); `get`
//! recreates it below its output directory and refuses anything that could escape it. `size`
//! and `b3` pin the content: for a file its length and BLAKE3 digest, for a tensor dict its
//! tensor data size and tensor-dict digest
//! ([`tensor_dict_pin`](ferry_objects::tensors::tensor_dict_pin)), for a set the size and
//! BLAKE3 of its [manifest](crate::manifest), which pins every member in turn. A receiver holds
//! the sender to them whatever it sends ([`Ticket::pin`], [`crate::fetch`]), so a ticket
//! received over a trusted channel pins the content even over plain TCP. `name`, `kind`, `size`
//! and `b3` are required: a URL ticket without them is refused (it is most often one a shell cut
//! at its first unquoted `&`). Unknown query keys are ignored, so newer senders can add hints.
//!
//! Parsing is bounded ([`MAX_TICKET_LEN`]) and never panics, whatever the input.
//! [`advertised_addr`] picks the `HOST:PORT` a ticket carries when the sender listens on a
//! wildcard address.

mod addr;
pub mod compact;
mod url;

pub use addr::{advertised_addr, advertised_host};

use ferry_objects::verify::Pin;
use std::fmt;

/// Longest string accepted as a ticket (bytes, after trimming whitespace): room for a
/// percent-encoded name of [`MAX_NAME_LEN`] bytes.
pub const MAX_TICKET_LEN: usize = 16 * 1024;

/// What kind of object a ticket points at (decides the consumer on the receiving side).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A file: written to `NAME` in the output directory.
    File,
    /// A safetensors tensor dict: written as one `.safetensors` file.
    Tensors,
    /// A set of objects (a served directory, several paths): the ref is the set's
    /// [manifest](crate::manifest), which names, pins and places every member; `NAME` is only
    /// a label (the members' names are relative to the output directory).
    Set,
}

impl Kind {
    /// `file`, `tensors` or `set`: the ticket's `kind=` value (and the `kind` of `serve --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Tensors => "tensors",
            Kind::Set => "set",
        }
    }

    /// The kind named `s` (the inverse of [`as_str`](Self::as_str)).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(Kind::File),
            "tensors" => Some(Kind::Tensors),
            "set" => Some(Kind::Set),
            _ => None,
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
    /// Where to write, relative to the output directory: plain components joined by `/` (for
    /// a set, a label).
    pub name: String,
    /// Size in bytes (a file's length; a tensor dict's tensor data, each item once; a set's
    /// manifest).
    pub size: u64,
    /// Digest of the object, 64 lowercase hex digits: a file's (or a set manifest's) BLAKE3,
    /// or a tensor dict's tensor-dict digest.
    pub blake3: String,
}

/// Longest accepted `name` (bytes), and most components in it.
pub const MAX_NAME_LEN: usize = 4096;
const MAX_NAME_DEPTH: usize = 64;

/// Longest ref id accepted (ferry's are `R` + a UUID, 37 bytes).
const MAX_REF_LEN: usize = 256;

/// Longest `HOST` accepted (a DNS name is at most 253 bytes).
const MAX_HOST_LEN: usize = 255;

/// Longest sender name a ticket carries. A cell name has no length limit of its own, but both
/// forms must carry it: the compact form's fields are at most [`MAX_NAME_LEN`] bytes, and a
/// real FQCN (`site-1.job-42`) is tens of bytes.
pub const MAX_SENDER_NAME_LEN: usize = 1024;

/// Check that a sender named `name` can print tickets: senders call this before they start,
/// so that a name no ticket can carry is refused up front rather than by every receiver. The
/// error says how long the name is (`"1500 bytes, longer than the 1024 a ticket carries"`).
pub fn check_sender_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_SENDER_NAME_LEN {
        return Err(format!(
            "{} bytes, longer than the {MAX_SENDER_NAME_LEN} a ticket carries",
            name.len()
        ));
    }
    Ok(())
}

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
#[error("malformed ticket: {0} (a ticket is the ferry1... string, or ferry+tcp://HOST:PORT/SENDER/REF?..., that `ferry serve` printed; copy it whole)")]
pub struct TicketError(String);

impl TicketError {
    /// Why, without the hint.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl Ticket {
    /// Whether `peer`, the cell that answered at the ticket's address, is the sender the ticket
    /// names or routes for it (one of its FQCN ancestors, as NVFlare's `server` for
    /// `server.j1`). Anything else means the ticket does not belong to that address.
    pub fn is_served_by(&self, peer: &str) -> bool {
        let source = self.source.as_str();
        peer == source
            || (source.len() > peer.len()
                && source.starts_with(peer)
                && source.as_bytes()[peer.len()] == b'.')
    }

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

    /// The URL form: `ferry+tcp://HOST:PORT/SENDER/REF?kind=..&name=..&size=..&b3=..`.
    pub fn to_url(&self) -> String {
        url::write(self)
    }

    /// The compact form, `ferry1...` (also what `to_string()` gives).
    pub fn to_compact(&self) -> String {
        compact::write(self)
    }

    /// Check the fields a parser checks (both forms share this): address, sender name, ref id,
    /// name, digest.
    fn validate(self) -> Result<Self, TicketError> {
        let (host, port) = self
            .addr
            .rsplit_once(':')
            .ok_or_else(|| TicketError(format!("{:?} has no port", self.addr)))?;
        let host_ok = !host.is_empty()
            && host.len() <= MAX_HOST_LEN
            && !host.contains(['/', '?', '&', '#', '@', ' '])
            && !host.chars().any(char::is_control);
        // digits only: `u16::from_str` also takes a leading `+`
        let port = Some(port)
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0);
        let (true, Some(port)) = (host_ok, port) else {
            return Err(TicketError(format!("{:?} is not HOST:PORT", self.addr)));
        };
        // the port as both forms write it (no leading zeros), so a ticket prints as it parsed
        let addr = format!("{host}:{port}");
        check_sender_name(&self.source)
            .map_err(|e| TicketError(format!("its sender name is {e}")))?;
        ferry_core::validate_fqcn(&self.source)
            .map_err(|e| TicketError(format!("sender name: {e}")))?;
        if self.ref_id.is_empty()
            || self.ref_id.len() > MAX_REF_LEN
            || !self
                .ref_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TicketError(format!("{:?} is not a ref id", self.ref_id)));
        }
        check_relative_name(&self.name).map_err(TicketError)?;
        if self.blake3.len() != 64 || !self.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TicketError(format!(
                "b3 {:?} is not a BLAKE3 digest",
                self.blake3
            )));
        }
        Ok(Ticket {
            addr,
            blake3: self.blake3.to_ascii_lowercase(),
            ..self
        })
    }
}

/// The compact form (see [`compact`]); [`Ticket::to_url`] writes the URL form.
impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&compact::write(self))
    }
}

/// Either form; surrounding whitespace is ignored.
impl std::str::FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError(format!(
                "it is {} bytes long, more than the {MAX_TICKET_LEN} a ticket may have",
                s.len()
            )));
        }
        if let Some(body) = s.strip_prefix(compact::PREFIX) {
            compact::parse(body)?.validate()
        } else if s.starts_with("ferry+") {
            url::parse(s)?.validate()
        } else {
            Err(TicketError(format!(
                "it starts with neither {} nor ferry+tcp:// or ferry+stcp://",
                compact::PREFIX
            )))
        }
    }
}

#[cfg(test)]
mod tests;
