//! The bytes a peer writes on a connection: F3 prefixes and frames split by ferry-cellnet's
//! `FrameDecoder` under the default limits, then each frame's header map and (DATA frames) its
//! payload decoded the way a cell does it (`Headers::decode`, `Payload::from_wire`, and the
//! value a handler would read).
#![no_main]

use bytes::BytesMut;
use ferry_cellnet::frame::{FrameDecoder, FrameType, Prefix};
use ferry_cellnet::headers::keys;
use ferry_cellnet::{Headers, Limits, Message, Payload};
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    per_byte: VALUE_TREE_PER_BYTE + 1,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    within(LIMIT, data.len(), || {
        let limits = Limits::default();
        let decoder = FrameDecoder::new(limits.max_frame_size, limits.max_header_size);
        let mut buf = BytesMut::from(data);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let raw = frame.prefix.to_bytes();
                    assert_eq!(Prefix::parse(&raw), frame.prefix, "prefix round trip");
                    assert_eq!(
                        frame.prefix.length as usize,
                        16 + frame.headers.len() + frame.payload.len()
                    );
                    let Ok(headers) = Headers::decode(&frame.headers) else {
                        continue;
                    };
                    if frame.frame_type() != Some(FrameType::Data) {
                        continue;
                    }
                    let enc = headers.get_str(keys::PAYLOAD_ENCODING).map(str::to_owned);
                    if let Ok(payload) = Payload::from_wire(enc.as_deref(), frame.payload) {
                        let msg = Message { headers, payload };
                        let _ = msg.return_code();
                        let _ = msg.value();
                    }
                }
                Ok(None) => break,
                Err(e) if e.is_fatal() => {
                    // the connection would be closed: nothing was consumed
                    assert!(!buf.is_empty());
                    break;
                }
                Err(_) => {}
            }
        }
    })
});
