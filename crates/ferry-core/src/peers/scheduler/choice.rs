//! Where a receiver goes: the choice of a source among the origin and the live peers.

use super::{Health, Scheduler, Upstream};

/// A candidate source: (has a free slot, ranking key where smaller is better, who; `None`
/// is the origin).
type Pick = (bool, (usize, usize, u64, u64), Option<String>);

impl Scheduler {
    /// The best source for `receiver`: `None` is the origin. A free slot (fewer than
    /// `fan_out` children) nearest the origin wins, the most advanced first; when every source
    /// is full, the least loaded, a peer ahead of the receiver before the origin.
    pub(super) fn choose(&self, receiver: &str) -> Option<String> {
        let me = self.nodes.get(receiver);
        let my_pos = me.map_or(0, |n| n.position);
        let k = self.cfg.fan_out;
        // (free?, key) where a smaller key is better.
        let mut best: Option<Pick> = None;
        let origin_load = self.origin_children.len();
        let consider = |best: &mut Option<Pick>,
                        free: bool,
                        key: (usize, usize, u64, u64),
                        who: Option<String>| {
            let better = match best {
                None => true,
                Some((bf, bk, _)) => (free && !*bf) || (free == *bf && key < *bk),
            };
            if better {
                *best = Some((free, key, who));
            }
        };
        // Free: (depth, 0, !position, seq); full: (children, origin last, !position, depth).
        if origin_load < k {
            consider(&mut best, true, (0, 0, 0, 0), None);
        } else {
            consider(&mut best, false, (origin_load, 1, 0, 0), None);
        }
        for (name, n) in &self.nodes {
            if name == receiver
                || n.offer.is_none()
                || n.slow
                || !(n.health == Health::Live)
                || (n.upstream == Upstream::Lost && !n.complete)
                || self.is_below(name, receiver)
            {
                continue;
            }
            let depth = self.depth(name);
            let load = n.children.len();
            if load < k {
                consider(
                    &mut best,
                    true,
                    (depth, 0, !n.position, n.seq),
                    Some(name.clone()),
                );
            } else {
                let behind = usize::from(n.position < my_pos && !n.complete);
                consider(
                    &mut best,
                    false,
                    (load, behind * 2, !n.position, depth as u64),
                    Some(name.clone()),
                );
            }
        }
        best.and_then(|(_, _, who)| who)
    }

    /// Hops from `name` up to the origin (a lost link counts as the origin).
    pub(super) fn depth(&self, name: &str) -> usize {
        let mut d = 1;
        let mut at = name;
        while let Some(Upstream::Peer(p)) = self.nodes.get(at).map(|n| &n.upstream) {
            d += 1;
            at = p;
            if d > self.nodes.len() + 1 {
                break;
            }
        }
        d
    }

    /// Whether `name` pulls, directly or not, from `ancestor` (or is it).
    pub(super) fn is_below(&self, name: &str, ancestor: &str) -> bool {
        let mut at = name;
        for _ in 0..=self.nodes.len() {
            if at == ancestor {
                return true;
            }
            match self.nodes.get(at).map(|n| &n.upstream) {
                Some(Upstream::Peer(p)) => at = p,
                _ => return false,
            }
        }
        false
    }
}
