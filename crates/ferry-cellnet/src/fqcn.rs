//! Fully qualified cell names: dotted paths such as `server`, `site-1`, `site-1.job7`.

use std::fmt;
use std::str::FromStr;

use crate::error::CellnetError;

/// A validated fully qualified cell name (FQCN).
///
/// NVFlare's rules: only `A-Z a-z 0-9 _ . ~ -`, not empty, no empty dot-part and no dot-part
/// that appears twice (`a.b.a` is invalid). The first part is the *root* (`site-1` in
/// `site-1.job7`); under mutual TLS it must equal the peer certificate's common name.
///
/// ```
/// use ferry_cellnet::Fqcn;
/// let f = Fqcn::new("site-1.job7").unwrap();
/// assert_eq!(f.root(), "site-1");
/// assert_eq!(f.parent().unwrap().as_str(), "site-1");
/// assert!(Fqcn::new("a..b").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fqcn(String);

/// The FQCN of NVFlare's server root cell.
pub const SERVER_ROOT: &str = "server";

/// Check `s` against NVFlare's FQCN rules; `Err` carries the reason.
pub fn validate(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    // one pass for the characters and the dots
    let mut dots = 0usize;
    for b in s.bytes() {
        if b == b'.' {
            dots += 1;
        } else if !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'-')) {
            return Err("invalid character (allowed: A-Z a-z 0-9 _ . ~ -)");
        }
    }
    if dots == 0 {
        // one part, not empty: nothing to split (a request to `server`, every one of them)
        return Ok(());
    }
    // A name is validated on every message sent and received, and a peer chooses its length.
    // A few parts (every real name) are compared with the parts before them in place, with no
    // allocation; more go through a set, so the check stays linear in the name's length
    // (comparing each of a 60 KB name's 15,000 parts with the ones before it took 1.3 s).
    if dots < FEW_PARTS {
        for (i, part) in s.split('.').enumerate() {
            check_part(part, || s.split('.').take(i).any(|earlier| earlier == part))?;
        }
    } else {
        let mut seen = std::collections::HashSet::new();
        for part in s.split('.') {
            check_part(part, || !seen.insert(part))?;
        }
    }
    Ok(())
}

/// Names with fewer dots than this have their parts compared pairwise, in place.
const FEW_PARTS: usize = 8;

/// A dot-part that is empty, or (`seen_before`) repeats an earlier one, is refused.
fn check_part(part: &str, seen_before: impl FnOnce() -> bool) -> Result<(), &'static str> {
    if part.is_empty() {
        Err("empty dot-part")
    } else if seen_before() {
        Err("duplicate dot-part")
    } else {
        Ok(())
    }
}

/// True if `ancestor` is a proper dot-prefix of `name` (`a` of `a.b`, not of `ab`).
pub(crate) fn is_ancestor(ancestor: &str, name: &str) -> bool {
    name.len() > ancestor.len()
        && name.starts_with(ancestor)
        && name.as_bytes()[ancestor.len()] == b'.'
}

impl Fqcn {
    /// Validate and wrap a name.
    pub fn new(s: impl Into<String>) -> Result<Self, CellnetError> {
        let s = s.into();
        match validate(&s) {
            Ok(()) => Ok(Fqcn(s)),
            Err(reason) => Err(CellnetError::InvalidFqcn { fqcn: s, reason }),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first dot-part (the root cell's name).
    pub fn root(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }

    /// The dot-parts, root first.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The parent FQCN (`a.b.c` → `a.b`), `None` for a root.
    pub fn parent(&self) -> Option<Fqcn> {
        self.0.rfind('.').map(|i| Fqcn(self.0[..i].to_string()))
    }

    /// Ancestors from the nearest (the parent) to the root.
    pub fn ancestors(&self) -> Vec<Fqcn> {
        let mut out = Vec::new();
        let mut cur = self.parent();
        while let Some(p) = cur {
            cur = p.parent();
            out.push(p);
        }
        out
    }

    /// True if `self` is a strict ancestor of `other` (`a` is an ancestor of `a.b.c`).
    pub fn is_ancestor_of(&self, other: &Fqcn) -> bool {
        is_ancestor(&self.0, &other.0)
    }

    /// True if this is a root cell (no dot).
    pub fn is_root(&self) -> bool {
        !self.0.contains('.')
    }
}

impl fmt::Display for Fqcn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Fqcn {
    type Err = CellnetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Fqcn::new(s)
    }
}

impl TryFrom<&str> for Fqcn {
    type Error = CellnetError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Fqcn::new(s)
    }
}

impl TryFrom<String> for Fqcn {
    type Error = CellnetError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Fqcn::new(s)
    }
}

impl AsRef<str> for Fqcn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvflare_rules() {
        for ok in [
            "server",
            "site-1",
            "site-1.job7",
            "a_b~c-d.e",
            "server.j1.x",
            "A9",
        ] {
            assert!(Fqcn::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", ".", "a.", ".a", "a..b", "a.b.a", "a b", "a/b", "é", "a:b", "x.x",
        ] {
            assert!(Fqcn::new(bad).is_err(), "{bad:?}");
        }
    }

    /// A name of one part (no dot, nothing to split) gets the same reasons as any other.
    #[test]
    fn one_part_names_get_the_same_reasons() {
        assert_eq!(validate("server"), Ok(()));
        assert_eq!(validate(""), Err("empty"));
        for bad in ["a b", "é", "a/b", "server\0"] {
            assert_eq!(
                validate(bad),
                Err("invalid character (allowed: A-Z a-z 0-9 _ . ~ -)"),
                "{bad:?}"
            );
            let dotted = format!("x.{bad}");
            assert_eq!(validate(&dotted), validate(bad), "{dotted:?}");
        }
    }

    /// Names of a few parts and of many (checked through a set) follow the same rules, with
    /// the same reasons.
    #[test]
    fn many_parts_follow_the_same_rules() {
        for n in [1, FEW_PARTS - 1, FEW_PARTS, FEW_PARTS + 1, 500] {
            let parts: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let name = parts.join(".");
            assert_eq!(validate(&name), Ok(()), "{n} distinct parts");
            let dup = format!("{name}.{}", parts[n / 2]);
            assert_eq!(
                validate(&dup),
                Err("duplicate dot-part"),
                "{n} parts + a repeat"
            );
            let empty = format!("{name}..x");
            assert_eq!(
                validate(&empty),
                Err("empty dot-part"),
                "{n} parts + an empty one"
            );
        }
    }

    #[test]
    fn hierarchy() {
        let f = Fqcn::new("a.b.c").unwrap();
        assert_eq!(f.root(), "a");
        assert_eq!(
            f.ancestors().iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            ["a.b", "a"]
        );
        assert!(Fqcn::new("a").unwrap().is_ancestor_of(&f));
        assert!(!Fqcn::new("a.b.c").unwrap().is_ancestor_of(&f));
        assert!(!Fqcn::new("a.bb")
            .unwrap()
            .is_ancestor_of(&Fqcn::new("a.b").unwrap()));
        assert!(!Fqcn::new("a.b")
            .unwrap()
            .is_ancestor_of(&Fqcn::new("a.bc").unwrap()));
        assert!(Fqcn::new("a").unwrap().is_root());
        assert_eq!(Fqcn::new("a").unwrap().parent(), None);
    }
}
