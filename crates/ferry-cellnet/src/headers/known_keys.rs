//! The header keys this crate knows (every `cn__*` and `sm__*` key NVFlare 2.9 writes) and
//! how a received key is matched to one of them without a `memcmp` call or an allocation.

use std::borrow::Cow;

use super::slots::Slot;
use super::{keys, stream_keys};

/// A header key: one of the keys CellNet and the stream protocol write ([`KNOWN_KEYS`]) is a
/// `&'static str`, anything else owns its text. A message carries about twenty `cn__*`/`sm__*`
/// keys each way; borrowing them saves an allocation and a free per key per message.
pub(super) type Key = Cow<'static, str>;

/// Every `cn__*` and `sm__*` key NVFlare 2.9 writes (f3-wire.md §2.2, §4.2), those this crate
/// writes among them. Used to avoid allocating keys (a key not listed is kept as well) and to
/// note where the [`Slot`] keys lie: those come first, in the order of [`Slot`].
pub(super) const KNOWN_KEYS: &[&str] = &[
    Slot::MsgType.key(),
    Slot::Origin.key(),
    Slot::Destination.key(),
    Slot::Channel.key(),
    Slot::Topic.key(),
    Slot::ReqId.key(),
    Slot::ReplyExpected.key(),
    Slot::PayloadEncoding.key(),
    Slot::Route.key(),
    Slot::Encrypted.key(),
    Slot::ReturnCode.key(),
    Slot::Error.key(),
    keys::FROM,
    keys::TO,
    keys::PAYLOAD_LEN,
    keys::SEND_TIME,
    keys::SECURE,
    keys::OPTIONAL,
    keys::ORIGINAL_HEADERS,
    keys::RETURN_REASON,
    "cn__clear_payload_len",
    "cn__conn_url",
    "cn__pass_through",
    "cn__server_transit_required",
    stream_keys::ID,
    stream_keys::SEQ,
    stream_keys::DATA_TYPE,
    stream_keys::OFFSET,
    stream_keys::SIZE,
    stream_keys::CHANNEL,
    stream_keys::TOPIC,
    stream_keys::PAYLOAD_ENCODING,
    stream_keys::REQ_ID,
    stream_keys::RELIABLE,
    stream_keys::OPTIONAL,
    stream_keys::CHUNK_SIZE,
    stream_keys::WINDOW,
    stream_keys::ERROR_MSG,
    stream_keys::ERROR_TYPE,
    "sm__ai",
    "sm__fd",
    "sm__rt",
    "sm__rw",
];

/// `k` as a [`Key`] (borrowed from [`KNOWN_KEYS`] if it is one of them, else owned), and its
/// index in [`KNOWN_KEYS`].
pub(super) fn key(k: &str) -> (Key, Option<usize>) {
    match known(k.as_bytes()) {
        Some((i, s)) => (Cow::Borrowed(s), Some(i)),
        None => (Cow::Owned(k.to_owned()), None),
    }
}

/// The index in [`KNOWN_KEYS`] and the text of the known key whose bytes are `k`, if any.
///
/// Called for every key of every message received: one table lookup by a hash of the key's
/// length and last two bytes (no two known keys share it; the table is built, and that
/// checked, at compile time) and one comparison by words, no `memcmp` call.
pub(super) fn known(k: &[u8]) -> Option<(usize, &'static str)> {
    let i = usize::from(*BY_HASH.get(known_hash(k))?).checked_sub(1)?;
    let s = KNOWN_KEYS.get(i)?;
    same_bytes(s.as_bytes(), k).then_some((i, *s))
}

/// Buckets of [`BY_HASH`].
const HASH_BUCKETS: usize = 128;

/// Where a key would be in [`BY_HASH`].
const fn known_hash(k: &[u8]) -> usize {
    let n = k.len();
    if n < 2 {
        return n;
    }
    (n * 29 + k[n - 1] as usize * 39 + k[n - 2] as usize) % HASH_BUCKETS
}

/// Index + 1 in [`KNOWN_KEYS`] of the key whose [`known_hash`] each bucket is (0: none).
static BY_HASH: [u8; HASH_BUCKETS] = {
    let mut t = [0u8; HASH_BUCKETS];
    let mut i = 0;
    while i < KNOWN_KEYS.len() {
        let h = known_hash(KNOWN_KEYS[i].as_bytes());
        assert!(t[h] == 0, "two known keys share a hash: change known_hash");
        t[h] = i as u8 + 1;
        i += 1;
    }
    t
};

/// `a == b`, compared by 8- or 4-byte words (overlapping at the end) instead of a `memcmp`
/// call: a header key is a few words long.
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    fn w8(s: &[u8], i: usize) -> Option<u64> {
        s.get(i..)?
            .first_chunk::<8>()
            .map(|c| u64::from_ne_bytes(*c))
    }
    fn w4(s: &[u8], i: usize) -> Option<u32> {
        s.get(i..)?
            .first_chunk::<4>()
            .map(|c| u32::from_ne_bytes(*c))
    }
    let n = a.len();
    if n != b.len() {
        false
    } else if n >= 8 {
        (0..n - 8).step_by(8).all(|i| w8(a, i) == w8(b, i)) && w8(a, n - 8) == w8(b, n - 8)
    } else if n >= 4 {
        w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4)
    } else {
        a == b
    }
}
