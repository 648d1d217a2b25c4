//! Identifiers: transaction ids, ref ids and receiver FQCNs, and the source the engine
//! draws its random ids and nonces from.

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};
use std::fmt;

/// Why a string is not a valid FQCN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FqcnError {
    /// The FQCN is empty.
    #[error("FQCN is empty")]
    Empty,
    /// A character outside `[A-Za-z0-9_.~-]`.
    #[error("FQCN {0:?} has a character outside [A-Za-z0-9_.~-]")]
    BadChar(String),
    /// Two dots in a row, or a leading/trailing dot.
    #[error("FQCN {0:?} has an empty segment")]
    EmptySegment(String),
    /// The same segment appears twice.
    #[error("FQCN {0:?} repeats a segment")]
    DuplicateSegment(String),
}

/// Check `s` against NVFlare's FQCN rules: characters `[A-Za-z0-9_.~-]`, dot-separated
/// segments that are neither empty nor repeated.
///
/// This is the engine's definition of the rule, which it applies to every receiver name it
/// is given. `ferry-cellnet` applies the same rule to the names on its wire
/// (`ferry_cellnet::Fqcn`); the two crates must not depend on each other, so each keeps its
/// fifteen lines and the `ferry` crate, which sees both, proves that they accept exactly the
/// same names (`crates/ferry/tests/fqcn_rules.rs`).
pub fn validate_fqcn(s: &str) -> Result<(), FqcnError> {
    if s.is_empty() {
        return Err(FqcnError::Empty);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-'))
    {
        return Err(FqcnError::BadChar(s.to_string()));
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(FqcnError::EmptySegment(s.to_string()));
    }
    for (i, p) in parts.iter().enumerate() {
        if parts[..i].contains(p) {
            return Err(FqcnError::DuplicateSegment(s.to_string()));
        }
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id: the prefix followed by a uuid4 (NVFlare's format), from the
            /// OS's random number generator.
            pub fn random() -> Self {
                IdSource::os().next_id($prefix)
            }
            /// A caller-chosen id, taken as is.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A transaction id: `T<uuid4>` unless the caller chose one.
    TxId,
    "T"
);
string_id!(
    /// A ref id (one object in a transaction): `R<uuid4>` unless the caller chose one.
    RefId,
    "R"
);

/// Where the engine's random identifiers come from: the ids of transactions and refs it mints
/// and the nonces of provisional serves.
///
/// In production they come from the OS's random number generator: a ref id is what a
/// receiver needs to pull (in count mode, all it needs), and a nonce is what a confirm must
/// echo, so neither may be guessable. A simulation seeds the source instead
/// ([`ServiceConfig::id_seed`](crate::ServiceConfig::id_seed)), so the same seed mints the
/// same ids in the same order and a run replays exactly (transactions are kept ordered by id,
/// so the ids decide more than their own text).
pub(crate) enum IdSource {
    /// The OS's generator (`getrandom`), read for every id.
    Os,
    /// A seeded generator: predictable, for tests and simulations only.
    Seeded(Box<StdRng>),
}

impl fmt::Debug for IdSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The generator's state is secret-adjacent and noisy: name the kind only.
        f.write_str(match self {
            IdSource::Os => "IdSource::Os",
            IdSource::Seeded(_) => "IdSource::Seeded",
        })
    }
}

impl IdSource {
    /// Ids from the OS's random number generator.
    pub(crate) fn os() -> Self {
        IdSource::Os
    }

    /// Ids from a generator seeded with `seed`: the same seed gives the same sequence.
    pub(crate) fn seeded(seed: u64) -> Self {
        IdSource::Seeded(Box::new(StdRng::seed_from_u64(seed)))
    }

    /// `None`: the OS; `Some(seed)`: seeded.
    pub(crate) fn from_seed(seed: Option<u64>) -> Self {
        seed.map_or_else(Self::os, Self::seeded)
    }

    /// A random (version 4) uuid.
    fn uuid(&mut self) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        match self {
            IdSource::Os => OsRng.fill_bytes(&mut bytes),
            IdSource::Seeded(rng) => rng.fill_bytes(&mut bytes),
        }
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// `prefix` followed by a uuid4, NVFlare's id format.
    fn next_id<T: From<String>>(&mut self, prefix: &str) -> T {
        T::from(format!("{prefix}{}", self.uuid()))
    }

    /// A fresh transaction id, `T<uuid4>`.
    pub(crate) fn tx_id(&mut self) -> TxId {
        self.next_id("T")
    }

    /// A fresh ref id, `R<uuid4>`.
    pub(crate) fn ref_id(&mut self) -> RefId {
        self.next_id("R")
    }

    /// A fresh confirm nonce: 32 lowercase hex digits (a uuid4 without dashes, as NVFlare).
    pub(crate) fn nonce(&mut self) -> String {
        self.uuid().simple().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_nvflare_prefixes() {
        let t = TxId::random();
        let r = RefId::random();
        assert!(t.as_str().starts_with('T') && t.as_str().len() == 37);
        assert!(r.as_str().starts_with('R') && r.as_str().len() == 37);
        assert_ne!(TxId::random(), t);
    }

    #[test]
    fn a_seeded_source_repeats_itself_and_the_os_does_not() {
        let draw = |ids: &mut IdSource| (ids.tx_id(), ids.ref_id(), ids.nonce());
        let (mut a, mut b) = (IdSource::seeded(7), IdSource::seeded(7));
        let first = draw(&mut a);
        assert_eq!(first, draw(&mut b));
        assert_ne!(draw(&mut a), first, "a sequence, not one value");
        assert_ne!(draw(&mut IdSource::seeded(8)), first);
        assert_ne!(draw(&mut IdSource::os()), draw(&mut IdSource::os()));
        // NVFlare's formats: T/R + a hyphenated uuid4, nonce = 32 hex digits
        let (t, r, n) = first;
        let u = uuid::Uuid::parse_str(&t.as_str()[1..]).unwrap();
        assert_eq!(u.get_version_num(), 4);
        assert!(r.as_str().starts_with('R') && r.as_str().len() == 37);
        assert!(n.len() == 32 && n.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn fqcn_rules() {
        for ok in ["server", "site-1", "site-1.job7", "a_b~c-d.e", "server.j1"] {
            assert_eq!(validate_fqcn(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_fqcn(""), Err(FqcnError::Empty));
        assert!(matches!(validate_fqcn("a b"), Err(FqcnError::BadChar(_))));
        assert!(matches!(validate_fqcn("a/b"), Err(FqcnError::BadChar(_))));
        assert!(matches!(
            validate_fqcn("a..b"),
            Err(FqcnError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_fqcn(".a"),
            Err(FqcnError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_fqcn("a."),
            Err(FqcnError::EmptySegment(_))
        ));
        assert!(matches!(
            validate_fqcn("a.b.a"),
            Err(FqcnError::DuplicateSegment(_))
        ));
    }
}
