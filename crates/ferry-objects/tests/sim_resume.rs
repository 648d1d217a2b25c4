//! A file download that failed part-way resumes from the part the receiver kept, over
//! ferry-core's simulated network (lossy, on virtual time), and verifies the whole file.

mod common;

use common::pattern;
use common::sim::{dir_entries, dirs, download_cfg, hash_file, lossy, StateMatcher};
use ferry_core::testing::Sim;
use ferry_core::{
    DownloadConfig, Downloadable, ProduceError, Produced, State, TransferPlan, TxConfig,
};
use ferry_objects::{FileConsumer, FileObject};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts the bytes served and answers `error` to requests whose state matches `fail_at`.
struct MeteredLink<D: Downloadable> {
    inner: D,
    fail_at: Option<StateMatcher>,
    served: AtomicU64,
}

impl<D: Downloadable> Downloadable for MeteredLink<D> {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        if let (Some(f), Some(s)) = (&self.fail_at, state) {
            if f(s) {
                return Ok(Produced::Error {
                    reason: "source went away".into(),
                });
            }
        }
        let out = self.inner.produce(state, requester)?;
        if let Produced::Data { data, .. } = &out {
            self.served.fetch_add(data.byte_len(), Ordering::Relaxed);
        }
        Ok(out)
    }
    fn plan(&self) -> Option<TransferPlan> {
        self.inner.plan()
    }
    fn release(&self) {
        self.inner.release()
    }
}

#[test]
fn a_failed_file_download_resumes_from_its_kept_part_and_verifies_the_whole() {
    let d = dirs();
    let src = d.src.join("big.bin");
    let size = (8 << 20) + 777;
    std::fs::write(&src, pattern(size, 8)).unwrap();
    let want = hash_file(&src);
    let chunk = 256 << 10;
    let open = || {
        FileObject::builder(&src)
            .chunk_size(chunk)
            .digest(true)
            .open()
            .unwrap()
    };
    let run = |obj: Arc<dyn Downloadable>, cfg: DownloadConfig| {
        let mut sim = Sim::new(lossy(31), Instant::now());
        let now = sim.now();
        let tx = sim
            .service()
            .new_transaction(
                TxConfig::new(Duration::from_secs(300)).with_num_receivers(1),
                now,
            )
            .unwrap();
        let rid = sim.service().add_object(&tx, obj, None, now).unwrap();
        let r = sim.add_receiver("site-1");
        let dir = d.dst[0].clone();
        let h = sim.start_download(r, rid, cfg, move || {
            Box::new(
                FileConsumer::builder(&dir, "big.bin")
                    .keep_part_for_resume(true)
                    .open()
                    .unwrap(),
            )
        });
        sim.run_for(Duration::from_secs(24 * 3600));
        sim.result(h).cloned().expect("finished")
    };

    // Attempt 1: the source fails at 5 MiB.
    let first = Arc::new(MeteredLink {
        inner: open(),
        fail_at: Some(Box::new(|s| {
            s.get_u64("received_bytes") == Ok(Some(5 << 20))
        })),
        served: AtomicU64::new(0),
    });
    let e = run(first, download_cfg()).unwrap_err();
    assert!(e.to_string().contains("producer error"), "{e}");
    assert_eq!(
        dir_entries(&d.dst[0]),
        vec!["big.bin.part", "big.bin.part.ferry"]
    );

    // Attempt 2: a new consumer resumes from the kept prefix.
    let probe = FileConsumer::builder(&d.dst[0], "big.bin")
        .keep_part_for_resume(true)
        .open()
        .unwrap();
    let resume = probe.resume_state().expect("a prefix was kept");
    let kept = resume.get_u64("received_bytes").unwrap().unwrap();
    assert!(kept > 0 && kept <= 5 << 20 && kept % chunk == 0, "{kept}");
    drop(probe); // keeps the part (keep_part_for_resume)
    let second = Arc::new(MeteredLink {
        inner: open(),
        fail_at: None,
        served: AtomicU64::new(0),
    });
    let cfg = DownloadConfig {
        initial_state: Some(resume),
        ..download_cfg()
    };
    run(second.clone(), cfg).unwrap();
    assert_eq!(dir_entries(&d.dst[0]), vec!["big.bin"]);
    assert_eq!(hash_file(&d.dst[0].join("big.bin")), want);
    let served = second.served.load(Ordering::Relaxed);
    assert!(
        served <= size as u64 - kept + (4 << 20),
        "resumed, not restarted: {served}"
    );
}
