//! What a receiver sends the download service (the sender side): topic-A requests (pull,
//! confirm, cancel) and topic-B source-failure notices, as cellnet payloads read by the
//! service's `request_body` (refused unread above 64 KiB), then handed to the producer engine
//! (`Service::handle_payload`), which validates them against a live transaction of four real
//! objects (bytes, a file, a tensor dict, an array dict) and serves the pulls it accepts
//! (`PullTicket::produce`).
//!
//! Input: a selector byte, then records (see `ferry_fuzz::records`); each record is one
//! message: its first byte picks the topic, the payload encoding and the receiver, the rest is
//! the payload.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_cellnet::{Headers, Message, Payload};
use ferry_core::{Handled, RefId, Service, ServiceConfig, SourceFailureTable, TxConfig};
use ferry_fuzz::records::Records;
use ferry_fuzz::{objects, within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    per_byte: VALUE_TREE_PER_BYTE + 2,
    // a served chunk (at most 1 KiB here), the engine's per-receiver slots and events
    fixed: DECODER_FIXED + 64 * 1024,
};

const RECEIVERS: [&str; 3] = ["site-1", "site-2", "site-1.job"];
const ENCODINGS: [Option<&str>; 4] = [Some("fobs"), Some("bytes"), Some("none"), None];

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut svc = Service::new(ServiceConfig::default());
    let mut tx_cfg = TxConfig::new(Duration::from_secs(60));
    if data.first().is_some_and(|b| b & 1 == 1) {
        tx_cfg = tx_cfg.with_receiver_ids(["site-1", "site-2"]);
    } else {
        tx_cfg = tx_cfg.with_num_receivers(2);
    }
    let tx = svc.new_transaction(tx_cfg, t0).expect("transaction");
    for (rid, obj) in objects::served() {
        svc.add_object(&tx, obj, Some(RefId::new(rid)), t0)
            .expect("add object");
    }
    let mut failures = SourceFailureTable::new();
    within(LIMIT, data.len(), || {
        let mut rd = Records::new(data);
        rd.byte();
        let mut now = t0;
        while let Some(rec) = rd.next_record() {
            let Some((&sel, body)) = rec.split_first() else {
                continue;
            };
            let receiver = RECEIVERS[(sel >> 3) as usize % RECEIVERS.len()];
            let encoding = ENCODINGS[(sel >> 1) as usize & 3];
            now += Duration::from_millis(u64::from(sel >> 5) * 250);
            let Ok(payload) = Payload::from_wire(encoding, Bytes::copy_from_slice(body)) else {
                continue;
            };
            let msg = Message {
                headers: Headers::new(),
                payload,
            };
            let Ok(body) = ferry::fuzzing::request_body(&msg) else {
                continue;
            };
            if sel & 1 == 0 {
                match svc.handle_payload(receiver, &body, now) {
                    Handled::Reply(_) => {}
                    Handled::Pull(ticket) => {
                        let produced = ticket.produce();
                        let _ = svc.finish_pull(ticket, produced, now);
                    }
                }
            } else {
                let _ = failures.handle_payload(receiver, &body, now);
            }
            if svc.poll_timeout().is_some_and(|t| t <= now) {
                svc.handle_timeout(now);
            }
            while svc.poll_event().is_some() {}
        }
    });
});
