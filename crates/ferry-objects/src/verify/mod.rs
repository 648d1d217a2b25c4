//! Content pins and the streaming BLAKE3 verifier.
//!
//! A [`Pin`] is what a receiver knows about an object before any byte arrives, from a channel
//! the sender's data does not travel on (a ticket): its size and its BLAKE3 digest. The
//! consumers that take one ([`FileConsumer`](crate::FileConsumer),
//! [`TensorDictConsumer`](crate::TensorDictConsumer),
//! [`SafetensorsFileConsumer`](crate::SafetensorsFileConsumer)) hold the sender to it whatever
//! the sender advertises: a byte beyond the pinned size fails at once, and the download
//! completes only when the digest of what arrived equals the pinned one.
//!
//! [`StreamVerifier`] computes the BLAKE3 digest of a byte stream whose ranges arrive in any
//! order, while they arrive, without buffering them and without reading anything twice: each
//! range is cut into aligned power-of-two subtrees of the BLAKE3 tree (hashed at once, 32 bytes
//! kept each) plus at most two partial 1 KiB leaves at its edges (kept until their neighbours
//! arrive); subtrees are merged into the digest in order as the contiguous prefix grows.

mod stream;
#[cfg(test)]
mod tests;

pub use stream::StreamVerifier;

use std::fmt;

/// An object's size and BLAKE3 digest, pinned before the download starts (by a ticket).
///
/// For a byte-stream object (a file) the digest is BLAKE3 of its bytes; for a tensor dict it is
/// the tensor-dict digest of [`tensor_dict_pin`](crate::tensors::tensor_dict_pin), over
/// the items in the sender's order (see `docs/protocol.md`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// Size in bytes (a file's length; a tensor dict's total tensor data, each item once).
    pub size: u64,
    /// The digest. Comparisons of [`blake3::Hash`] run in constant time.
    pub blake3: blake3::Hash,
}

impl Pin {
    /// A pin of `size` bytes with digest `blake3`.
    pub fn new(size: u64, blake3: blake3::Hash) -> Self {
        Self { size, blake3 }
    }

    /// A pin from a digest in hex (64 hex digits, either case).
    pub fn from_hex(size: u64, hex: &str) -> Result<Self, crate::ObjectsError> {
        let blake3 = blake3::Hash::from_hex(hex).map_err(|e| {
            crate::ObjectsError::InvalidOption(format!("{hex:?} is not a BLAKE3 digest: {e}"))
        })?;
        Ok(Self { size, blake3 })
    }

    /// The digest as 64 lowercase hex digits.
    pub fn hex(&self) -> String {
        self.blake3.to_hex().to_string()
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pin({} bytes, BLAKE3 {})",
            self.size,
            self.blake3.to_hex()
        )
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} bytes with BLAKE3 {}",
            self.size,
            self.blake3.to_hex()
        )
    }
}

/// What a finished download was checked against, for a front end to report truthfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Size and digest equal a [`Pin`] given before the download (a ticket's).
    Pinned(Pin),
    /// Size and digest equal what the sender itself advertised in its plan: this catches
    /// corruption in transit and on disk, not a sender (or a plain-TCP path) that lies.
    SenderAdvertised(Pin),
    /// Only the size the sender advertised, or nothing, was checked.
    Unverified,
}

impl Verified {
    /// One line for a user: exactly what was checked.
    pub fn describe(&self) -> &'static str {
        match self {
            Verified::Pinned(_) => "size + BLAKE3 pinned by the ticket",
            Verified::SenderAdvertised(_) => "size + BLAKE3 advertised by the sender (not pinned)",
            Verified::Unverified => "nothing: no digest was pinned or advertised",
        }
    }

    /// The digest that was checked, if any.
    pub fn pin(&self) -> Option<Pin> {
        match *self {
            Verified::Pinned(p) | Verified::SenderAdvertised(p) => Some(p),
            Verified::Unverified => None,
        }
    }
}
