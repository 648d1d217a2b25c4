//! What a sender answers a receiver (the receiver side): replies to pulls, as cellnet payloads
//! read by the download loop (`main_body`; an error reply's text and typed refusal) and fed to
//! the receiver engine (`Download::reply_payload`, which decodes the reply body zero-copy) with
//! a window of requests in flight, and the chunks it accepts handed to a real consumer: bytes in memory, a
//! file on disk, a tensor dict (safetensors items) or a NumPy array dict (`.npz` items).
//!
//! Input: a selector byte (consumer, window, confirm), then records (see
//! `ferry_fuzz::records`); each record answers one outstanding request: its first byte picks
//! the request, the return code and how much time passes, the rest is the payload.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_cellnet::{Headers, Message, Payload, ReturnCode as WireCode};
use ferry_core::refusal::REFUSAL_HEADER;
use ferry_core::{Action, Consumer, Download, DownloadConfig, RefId, RequestId, ReturnCode};
use ferry_fuzz::records::Records;
use ferry_fuzz::{within, Limit, DECODER_FIXED, VALUE_TREE_PER_BYTE};
use ferry_objects::{BytesConsumer, FileConsumer, NpzDictConsumer, TensorDictConsumer};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // a FOBS payload with datum sections is folded back through a value tree (`main_body`); the
    // chunk kept by the consumer and a reorder buffer of copies
    per_byte: VALUE_TREE_PER_BYTE + 4,
    fixed: DECODER_FIXED + 64 * 1024,
};

/// Return codes a reply may carry (mostly `ok`).
const CODES: [&str; 8] = [
    "ok",
    "ok",
    "ok",
    "ok",
    "timeout",
    "comm_error",
    "invalid_request",
    "no_such_code",
];

/// Where the file consumer writes (one directory per process, removed when it exits normally).
fn out_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

fn consumer(kind: u8) -> Box<dyn Consumer> {
    match kind % 4 {
        0 => Box::new(BytesConsumer::with_max_size(1 << 20)),
        1 => Box::new(
            FileConsumer::builder(out_dir(), "object.bin")
                .overwrite(true)
                .max_size(1 << 20)
                .open()
                .expect("file consumer"),
        ),
        2 => Box::new(TensorDictConsumer::new()),
        _ => Box::new(NpzDictConsumer::new()),
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = out_dir();
    let t0 = Instant::now();
    let mut rd = Records::new(data);
    let sel = rd.byte();
    let mut c = consumer(sel);
    let cfg = DownloadConfig {
        window: 1 + usize::from((sel >> 2) & 7),
        confirm_capable: sel & 0x20 == 0,
        ..DownloadConfig::default()
    };
    within(LIMIT, data.len(), || {
        let mut dl = Download::new("server", RefId::new("Rfuzz"), cfg, c.needs_order(), t0)
            .expect("download");
        let mut now = t0;
        let mut outstanding: Vec<RequestId> = Vec::new();
        let mut aborted = false;
        loop {
            let mut finished = false;
            while let Some(action) = dl.poll_action() {
                match action {
                    Action::Send { id, .. } => outstanding.push(id),
                    Action::CheckPlan(plan) => dl.plan_result(c.plan_received(&plan), now),
                    Action::Consume { seq, state, data } => {
                        dl.consumed(seq, c.consume("Rfuzz", &state, data), now)
                    }
                    Action::Complete => dl.completion_result(c.completed("Rfuzz"), now),
                    Action::Finished(r) => {
                        if let Err(e) = r {
                            c.failed("Rfuzz", &e.to_string());
                        }
                        finished = true;
                    }
                    Action::SendConfirm(_) | Action::SendCancel(_) | Action::Progress(_) => {}
                }
            }
            if finished || aborted {
                break;
            }
            let Some(rec) = rd.next_record() else {
                dl.abort(now);
                aborted = true;
                continue;
            };
            let (&pick, body) = rec.split_first().unwrap_or((&0, &[]));
            now += Duration::from_secs(u64::from(pick >> 6) * 300);
            if dl.poll_timeout().is_some_and(|t| t <= now) {
                dl.handle_timeout(now);
            }
            if outstanding.is_empty() {
                continue;
            }
            let id = outstanding.remove(usize::from(pick & 7) % outstanding.len());
            let wire = WireCode::from(CODES[usize::from(pick >> 3) & 7]);
            let rc = ferry::fuzzing::return_code(&wire);
            if rc != ReturnCode::Ok {
                // an error reply: `REFUSAL NUL TEXT` become its refusal and cn__error headers
                let mut parts = body.splitn(2, |b| *b == 0);
                let refusal = String::from_utf8_lossy(parts.next().unwrap_or_default());
                let text = String::from_utf8_lossy(parts.next().unwrap_or_default());
                let msg = Message::error(wire, text.as_ref())
                    .with_header(REFUSAL_HEADER, refusal.as_ref());
                let refusal = ferry::fuzzing::refusal(&msg);
                dl.reply_error(id, rc, msg.error_text(), refusal, now);
                continue;
            }
            let msg = match Payload::from_wire(Some("fobs"), Bytes::copy_from_slice(body)) {
                Ok(payload) => Message {
                    headers: Headers::new(),
                    payload,
                },
                Err(_) => {
                    dl.reply_payload(id, rc, None, now);
                    continue;
                }
            };
            // as the download loop does: the engine decodes the body (zero-copy)
            match ferry::fuzzing::main_body(&msg) {
                Ok(body) => dl.reply_payload(id, rc, Some(&body), now),
                Err(_) => dl.reply_payload(id, rc, None, now),
            }
        }
        drop(dl);
    });
});
