//! [`NdArrayDict`]: named arrays in insertion order.

use super::format::{invalid, NdArray};
use crate::ObjectsError;
use std::collections::HashMap;

/// Named arrays in insertion order; names are unique.
///
/// Equality compares names and arrays regardless of order.
#[derive(Clone, Debug, Default)]
pub struct NdArrayDict {
    entries: Vec<(String, NdArray)>,
    index: HashMap<String, usize>,
}

impl PartialEq for NdArrayDict {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(name, a)| other.get(name).is_some_and(|o| o == a))
    }
}

impl NdArrayDict {
    /// An empty dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `array` under `name` (non-empty, unique).
    pub fn insert(&mut self, name: impl Into<String>, array: NdArray) -> Result<(), ObjectsError> {
        let name = name.into();
        if name.is_empty() {
            return Err(invalid(&name, "empty name"));
        }
        if self.index.contains_key(&name) {
            return Err(invalid(&name, "duplicate name"));
        }
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push((name, array));
        Ok(())
    }

    /// The array named `name`.
    pub fn get(&self, name: &str) -> Option<&NdArray> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// Number of arrays.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no arrays.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The arrays in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NdArray)> {
        self.entries.iter().map(|(n, a)| (n.as_str(), a))
    }

    /// Sum of the arrays' data lengths.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|(_, a)| a.data().len() as u64)
            .sum()
    }

    /// The arrays, in insertion order.
    pub(super) fn into_entries(self) -> Vec<(String, NdArray)> {
        self.entries
    }
}
