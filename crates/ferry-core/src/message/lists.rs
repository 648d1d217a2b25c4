//! Lists in what peers send, grown as their elements arrive.
//!
//! Serde's `Vec` reserves the length a msgpack list header claims before it reads an element
//! (up to 1 MiB): a 5-byte header claiming four billion elements would cost a megabyte however
//! short the message. A list deserialized with [`grown_vec`] holds only what arrived.

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// Deserialize a list into a `Vec` that grows with the elements that arrive, whatever length
/// the input claims: `#[serde(deserialize_with = "ferry_core::message::grown_vec")]`.
pub fn grown_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Grown<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Grown<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut v = Vec::new();
            while let Some(e) = seq.next_element()? {
                v.push(e);
            }
            Ok(v)
        }
    }

    d.deserialize_seq(Grown(PhantomData))
}
