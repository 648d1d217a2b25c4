//! ferry-objects over ferry-core's simulated network (`ferry_core::testing::Sim`): real
//! producer and receiver engines, real wire encoding, seeded latency / loss / duplication /
//! reordering on virtual time, real files on disk.

mod common;

use bytes::Bytes;
use common::pattern;
use common::sim::{
    dir_entries, dirs, download_cfg, hash_file, lossy, names, StateMatcher, RECEIVERS,
};
use ferry_core::testing::{Sim, SimConfig};
use ferry_core::{
    ChunkData, Consumer, DoneStatus, DownloadStatus, Downloadable, ProduceError, Produced, RefId,
    State, TransferPlan, TxConfig, TxId,
};
use ferry_objects::tensors::Dtype;
use ferry_objects::{
    CacheOptions, ChunkPacking, ExpectedReceivers, FileConsumer, FileObject,
    SafetensorsFileConsumer, Tensor, TensorDict, TensorDictConsumer, TensorDictObject,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wraps an object like a faulty link: for requests from `victim` only, every reply whose state
/// matches `target` is damaged (one byte of a file chunk flipped, or the chunk's first item
/// truncated) — on retries too, so the damage always reaches the receiver.
struct CorruptingLink<D: Downloadable> {
    inner: Arc<D>,
    victim: String,
    target: StateMatcher,
    hits: AtomicU64,
}

impl<D: Downloadable> Downloadable for CorruptingLink<D> {
    fn produce(&self, state: Option<&State>, requester: &str) -> Result<Produced, ProduceError> {
        let out = self.inner.produce(state, requester)?;
        if requester != self.victim {
            return Ok(out);
        }
        let Produced::Data { data, state } = out else {
            return Ok(out);
        };
        if !(self.target)(&state) {
            return Ok(Produced::Data { data, state });
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        let data = match data
            .into_memory()
            .map_err(|e| ProduceError(e.to_string()))?
        {
            ChunkData::Bytes(b) => {
                let mut v = b.to_vec();
                let mid = v.len() / 2;
                v[mid] ^= 0x01;
                ChunkData::Bytes(Bytes::from(v))
            }
            ChunkData::Items(mut items) => {
                let first = items[0].slice(..items[0].len() - 1);
                items[0] = first;
                ChunkData::Items(items)
            }
            ChunkData::ItemParts(_) | ChunkData::File(_) => unreachable!("in memory above"),
        };
        Ok(Produced::Data { data, state })
    }
    fn plan(&self) -> Option<TransferPlan> {
        self.inner.plan()
    }
    fn set_transaction(&self, tx_id: &TxId, ref_id: &RefId, receivers: &ExpectedReceivers) {
        self.inner.set_transaction(tx_id, ref_id, receivers)
    }
    fn downloaded_to_one(&self, receiver: &str, status: DownloadStatus) {
        self.inner.downloaded_to_one(receiver, status)
    }
    fn downloaded_to_all(&self) {
        self.inner.downloaded_to_all()
    }
    fn transaction_done(&self, tx_id: &TxId, status: DoneStatus) {
        self.inner.transaction_done(tx_id, status)
    }
    fn release(&self) {
        self.inner.release()
    }
}

/// Run one object to 8 receivers; `consumer(i, dir)` builds receiver i's consumer.
fn run_to_eight(
    cfg: SimConfig,
    tx: TxConfig,
    obj: Arc<dyn Downloadable>,
    mut consumer: impl FnMut(usize) -> Box<dyn Consumer>,
) -> (Sim, Vec<Result<(), String>>) {
    let mut sim = Sim::new(cfg, Instant::now());
    let now = sim.now();
    let tx = sim.service().new_transaction(tx, now).unwrap();
    let rid = sim.service().add_object(&tx, obj, None, now).unwrap();
    let mut handles = Vec::new();
    for (i, name) in names().iter().enumerate() {
        let r = sim.add_receiver(name);
        if i % 3 == 2 {
            sim.set_slowness(r, 4);
        }
        let mut first = Some(consumer(i));
        let h = sim.start_download(r, rid.clone(), download_cfg(), move || {
            first.take().expect("no receiver restarts in these tests")
        });
        handles.push(h);
    }
    sim.run_for(Duration::from_secs(24 * 3600));
    let results = handles
        .iter()
        .map(|h| match sim.result(*h) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("unfinished".into()),
        })
        .collect();
    (sim, results)
}

#[test]
fn file_of_64_mib_reaches_8_receivers_byte_identical() {
    let d = dirs();
    let src = d.src.join("model.bin");
    // 64 MiB + an odd tail so the last chunk is short
    std::fs::write(&src, pattern((64 << 20) + 12_345, 64)).unwrap();
    let want = hash_file(&src);
    let obj = Arc::new(FileObject::builder(&src).digest(true).open().unwrap());
    assert_eq!(obj.digest().unwrap(), want.to_hex().as_str());
    let dst = d.dst.clone();
    let (sim, results) = run_to_eight(
        lossy(11),
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(RECEIVERS),
        obj,
        |i| Box::new(FileConsumer::create(&dst[i], "model.bin").unwrap()),
    );
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    for dir in &d.dst {
        assert_eq!(dir_entries(dir), vec!["model.bin"], "no part file left");
        assert_eq!(hash_file(&dir.join("model.bin")), want);
    }
    assert!(sim.outcomes()[0].completed(), "{:?}", sim.outcomes());
    let st = sim.stats();
    assert!(
        st.lost > 0 && st.duplicated > 0,
        "the network was faulty: {st:?}"
    );
}

#[test]
fn corrupted_file_chunk_fails_only_that_receiver_and_leaves_nothing() {
    let d = dirs();
    let src = d.src.join("data.bin");
    std::fs::write(&src, pattern(3 << 20, 3)).unwrap();
    let want = hash_file(&src);
    let file = Arc::new(
        FileObject::builder(&src)
            .chunk_size(256 << 10)
            .digest(true)
            .open()
            .unwrap(),
    );
    let obj = Arc::new(CorruptingLink {
        inner: file,
        victim: "site-3".into(),
        // the sixth chunk: it ends at 6 × 256 KiB
        target: Box::new(|s| s.get_u64("received_bytes") == Ok(Some(6 * (256 << 10)))),
        hits: AtomicU64::new(0),
    });
    let dst = d.dst.clone();
    let (sim, results) = run_to_eight(
        lossy(12),
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(RECEIVERS),
        obj,
        |i| Box::new(FileConsumer::create(&dst[i], "data.bin").unwrap()),
    );
    for (i, r) in results.iter().enumerate() {
        if i == 2 {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains("digest mismatch"), "{e}");
            assert!(
                dir_entries(&d.dst[i]).is_empty(),
                "nothing at the final path, no part"
            );
        } else {
            assert!(r.is_ok(), "receiver {i}: {r:?}");
            assert_eq!(hash_file(&d.dst[i].join("data.bin")), want);
        }
    }
    assert!(!sim.outcomes()[0].completed());
}

/// ~40 tensors of mixed dtypes and sizes, with two alias groups.
fn model() -> TensorDict {
    let mut d = TensorDict::new();
    for i in 0..36usize {
        let (dtype, shape) = match i % 4 {
            0 => (Dtype::F32, vec![64, 16 + i]),
            1 => (Dtype::BF16, vec![32 + i]),
            2 => (Dtype::I64, vec![3, 5]),
            _ => (Dtype::U8, vec![1000 + 37 * i]),
        };
        let len = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        let t = Tensor::new(dtype, shape, Bytes::from(pattern(len, i as u64))).unwrap();
        d.insert(format!("layer.{i}"), t).unwrap();
    }
    let emb = Tensor::new(
        Dtype::F16,
        vec![128, 64],
        Bytes::from(pattern(128 * 64 * 2, 99)),
    )
    .unwrap();
    d.insert("embed.weight", emb.clone()).unwrap();
    d.insert("lm_head.weight", emb).unwrap();
    let norm = Tensor::new(Dtype::F32, vec![64], Bytes::from(pattern(256, 98))).unwrap();
    d.insert("norm.a", norm.clone()).unwrap();
    d.insert("norm.b", norm.clone()).unwrap();
    d.insert("norm.c", norm).unwrap();
    d
}

/// Half of the receivers rebuild in memory, half on disk; returns what each got.
fn tensor_consumers(
    dirs: &[PathBuf],
) -> (
    impl FnMut(usize) -> Box<dyn Consumer>,
    Vec<ferry_objects::Delivery<TensorDict>>,
) {
    let mut slots: Vec<Option<TensorDictConsumer>> = (0..RECEIVERS)
        .map(|_| Some(TensorDictConsumer::new()))
        .collect();
    let handles: Vec<_> = slots
        .iter()
        .map(|c| c.as_ref().unwrap().delivery())
        .collect();
    let dirs = dirs.to_vec();
    let make = move |i: usize| -> Box<dyn Consumer> {
        if i % 2 == 0 {
            Box::new(slots[i].take().unwrap())
        } else {
            Box::new(SafetensorsFileConsumer::create(&dirs[i], "model.safetensors").unwrap())
        }
    };
    (make, handles)
}

fn check_tensor_results(
    dict: &TensorDict,
    dirs: &[PathBuf],
    got: &[ferry_objects::Delivery<TensorDict>],
) {
    for i in 0..RECEIVERS {
        let rebuilt = if i % 2 == 0 {
            got[i].take().expect("memory consumer delivered")
        } else {
            assert_eq!(dir_entries(&dirs[i]), vec!["model.safetensors"]);
            TensorDict::load_safetensors(dirs[i].join("model.safetensors")).unwrap()
        };
        assert_eq!(&rebuilt, dict, "receiver {i}");
    }
}

#[test]
fn tensor_dict_reaches_8_receivers_and_each_item_is_produced_once() {
    let d = dirs();
    let dict = model();
    let obj = Arc::new(
        TensorDictObject::from_tensors(
            dict.clone(),
            CacheOptions::default().with_receivers(ExpectedReceivers::Count(RECEIVERS)),
        )
        .unwrap(),
    );
    let items = obj.item_count();
    assert_eq!(items, 36 + 2, "aliases travel once");
    let (make, got) = tensor_consumers(&d.dst);
    // duplication and reordering, no loss: a lost reply to a pipelined request may cost one
    // re-production (see `lossy_network_costs_at_most_one_production_per_lost_message`)
    let cfg = SimConfig {
        loss: 0.0,
        ..lossy(21)
    };
    let (sim, results) = run_to_eight(
        cfg,
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(RECEIVERS),
        obj.clone(),
        make,
    );
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    check_tensor_results(&dict, &d.dst, &got);
    let st = obj.stats();
    assert_eq!(
        st.productions, items,
        "each item produced exactly once: {st:?}"
    );
    assert_eq!(
        st.retired_items, items,
        "every item acknowledged by all 8: {st:?}"
    );
    assert_eq!((st.cached_items, st.cached_bytes), (0, 0), "{st:?}");
    assert!(sim.outcomes()[0].completed());
}

#[test]
fn identity_mode_and_nvflare_style_packing_work_too() {
    let d = dirs();
    let dict = model();
    let ids = names();
    let obj = Arc::new(
        TensorDictObject::from_tensors(
            dict.clone(),
            CacheOptions::default()
                .with_receivers(ExpectedReceivers::Ids(ids.clone()))
                .with_packing(ChunkPacking::MaxBytes(64 << 10)),
        )
        .unwrap(),
    );
    assert!(
        obj.plan().is_none(),
        "stop-and-wait, as with NVFlare receivers"
    );
    let (make, got) = tensor_consumers(&d.dst);
    let (sim, results) = run_to_eight(
        lossy(22),
        TxConfig::new(Duration::from_secs(300)).with_receiver_ids(ids),
        obj.clone(),
        make,
    );
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    check_tensor_results(&dict, &d.dst, &got);
    let st = obj.stats();
    assert_eq!(st.productions, obj.item_count(), "{st:?}");
    assert!(sim.outcomes()[0].completed());
}

#[test]
fn cache_budget_holds_with_slow_receivers() {
    let d = dirs();
    let dict = model();
    let budget = 48 << 10;
    let obj = Arc::new(
        TensorDictObject::from_tensors(
            dict.clone(),
            CacheOptions::default()
                .with_receivers(ExpectedReceivers::Count(RECEIVERS))
                .with_budget(budget),
        )
        .unwrap(),
    );
    let (make, got) = tensor_consumers(&d.dst);
    let (_sim, results) = run_to_eight(
        lossy(23),
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(RECEIVERS),
        obj.clone(),
        make,
    );
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    check_tensor_results(&dict, &d.dst, &got);
    let st = obj.stats();
    assert!(st.peak_bytes <= budget, "cache exceeded its budget: {st:?}");
    assert!(st.peak_bytes > 0, "the cache was used: {st:?}");
    assert!(
        st.productions > obj.item_count(),
        "a budget this small forces re-production: {st:?}"
    );
    assert_eq!(st.cached_bytes, 0, "{st:?}");
}

#[test]
fn truncated_tensor_item_fails_that_receiver_with_the_item_named() {
    let d = dirs();
    let dict = model();
    let inner = Arc::new(
        TensorDictObject::from_tensors(
            dict.clone(),
            CacheOptions::default().with_receivers(ExpectedReceivers::Count(RECEIVERS)),
        )
        .unwrap(),
    );
    let obj = Arc::new(CorruptingLink {
        inner,
        victim: "site-2".into(),
        target: Box::new(|s| s.get_u64("start") == Ok(Some(7))),
        hits: AtomicU64::new(0),
    });
    let (make, got) = tensor_consumers(&d.dst);
    let (_sim, results) = run_to_eight(
        lossy(24),
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(RECEIVERS),
        obj,
        make,
    );
    let e = results[1].as_ref().unwrap_err();
    assert!(
        e.contains("item 7") && e.contains("malformed safetensors"),
        "{e}"
    );
    assert!(dir_entries(&d.dst[1]).is_empty());
    for (i, r) in results.iter().enumerate() {
        if i != 1 {
            assert!(r.is_ok(), "receiver {i}: {r:?}");
        }
    }
    let _ = got;
}

#[test]
fn lossy_network_costs_at_most_one_production_per_lost_message() {
    let d = dirs();
    let dict = model();
    let obj = Arc::new(
        TensorDictObject::from_tensors(
            dict.clone(),
            CacheOptions::default().with_receivers(ExpectedReceivers::Count(RECEIVERS)),
        )
        .unwrap(),
    );
    let (make, got) = tensor_consumers(&d.dst);
    let cfg = SimConfig {
        loss: 0.03,
        ..lossy(25)
    };
    let (sim, results) = run_to_eight(
        cfg,
        TxConfig::new(Duration::from_secs(300)).with_num_receivers(RECEIVERS),
        obj.clone(),
        make,
    );
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    check_tensor_results(&dict, &d.dst, &got);
    let st = obj.stats();
    let lost = sim.stats().lost;
    assert!(lost > 0, "{:?}", sim.stats());
    assert!(
        st.productions <= obj.item_count() + lost,
        "{st:?}, {lost} messages lost"
    );
    assert_eq!(st.retired_items, obj.item_count(), "{st:?}");
}
