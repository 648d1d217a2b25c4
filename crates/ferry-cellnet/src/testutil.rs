//! Helpers shared by the unit tests of the wire modules.

use rmpv::Value;

/// Bytes from whitespace-separated hex pairs, as the captures in f3-wire.md are written.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// The example value of f3-wire.md §3:
/// `{"a":1,"b":b"xy","l":[1,"s"],"d":{"k":None},"f":1.5,"t":True}`.
pub(crate) fn spec_example() -> Value {
    Value::Map(vec![
        ("a".into(), 1.into()),
        ("b".into(), Value::Binary(b"xy".to_vec())),
        ("l".into(), Value::Array(vec![1.into(), "s".into()])),
        ("d".into(), Value::Map(vec![("k".into(), Value::Nil)])),
        ("f".into(), Value::F64(1.5)),
        ("t".into(), true.into()),
    ])
}
