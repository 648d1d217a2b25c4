//! Identifiers: transaction ids, ref ids and receiver FQCNs.

use std::fmt;

/// Why a string is not a valid FQCN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
            /// A fresh random id: the prefix followed by a uuid4 (NVFlare's format).
            pub fn random() -> Self {
                Self(format!(concat!($prefix, "{}"), uuid::Uuid::new_v4()))
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
