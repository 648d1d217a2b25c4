//! A sender whose link is capped (`ferry serve --limit-rate`) on virtual time: the receivers'
//! windows stay full, nothing times out while the sender keeps answering, and the transfer
//! finishes at the cap's pace, for one receiver or several sharing the cap.

use ferry_core::testing::{BytesObject, MemorySink, Sim, SimConfig};
use ferry_core::{DownloadConfig, DownloadFailure, TxConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const S: Duration = Duration::from_secs(1);

/// `receivers` receivers pull one `chunks`-chunk object of 1 KiB chunks from a sender capped
/// at 1 KiB/s (one chunk per second for all of them), with a 5 s silence timeout and a window
/// of 8. Returns (virtual seconds until every download finished, pulls produced).
fn paced_run(receivers: usize, chunks: usize) -> (f64, u64) {
    let t0 = Instant::now();
    let cfg = SimConfig {
        seed: 11,
        pace: Some(1024),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg, t0);
    let tx = sim
        .service()
        .new_transaction(TxConfig::new(600 * S).with_num_receivers(receivers), t0)
        .unwrap();
    let data: Vec<u8> = (0..chunks * 1024).map(|i| (i % 251) as u8).collect();
    let rid = sim
        .service()
        .add_object(
            &tx,
            Arc::new(BytesObject::new(data.clone(), 1024)),
            None,
            t0,
        )
        .unwrap();
    let dcfg = DownloadConfig {
        per_request_timeout: 5 * S,
        window: 8,
        ..DownloadConfig::default()
    };
    let mut runs = Vec::new();
    for i in 0..receivers {
        let r = sim.add_receiver(&format!("site-{i}"));
        let (sink, got) = MemorySink::bytes();
        let mut sink = Some(sink);
        let h = sim.start_download(r, rid.clone(), dcfg.clone(), move || {
            Box::new(sink.take().unwrap_or_else(|| MemorySink::bytes().0))
        });
        runs.push((h, got));
    }
    sim.run_for(3600 * S);
    let mut last = t0;
    for (h, got) in &runs {
        assert_eq!(sim.result(*h), Some(&Ok(())), "receiver {}", h.receiver);
        assert_eq!(got.lock().unwrap().bytes, data);
        last = last.max(sim.finished_at(*h).unwrap());
    }
    assert!(sim.outcomes()[0].completed());
    ((last - t0).as_secs_f64(), sim.stats().produced)
}

#[test]
fn a_capped_sender_fills_one_receivers_window_without_timeouts() {
    // 8 requests queued at one chunk per second: the last waits 8 s, past the 5 s timeout.
    let (secs, produced) = paced_run(1, 40);
    assert_eq!(
        produced, 41,
        "40 chunks + eof, none produced twice (no retry)"
    );
    assert!(
        (40.0..42.0).contains(&secs),
        "finishes at the cap's pace: {secs}s"
    );
}

#[test]
fn receivers_sharing_a_capped_sender_all_finish_at_their_share_of_the_pace() {
    // 3 receivers x 8 requests queued: each hears from the sender every ~3 s (< 5 s timeout)
    // while its own requests wait up to 24 s.
    let (secs, produced) = paced_run(3, 30);
    assert_eq!(produced, 3 * 31, "no retry");
    assert!((90.0..93.0).contains(&secs), "90 chunks at 1/s: {secs}s");
}

#[test]
fn a_sender_silent_for_the_timeout_still_fails_the_download() {
    // Every message is lost: the source never answers and the download fails after the
    // timeout and its retries (4 attempts), however the window was filled.
    let t0 = Instant::now();
    let cfg = SimConfig {
        seed: 3,
        loss: 1.0,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg, t0);
    let tx = sim
        .service()
        .new_transaction(TxConfig::new(600 * S).with_num_receivers(1), t0)
        .unwrap();
    let rid = sim
        .service()
        .add_object(
            &tx,
            Arc::new(BytesObject::new(vec![7u8; 4096], 1024)),
            None,
            t0,
        )
        .unwrap();
    let r = sim.add_receiver("site-1");
    let (sink, _) = MemorySink::bytes();
    let mut sink = Some(sink);
    let dcfg = DownloadConfig {
        per_request_timeout: 5 * S,
        ..DownloadConfig::default()
    };
    let h = sim.start_download(r, rid, dcfg, move || {
        Box::new(sink.take().unwrap_or_else(|| MemorySink::bytes().0))
    });
    sim.run_for(3600 * S);
    assert!(matches!(
        sim.result(h),
        Some(Err(DownloadFailure::RetriesExhausted { attempts: 4, .. }))
    ));
    // 4 silences of 5 s and backoffs of 2 + 4 + 8 s
    let took = sim.finished_at(h).unwrap() - t0;
    assert_eq!(took.as_secs(), 34, "{took:?}");
}
