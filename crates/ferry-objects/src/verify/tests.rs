use super::*;
use proptest::prelude::*;

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Cut `len` bytes into chunks of `chunk` bytes (the last one shorter).
fn chunks(len: usize, chunk: usize) -> Vec<(usize, usize)> {
    (0..len.div_ceil(chunk))
        .map(|i| (i * chunk, ((i + 1) * chunk).min(len)))
        .collect()
}

/// Reorder `items` the way a window of `window` requests in flight can: each position takes
/// one of the next `window` items still waiting, chosen by `picks`.
fn window_order<T: Clone>(items: &[T], window: usize, picks: &[usize]) -> Vec<T> {
    let mut waiting: Vec<T> = items.to_vec();
    let mut out = Vec::with_capacity(items.len());
    let mut k = 0;
    while !waiting.is_empty() {
        let w = window.min(waiting.len());
        let i = picks.get(k).copied().unwrap_or(0) % w;
        k += 1;
        out.push(waiting.remove(i));
    }
    out
}

#[test]
fn known_sizes_match_blake3() {
    // Around every leaf and subtree boundary, in order and reversed, with odd chunk sizes.
    for len in [
        0usize, 1, 1023, 1024, 1025, 2047, 2048, 2049, 3072, 4096, 4097, 65536, 70001,
    ] {
        let d = data(len, 7);
        for chunk in [1usize, 100, 1000, 1024, 3000, 4096, 65536] {
            if len / chunk > 5000 {
                continue;
            }
            for reversed in [false, true] {
                let mut order = chunks(len, chunk);
                if reversed {
                    order.reverse();
                }
                let mut v = StreamVerifier::new(len as u64);
                for (s, e) in order {
                    v.update(s as u64, &d[s..e]).unwrap();
                }
                assert_eq!(
                    v.finalize().unwrap(),
                    blake3::hash(&d),
                    "len {len} chunk {chunk}"
                );
                assert_eq!(v.held_bytes(), 0);
            }
        }
    }
}

#[test]
fn bytes_beyond_the_size_fail_at_once() {
    let d = data(4096, 1);
    let mut v = StreamVerifier::new(4000);
    let e = v.update(3000, &d[3000..4001]).unwrap_err().to_string();
    assert!(
        e.contains("[3000, 4001)") && e.contains("4000 bytes"),
        "{e}"
    );
    assert_eq!(v.received(), 0, "nothing of a refused range is taken");
    assert!(v.update(u64::MAX, b"x").is_err());
    let mut empty = StreamVerifier::new(0);
    assert!(empty.update(0, b"x").is_err());
    assert_eq!(empty.finalize().unwrap(), blake3::hash(b""));
}

#[test]
fn incomplete_and_mismatch_say_what_differs() {
    let d = data(5000, 2);
    let mut v = StreamVerifier::new(5000);
    v.update(0, &d[..4000]).unwrap();
    let e = v.finalize().unwrap_err().to_string();
    assert!(
        e.contains("received 4000 of the 5000 bytes") && e.contains("4000, 5000"),
        "{e}"
    );
    v.update(4000, &d[4000..]).unwrap();
    let other = blake3::hash(b"other");
    let e = v.check(&other).unwrap_err().to_string();
    assert!(
        e.contains(&other.to_hex().to_string())
            && e.contains(&blake3::hash(&d).to_hex().to_string()),
        "{e}"
    );
    v.check(&blake3::hash(&d)).unwrap();
}

#[test]
fn memory_stays_bounded_by_the_window() {
    // 64 MiB in 1 MiB chunks, 8 in flight in the worst order: the verifier holds chaining
    // values only (the chunks are leaf-aligned), never chunk data.
    let chunk = 1usize << 20;
    let len = 64 * chunk + 12345;
    let d = data(len, 3);
    let order: Vec<(usize, usize)> = chunks(len, chunk);
    let picks: Vec<usize> = (0..order.len())
        .map(|i| if i % 8 == 0 { 0 } else { 7 })
        .collect();
    let mut v = StreamVerifier::new(len as u64);
    let mut peak = 0;
    for (s, e) in window_order(&order, 8, &picks) {
        v.update(s as u64, &d[s..e]).unwrap();
        peak = peak.max(v.held_bytes());
    }
    assert_eq!(v.finalize().unwrap(), blake3::hash(&d));
    assert!(peak <= 8 * 2048, "held {peak} bytes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any arrival order within any window verifies, whatever the chunk size.
    #[test]
    fn any_order_within_the_window_verifies(
        len in 0usize..40_000,
        chunk in 1usize..9000,
        window in 1usize..16,
        picks in proptest::collection::vec(0usize..64, 0..200),
        seed in any::<u8>(),
    ) {
        let d = data(len, seed);
        let order = window_order(&chunks(len, chunk), window, &picks);
        let mut v = StreamVerifier::new(len as u64);
        for (s, e) in order {
            v.update(s as u64, &d[s..e]).unwrap();
        }
        prop_assert_eq!(v.finalize().unwrap(), blake3::hash(&d));
        prop_assert_eq!(v.held_bytes(), 0);
    }

    /// Duplicated and overlapping ranges count once: the first copy of a byte is hashed.
    #[test]
    fn overlaps_and_duplicates_count_once(
        len in 1usize..20_000,
        ranges in proptest::collection::vec((0usize..20_000, 1usize..6000), 1..40),
        seed in any::<u8>(),
    ) {
        let d = data(len, seed);
        let mut v = StreamVerifier::new(len as u64);
        for (s, n) in ranges {
            let s = s % len;
            let e = (s + n).min(len);
            v.update(s as u64, &d[s..e]).unwrap();
        }
        v.update(0, &d).unwrap();
        prop_assert_eq!(v.finalize().unwrap(), blake3::hash(&d));
    }

    /// Any corrupted byte, in any order of arrival, fails the check.
    #[test]
    fn any_corrupted_byte_fails(
        len in 1usize..30_000,
        chunk in 1usize..9000,
        at in any::<usize>(),
        flip in 1u8..=255,
        picks in proptest::collection::vec(0usize..64, 0..100),
    ) {
        let d = data(len, 9);
        let want = blake3::hash(&d);
        let mut bad = d.clone();
        bad[at % len] ^= flip;
        let mut v = StreamVerifier::new(len as u64);
        for (s, e) in window_order(&chunks(len, chunk), 8, &picks) {
            v.update(s as u64, &bad[s..e]).unwrap();
        }
        prop_assert!(v.check(&want).is_err());
    }
}
