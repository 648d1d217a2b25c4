//! FOBS payloads: NVFlare's LOBS container around a msgpack main body, with large values
//! moved out into datum sections (f3-wire.md §3).
//!
//! ```text
//! section = marker(1) dot(1) size(8, big-endian) body(size)
//!   100 MAIN   body = msgpack main value (exactly one, first)
//!   101 TEXT   body = 16-byte raw uuid + UTF-8 text
//!   102 BLOB   body = 16-byte raw uuid + bytes
//!   103 FILE   body = 16-byte raw uuid + bytes
//! ```
//! A `bin`/`str` of at least [`DATUM_THRESHOLD`] bytes is replaced in the main body by a
//! `DatumRef` map naming the datum's uuid.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rmpv::Value;
use uuid::Uuid;

use crate::error::CellnetError;
use crate::msgpack::{self, MsgpackBody, MsgpackWriter};
use crate::segment::Segment;

/// Section marker of the main body.
pub const MARKER_MAIN: u8 = 100;
/// Section marker of a text datum.
pub const MARKER_TEXT: u8 = 101;
/// Section marker of a binary datum.
pub const MARKER_BLOB: u8 = 102;
/// Section marker of a file datum.
pub const MARKER_FILE: u8 = 103;
/// Length of a section header.
pub const SECTION_HEADER_LEN: usize = 10;
/// Values at least this long (10 MiB, NVFlare's `TEN_MEGA`) become datum sections.
pub const DATUM_THRESHOLD: usize = 10 * 1024 * 1024;

const FOBS_TYPE: &str = "__fobs_type__";
const FOBS_DATA: &str = "__fobs_data__";
const FOBS_DC: &str = "__fobs_dc__";
const DATUM_REF_TYPE: &str = "nvflare.fuel.utils.fobs.datum.DatumRef";
const DATA_CLASS_DECOMPOSER: &str = "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer";

/// Kind of a datum section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatumKind {
    /// UTF-8 text (becomes a msgpack str).
    Text,
    /// Binary data (becomes a msgpack bin).
    Blob,
    /// A file datum; ferry treats its content as binary data.
    File,
}

impl DatumKind {
    fn marker(self) -> u8 {
        match self {
            DatumKind::Text => MARKER_TEXT,
            DatumKind::Blob => MARKER_BLOB,
            DatumKind::File => MARKER_FILE,
        }
    }
}

/// One datum section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datum {
    /// The id the main body's `DatumRef` names.
    pub id: Uuid,
    /// Text, blob or file.
    pub kind: DatumKind,
    /// The `dot` byte of the section header (object type; 0 for plain values).
    pub dot: u8,
    /// The value bytes (zero-copy slice of the received payload).
    pub data: Bytes,
}

/// A parsed FOBS container: the main msgpack body and the datum sections, all zero-copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fobs {
    /// The main msgpack body, possibly as several segments.
    pub main: MsgpackBody,
    /// Datum sections, in wire order.
    pub datums: Vec<Datum>,
}

impl Fobs {
    /// Parse a received container. Every section size is checked against the bytes present
    /// before anything is sliced; nothing is copied.
    pub fn parse(mut buf: Bytes) -> Result<Fobs, CellnetError> {
        let mut main = None;
        let mut datums = Vec::new();
        while !buf.is_empty() {
            if buf.len() < SECTION_HEADER_LEN {
                return Err(CellnetError::Payload(
                    "truncated FOBS section header".into(),
                ));
            }
            let marker = buf.get_u8();
            let dot = buf.get_u8();
            let size = buf.get_u64();
            if size > buf.len() as u64 {
                return Err(CellnetError::Payload(format!(
                    "FOBS section of {size} bytes exceeds the {} bytes left",
                    buf.len()
                )));
            }
            let mut body = buf.split_to(size as usize);
            match marker {
                MARKER_MAIN => {
                    if main.is_some() || !datums.is_empty() {
                        return Err(CellnetError::Payload(
                            "FOBS main section is not first or not unique".into(),
                        ));
                    }
                    main = Some(body);
                }
                MARKER_TEXT | MARKER_BLOB | MARKER_FILE => {
                    if main.is_none() {
                        return Err(CellnetError::Payload("FOBS datum before main".into()));
                    }
                    if body.len() < 16 {
                        return Err(CellnetError::Payload("FOBS datum without uuid".into()));
                    }
                    let id = Uuid::from_slice(&body.split_to(16))
                        .map_err(|e| CellnetError::Payload(e.to_string()))?;
                    let kind = match marker {
                        MARKER_TEXT => DatumKind::Text,
                        MARKER_BLOB => DatumKind::Blob,
                        _ => DatumKind::File,
                    };
                    datums.push(Datum {
                        id,
                        kind,
                        dot,
                        data: body,
                    });
                }
                other => {
                    return Err(CellnetError::Payload(format!(
                        "unknown FOBS section marker {other}"
                    )))
                }
            }
        }
        let main = main.ok_or_else(|| CellnetError::Payload("FOBS without main section".into()))?;
        Ok(Fobs {
            main: MsgpackBody::from_bytes(main),
            datums,
        })
    }

    /// Encode a dynamic value: large `bin`/`str` values become datums (moved, not copied),
    /// the rest becomes the main body.
    pub fn from_value(mut v: Value) -> Fobs {
        let mut datums = Vec::new();
        extract_datums(&mut v, &mut datums);
        let mut w = MsgpackWriter::new();
        w.value(v);
        Fobs {
            main: w.finish(),
            datums,
        }
    }

    /// A container whose main body is pre-encoded msgpack (no datum extraction).
    pub fn from_msgpack(main: MsgpackBody) -> Fobs {
        Fobs {
            main,
            datums: Vec::new(),
        }
    }

    /// Decode into a dynamic value, putting the datums back where their refs are. Refuses
    /// bodies with more than [`msgpack::MAX_VALUE_NODES`] nodes, and a datum named by more
    /// than one `DatumRef` (NVFlare gives every value its own datum): each datum is copied
    /// into the value once at most, so decoding costs no more than the bytes received.
    pub fn to_value(&self) -> Result<Value, CellnetError> {
        let main = self
            .main
            .read_contiguous()
            .map_err(|e| CellnetError::Payload(format!("reading the body's file region: {e}")))?;
        let mut v = msgpack::decode_value(&main, msgpack::MAX_VALUE_NODES)
            .map_err(CellnetError::Payload)?;
        if !self.datums.is_empty() {
            let mut resolved = vec![false; self.datums.len()];
            resolve_datums(&mut v, &self.datums, &mut resolved, 0)?;
        }
        Ok(v)
    }

    /// Total encoded length.
    pub fn encoded_len(&self) -> usize {
        SECTION_HEADER_LEN
            + self.main.len()
            + self
                .datums
                .iter()
                .map(|d| SECTION_HEADER_LEN + 16 + d.data.len())
                .sum::<usize>()
    }

    /// The wire segments (section headers interleaved with the zero-copy bodies).
    pub fn into_segments(self) -> Vec<Segment> {
        let mut out = Vec::with_capacity(2 + self.main.segments().len() + 2 * self.datums.len());
        let mut head = BytesMut::with_capacity(SECTION_HEADER_LEN);
        head.put_u8(MARKER_MAIN);
        head.put_u8(0);
        head.put_u64(self.main.len() as u64);
        out.push(Segment::Bytes(head.freeze()));
        out.extend(self.main.into_segments());
        for d in self.datums {
            let mut head = BytesMut::with_capacity(SECTION_HEADER_LEN + 16);
            head.put_u8(d.kind.marker());
            head.put_u8(d.dot);
            head.put_u64(16 + d.data.len() as u64);
            head.put_slice(d.id.as_bytes());
            out.push(Segment::Bytes(head.freeze()));
            out.push(Segment::Bytes(d.data));
        }
        out
    }
}

fn datum_ref(id: Uuid) -> Value {
    Value::Map(vec![
        (FOBS_TYPE.into(), DATUM_REF_TYPE.into()),
        (
            FOBS_DATA.into(),
            Value::Map(vec![(
                "data".into(),
                Value::Map(vec![
                    ("datum_id".into(), id.to_string().into()),
                    ("unwrap".into(), true.into()),
                ]),
            )]),
        ),
        (FOBS_DC.into(), DATA_CLASS_DECOMPOSER.into()),
    ])
}

fn extract_datums(v: &mut Value, datums: &mut Vec<Datum>) {
    match v {
        Value::Binary(b) if b.len() >= DATUM_THRESHOLD => {
            let id = Uuid::new_v4();
            let data = Bytes::from(std::mem::take(b));
            datums.push(Datum {
                id,
                kind: DatumKind::Blob,
                dot: 0,
                data,
            });
            *v = datum_ref(id);
        }
        Value::String(s) if s.as_bytes().len() >= DATUM_THRESHOLD && s.is_str() => {
            let id = Uuid::new_v4();
            let text = std::mem::replace(s, rmpv::Utf8String::from(""));
            datums.push(Datum {
                id,
                kind: DatumKind::Text,
                dot: 0,
                data: Bytes::from(text.into_bytes()),
            });
            *v = datum_ref(id);
        }
        Value::Array(items) => items.iter_mut().for_each(|i| extract_datums(i, datums)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, v)| extract_datums(v, datums)),
        _ => {}
    }
}

fn map_get<'a>(entries: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// The datum id named by a DatumRef map, if `entries` is one.
fn datum_ref_id(entries: &[(Value, Value)]) -> Option<&str> {
    if map_get(entries, FOBS_TYPE)?.as_str()? != DATUM_REF_TYPE {
        return None;
    }
    let data = map_get(entries, FOBS_DATA)?.as_map()?;
    // DataClassDecomposer nests the fields under "data"; accept the flat form too.
    let fields = map_get(data, "data")
        .and_then(Value::as_map)
        .unwrap_or(data);
    map_get(fields, "datum_id")?.as_str()
}

fn resolve_datums(
    v: &mut Value,
    datums: &[Datum],
    resolved: &mut [bool],
    depth: usize,
) -> Result<(), CellnetError> {
    if depth > msgpack::MAX_DEPTH {
        return Err(CellnetError::Payload("FOBS value nested too deep".into()));
    }
    match v {
        Value::Map(entries) => {
            if let Some(id) = datum_ref_id(entries) {
                let id = Uuid::parse_str(id).map_err(|e| CellnetError::Payload(e.to_string()))?;
                let i = datums
                    .iter()
                    .position(|d| d.id == id)
                    .ok_or_else(|| CellnetError::Payload(format!("missing FOBS datum {id}")))?;
                if std::mem::replace(&mut resolved[i], true) {
                    return Err(CellnetError::Payload(format!(
                        "FOBS datum {id} is referenced more than once (each datum may be referenced once)"
                    )));
                }
                let d = &datums[i];
                *v = match d.kind {
                    DatumKind::Text => Value::String(
                        String::from_utf8(d.data.to_vec())
                            .map_err(|_| CellnetError::Payload("text datum is not UTF-8".into()))?
                            .into(),
                    ),
                    DatumKind::Blob | DatumKind::File => Value::Binary(d.data.to_vec()),
                };
                return Ok(());
            }
            for (_, val) in entries.iter_mut() {
                resolve_datums(val, datums, resolved, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for it in items.iter_mut() {
                resolve_datums(it, datums, resolved, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Concatenate segments into one buffer (tests, small payloads); file regions are read, and
/// one its file no longer holds makes the result empty (no decoder accepts it).
pub fn concat(segments: &[Segment]) -> Bytes {
    crate::msgpack::MsgpackBody::from_parts(segments.to_vec()).to_contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{hex, spec_example};

    #[test]
    fn main_section_matches_capture() {
        // f3-wire.md §7: 64 00 00..10 | {"k":"v","b":bin(01 02),"l":[1,2]}
        let wire =
            hex("64 00 00 00 00 00 00 00 00 10 83 a1 6b a1 76 a1 62 c4 02 01 02 a1 6c 92 01 02");
        let f = Fobs::parse(Bytes::from(wire.clone())).unwrap();
        let v = f.to_value().unwrap();
        let want = Value::Map(vec![
            ("k".into(), "v".into()),
            ("b".into(), Value::Binary(vec![1, 2])),
            ("l".into(), Value::Array(vec![1.into(), 2.into()])),
        ]);
        assert_eq!(v, want);
        assert_eq!(
            &concat(&Fobs::from_value(want).into_segments())[..],
            &wire[..]
        );
    }

    #[test]
    fn spec_example_46_bytes() {
        // §3: {"a":1,"b":b"xy","l":[1,"s"],"d":{"k":None},"f":1.5,"t":True}, 46 bytes
        let v = spec_example();
        let b = concat(&Fobs::from_value(v).into_segments());
        assert_eq!(b.len(), 46);
        assert_eq!(&b[..10], &hex("64 00 00 00 00 00 00 00 00 24")[..]);
    }

    #[test]
    fn datum_threshold_both_directions() {
        let small = vec![1u8; DATUM_THRESHOLD - 1];
        let big = vec![2u8; DATUM_THRESHOLD];
        let v = Value::Map(vec![
            ("small".into(), Value::Binary(small.clone())),
            ("big".into(), Value::Binary(big.clone())),
        ]);
        let f = Fobs::from_value(v.clone());
        assert_eq!(f.datums.len(), 1);
        assert_eq!(f.datums[0].kind, DatumKind::Blob);
        let wire = concat(&f.into_segments());
        // the BLOB section follows the main one: 66 00 <16 + n>
        let parsed = Fobs::parse(wire.clone()).unwrap();
        assert_eq!(parsed.datums.len(), 1);
        let main_len = parsed.main.len();
        let blob_hdr = &wire[SECTION_HEADER_LEN + main_len..SECTION_HEADER_LEN + main_len + 10];
        assert_eq!(blob_hdr[0], 0x66);
        assert_eq!(
            u64::from_be_bytes(blob_hdr[2..10].try_into().unwrap()),
            16 + DATUM_THRESHOLD as u64
        );
        assert_eq!(parsed.to_value().unwrap(), v);
    }

    #[test]
    fn text_datum_decodes() {
        let id = Uuid::new_v4();
        let mut main = Vec::new();
        let body = msgpack::encode_value(Value::Array(vec![datum_ref(id)]));
        main.extend_from_slice(&[MARKER_MAIN, 0]);
        main.extend_from_slice(&(body.len() as u64).to_be_bytes());
        main.extend_from_slice(&body);
        main.extend_from_slice(&[MARKER_TEXT, 0]);
        main.extend_from_slice(&(16u64 + 5).to_be_bytes());
        main.extend_from_slice(id.as_bytes());
        main.extend_from_slice(b"hello");
        let v = Fobs::parse(Bytes::from(main)).unwrap().to_value().unwrap();
        assert_eq!(v, Value::Array(vec!["hello".into()]));
    }

    /// One datum named by many refs would be copied once per ref (100 refs to a 10 MiB
    /// datum: 1 GB from a 10 MiB message): refused at the second ref.
    #[test]
    fn a_datum_referenced_twice_is_refused() {
        let id = Uuid::new_v4();
        let body = msgpack::encode_value(Value::Array(vec![datum_ref(id); 100]));
        let mut w = vec![MARKER_MAIN, 0];
        w.extend_from_slice(&(body.len() as u64).to_be_bytes());
        w.extend_from_slice(&body);
        w.extend_from_slice(&[MARKER_BLOB, 0]);
        w.extend_from_slice(&(16u64 + 1000).to_be_bytes());
        w.extend_from_slice(id.as_bytes());
        w.extend_from_slice(&[7u8; 1000]);
        let e = Fobs::parse(Bytes::from(w)).unwrap().to_value().unwrap_err();
        assert!(e.to_string().contains("referenced more than once"), "{e}");
        // two refs to two datums are fine (what NVFlare sends)
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let body = msgpack::encode_value(Value::Array(vec![datum_ref(a), datum_ref(b)]));
        let mut w = vec![MARKER_MAIN, 0];
        w.extend_from_slice(&(body.len() as u64).to_be_bytes());
        w.extend_from_slice(&body);
        for (id, byte) in [(a, 1u8), (b, 2u8)] {
            w.extend_from_slice(&[MARKER_BLOB, 0]);
            w.extend_from_slice(&(16u64 + 3).to_be_bytes());
            w.extend_from_slice(id.as_bytes());
            w.extend_from_slice(&[byte; 3]);
        }
        let v = Fobs::parse(Bytes::from(w)).unwrap().to_value().unwrap();
        assert_eq!(
            v,
            Value::Array(vec![Value::Binary(vec![1; 3]), Value::Binary(vec![2; 3])])
        );
    }

    #[test]
    fn bad_containers() {
        assert!(Fobs::parse(Bytes::from_static(&[0x64, 0])).is_err());
        assert!(Fobs::parse(Bytes::from(hex("64 00 ff ff ff ff ff ff ff ff 00"))).is_err());
        assert!(Fobs::parse(Bytes::from(hex("65 00 00 00 00 00 00 00 00 00"))).is_err());
        assert!(Fobs::parse(Bytes::from(hex("63 00 00 00 00 00 00 00 00 00"))).is_err());
        assert!(Fobs::parse(Bytes::new()).is_err());
        // dangling datum ref
        let body = msgpack::encode_value(datum_ref(Uuid::new_v4()));
        let mut w = vec![MARKER_MAIN, 0];
        w.extend_from_slice(&(body.len() as u64).to_be_bytes());
        w.extend_from_slice(&body);
        w.extend_from_slice(&[MARKER_BLOB, 0]);
        w.extend_from_slice(&16u64.to_be_bytes());
        w.extend_from_slice(Uuid::new_v4().as_bytes());
        assert!(Fobs::parse(Bytes::from(w)).unwrap().to_value().is_err());
    }
}
