//! Several short strs kept as one string: one allocation where each would be its own.
//!
//! A received message's origin and destination, and a request's asker (origin, channel,
//! topic, the id its reply answers), outlive the header block they were read from; kept
//! as `N` `String`s they cost `N` allocations per message.

/// `N` strs, one after the other in one string, each read back by its index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Joined<const N: usize> {
    /// The parts, one after the other.
    text: String,
    /// Where each part ends in `text` (the last part's end is `text.len()`).
    ends: [usize; N],
}

impl<const N: usize> Joined<N> {
    /// `parts`, joined.
    pub fn new(parts: [&str; N]) -> Joined<N> {
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; N];
        for (end, part) in ends.iter_mut().zip(parts) {
            text.push_str(part);
            *end = text.len();
        }
        Joined { text, ends }
    }

    /// Part `i` (empty past the last).
    pub fn part(&self, i: usize) -> &str {
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).copied().unwrap_or(usize::MAX),
            None => 0,
        };
        let end = self.ends.get(i).copied().unwrap_or(0);
        self.text.get(start..end).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Joined;

    #[test]
    fn each_part_reads_back_whole_empty_or_not() {
        let j = Joined::new(["site-1", "", "tópic", "8c2d-id"]);
        assert_eq!(
            (0..4).map(|i| j.part(i)).collect::<Vec<_>>(),
            ["site-1", "", "tópic", "8c2d-id"]
        );
        assert_eq!(j.part(4), "");
        let e = Joined::new(["", ""]);
        assert_eq!((e.part(0), e.part(1)), ("", ""));
        // the same text split elsewhere is a different value
        assert_ne!(Joined::new(["ab", "c"]), Joined::new(["a", "bc"]));
    }
}
