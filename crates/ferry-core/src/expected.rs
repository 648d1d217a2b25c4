//! Who a transaction waits for: the one definition of the expected receivers and of what
//! "every expected receiver" means, used by the engine (completion, admission, budgets,
//! outcomes), by objects that learn it in
//! [`Downloadable::set_transaction`](crate::Downloadable::set_transaction) (a shared cache
//! counts acknowledgements with it) and by front ends that build a transaction
//! ([`TxConfig::expected_receivers`](crate::TxConfig::expected_receivers)).

use crate::{validate_fqcn, Error};

/// Who a transaction expects. NVFlare passes two arguments (`num_receivers`,
/// `receiver_ids`); [`from_nvflare`](Self::from_nvflare) turns them into this, and every rule
/// about them is a method here.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ExpectedReceivers {
    /// Unknown (NVFlare's `num_receivers == 0`): the transaction never finishes by itself.
    #[default]
    Unknown,
    /// Any `n` distinct receivers (count mode). `Count(0)` means the same as `Unknown`.
    Count(usize),
    /// These receivers (identity mode): FQCNs, each once.
    Ids(Vec<String>),
}

impl ExpectedReceivers {
    /// NVFlare's two arguments, checked: the ids are valid FQCNs (duplicates are dropped with a
    /// warning, order kept), not an empty list, and `num_receivers` is 0 (derived from the ids)
    /// or equal to their number. Without ids, `num_receivers` 0 is [`Unknown`](Self::Unknown).
    pub fn from_nvflare(
        num_receivers: usize,
        receiver_ids: Option<Vec<String>>,
    ) -> Result<Self, Error> {
        let Some(list) = receiver_ids else {
            return Ok(if num_receivers == 0 {
                Self::Unknown
            } else {
                Self::Count(num_receivers)
            });
        };
        if list.is_empty() {
            return Err(Error::InvalidConfig("receiver_ids is empty".into()));
        }
        let mut ids: Vec<String> = Vec::with_capacity(list.len());
        for id in list {
            validate_fqcn(&id)?;
            if ids.contains(&id) {
                tracing::warn!(receiver = %id, "duplicate receiver id ignored");
            } else {
                ids.push(id);
            }
        }
        if num_receivers != 0 && num_receivers != ids.len() {
            return Err(Error::InvalidConfig(format!(
                "num_receivers {num_receivers} != {} receiver_ids",
                ids.len()
            )));
        }
        Ok(Self::Ids(ids))
    }

    /// How many receivers are expected: NVFlare's `num_receivers` (0 = unknown).
    pub fn count(&self) -> usize {
        match self {
            Self::Unknown => 0,
            Self::Count(n) => *n,
            Self::Ids(ids) => ids.len(),
        }
    }

    /// Whether the count is known (not `Unknown`, not `Count(0)`).
    pub fn is_known(&self) -> bool {
        self.count() > 0
    }

    /// The declared receivers (identity mode).
    pub fn ids(&self) -> Option<&[String]> {
        match self {
            Self::Ids(ids) => Some(ids),
            _ => None,
        }
    }

    /// Count mode with a known count: the number of places.
    pub fn places(&self) -> Option<usize> {
        match self {
            Self::Count(n) if *n > 0 => Some(*n),
            _ => None,
        }
    }

    /// Whether `receiver` is declared (identity mode only).
    pub fn declares(&self, receiver: &str) -> bool {
        self.ids()
            .is_some_and(|ids| ids.iter().any(|i| i == receiver))
    }

    /// Whether what `receiver` does counts towards completion: in identity mode only a
    /// declared receiver counts; otherwise any receiver does.
    pub fn counts(&self, receiver: &str) -> bool {
        match self {
            Self::Ids(_) => self.declares(receiver),
            _ => true,
        }
    }

    /// NVFlare's completion rule (§3.2): every declared receiver is done (identity mode), or
    /// at least `n` receivers are (count mode); never while the count is unknown. `done` is the
    /// number of receivers that are done (count mode) and `is_done` tells whether one is
    /// (identity mode).
    pub fn complete_with(&self, done: usize, is_done: impl Fn(&str) -> bool) -> bool {
        match self {
            Self::Ids(ids) => !ids.is_empty() && ids.iter().all(|id| is_done(id)),
            Self::Count(n) => *n > 0 && done >= *n,
            Self::Unknown => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvflare_arguments() {
        use ExpectedReceivers::*;
        assert_eq!(ExpectedReceivers::from_nvflare(0, None), Ok(Unknown));
        assert_eq!(ExpectedReceivers::from_nvflare(3, None), Ok(Count(3)));
        let ids = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            ExpectedReceivers::from_nvflare(0, ids(&["a", "b", "a"])),
            Ok(Ids(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            ExpectedReceivers::from_nvflare(2, ids(&["a", "b"])).map(|e| e.count()),
            Ok(2)
        );
        assert!(ExpectedReceivers::from_nvflare(3, ids(&["a", "b"])).is_err());
        assert!(ExpectedReceivers::from_nvflare(0, ids(&[])).is_err());
        assert!(ExpectedReceivers::from_nvflare(0, ids(&["a b"])).is_err());
    }

    #[test]
    fn rules() {
        use ExpectedReceivers::*;
        let ids = Ids(vec!["a".into(), "b".into()]);
        assert!(ids.declares("a") && !ids.declares("c"));
        assert!(ids.counts("a") && !ids.counts("c"));
        assert!(ids.complete_with(0, |r| r == "a" || r == "b"));
        assert!(!ids.complete_with(5, |r| r == "a"));
        assert_eq!(ids.places(), None);
        assert!(Count(2).counts("anyone") && !Count(2).declares("anyone"));
        assert!(Count(2).complete_with(2, |_| false));
        assert!(!Count(2).complete_with(1, |_| true));
        assert_eq!(Count(2).places(), Some(2));
        for unknown in [Unknown, Count(0)] {
            assert!(!unknown.is_known());
            assert!(!unknown.complete_with(100, |_| true));
            assert_eq!(unknown.places(), None);
        }
    }
}
