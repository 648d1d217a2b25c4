//! Unit-test helpers: a sequential, in-process pull loop between one object and one consumer.

use ferry_core::{ChunkData, ConsumeError, Consumer, Downloadable, Produced, State};

/// Every chunk of `obj` for `requester` in order, following the states (stop-and-wait).
pub(crate) fn all_chunks(
    obj: &dyn Downloadable,
    requester: &str,
    first: Option<State>,
) -> Vec<(State, ChunkData)> {
    let mut out = Vec::new();
    let mut state = first;
    loop {
        match obj.produce(state.as_ref(), requester).expect("produce") {
            Produced::Data { data, state: next } => {
                out.push((next.clone(), data));
                state = Some(next);
            }
            Produced::Eof => return out,
            Produced::Error { reason } => panic!("producer error: {reason}"),
            Produced::Invalid { reason } => panic!("invalid request: {reason}"),
        }
    }
}

/// Download `obj` into `consumer` as a receiver engine would: plan, chunks (in the order
/// `reorder` gives them), then completed — or failed on the first consumer error.
pub(crate) fn drive(
    obj: &dyn Downloadable,
    consumer: &mut dyn Consumer,
    first: Option<State>,
    reorder: impl FnOnce(&mut Vec<(State, ChunkData)>),
) -> Result<(), ConsumeError> {
    let run = |consumer: &mut dyn Consumer| -> Result<(), ConsumeError> {
        if let Some(plan) = obj.plan() {
            consumer.plan_received(&plan)?;
        }
        let mut chunks = all_chunks(obj, "site-1", first);
        reorder(&mut chunks);
        for (state, data) in chunks {
            let back = consumer.consume("R1", &state, data)?;
            assert_eq!(back, state, "consumers echo the producer state");
        }
        consumer.completed("R1")
    };
    let r = run(consumer);
    if let Err(e) = &r {
        consumer.failed("R1", &e.to_string());
    }
    r
}

/// Deterministic pseudo-random bytes.
pub(crate) fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
