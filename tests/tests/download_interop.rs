//! Ferry's download service against NVFlare 2.9's (`tests/py/nv_download_*.py`, real Python
//! cells and NVFlare's own `ObjectDownloader`, `download_file`, `add_arrays`,
//! `download_arrays`).
//!
//! 1. A Ferry receiver pulls a file and a numpy dict from a Python sender; the Python
//!    transaction's outcome is COMPLETED (Ferry confirmed both refs).
//! 2. Python receivers pull a file and numpy dicts (both chunk packings) from a Ferry sender;
//!    the Ferry outcomes are COMPLETED.
//! 3. NumPy itself loads the `.npz` items Ferry produces.
//!
//! Needs the interop interpreter (`cargo xtask interop-setup`, or `FERRY_INTEROP_PYTHON`);
//! without it every test here fails with that instruction.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry::objects::numpy::encode_npz;
use ferry::objects::{
    CacheOptions, ChunkPacking, ExpectedReceivers, NdArray, NdArrayDict, NpzDictConsumer,
    NpzDictObject,
};
use ferry::prelude::*;
use ferry_tests::e2e::{assert_released, receiver, sender, statuses, GatedObject};
use ferry_tests::{args, init_tracing, pattern_bytes, python, sha256_file_hex, sha256_hex, PyPeer};
use serde_json::{json, Value};

/// Overall deadline handed to every Python peer.
const PEER_TIMEOUT: &str = "150";
/// Generous bound for outcomes on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(90);

fn opts() -> DownloadOptions {
    DownloadOptions {
        per_request_timeout: Duration::from_secs(30),
        ..DownloadOptions::default()
    }
}

/// `{name: {"dtype", "shape", "sha256"}}` as the Python peers report arrays.
fn checksums(dict: &NdArrayDict) -> Value {
    let mut m = serde_json::Map::new();
    for (name, a) in dict.iter() {
        m.insert(
            name.to_string(),
            json!({
                "dtype": a.dtype(),
                "shape": a.shape(),
                "sha256": sha256_hex(a.data()).unwrap(),
            }),
        );
    }
    Value::Object(m)
}

/// Compare reported array checksums key by key (a readable failure message).
fn assert_same_arrays(got: &Value, want: &Value) {
    let (g, w) = (got.as_object().unwrap(), want.as_object().unwrap());
    for (k, v) in w {
        assert_eq!(g.get(k), Some(v), "array {k:?}");
    }
    let extra: Vec<&String> = g.keys().filter(|k| !w.contains_key(*k)).collect();
    assert!(extra.is_empty(), "unexpected arrays {extra:?}");
}

/// Arrays of several dtypes and shapes, one larger than NVFlare's 2 MiB chunk limit.
fn ferry_arrays() -> NdArrayDict {
    let specs: [(&str, &str, &[u64]); 8] = [
        ("layer0.weight", "<f4", &[64, 32]),
        ("layer1.bias", "<f8", &[17]),
        ("layer2.index", "<i4", &[3, 5, 7]),
        ("layer3.mask", "|u1", &[1000]),
        ("layer4.big", "<i8", &[300_000]),
        ("layer5.half", "<f2", &[8, 8]),
        ("layer6.flags", "|b1", &[10]),
        ("layer7.scalar", "<f8", &[]),
    ];
    let mut d = NdArrayDict::new();
    for (i, (name, dtype, shape)) in specs.into_iter().enumerate() {
        let size = ferry::objects::numpy::descr_item_size(dtype).unwrap();
        let n = shape.iter().product::<u64>() * size;
        let mut data = pattern_bytes(n as usize, i as u8);
        if dtype == "|b1" {
            // NumPy booleans must be 0 or 1.
            data.iter_mut().for_each(|b| *b &= 1);
        }
        d.insert(
            name,
            NdArray::new(dtype, shape.to_vec(), data.into()).unwrap(),
        )
        .unwrap();
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_receiver_downloads_file_and_arrays_from_a_python_sender() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("weights.bin");
    std::fs::write(&src, pattern_bytes((5 << 20) + 4321, 9)).unwrap();
    let mut sender = PyPeer::spawn(
        "nv_download_sender.py",
        args(&[
            &"--listen",
            &"--file",
            &src,
            &"--chunk-size",
            &"1048576",
            &"--arrays",
            &"12",
            &"--array-scale",
            &"300",
            &"--num-receivers",
            &"1",
            &"--timeout",
            &PEER_TIMEOUT,
        ]),
    );
    let url = sender.ready_str("url").to_string();
    let ready = sender.ready().clone();
    let file_ref = RefId::from(ready["file"]["ref_id"].as_str().unwrap());
    let arrays_ref = RefId::from(ready["arrays"]["ref_id"].as_str().unwrap());

    let (cell, service) = receiver("site-1", &url).await;
    let out = tempfile::tempdir().unwrap();
    let path = download_file(
        &service,
        "server",
        &file_ref,
        out.path(),
        "weights.bin",
        FileOptions::default(),
        opts(),
    )
    .await
    .unwrap();
    assert_eq!(
        sha256_file_hex(&path).unwrap(),
        ready["file"]["sha256"].as_str().unwrap()
    );
    let mut consumer = download_object(
        &service,
        "server",
        &arrays_ref,
        NpzDictConsumer::new(),
        opts(),
    )
    .await
    .unwrap();
    let arrays = consumer.take().unwrap();
    assert_eq!(arrays.len(), 12);
    assert_same_arrays(&checksums(&arrays), &ready["arrays"]["checksums"]);

    let outcome = sender.wait_event_async("outcome").await;
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert_eq!(outcome["completed"], true);
    assert_eq!(
        outcome["receivers"],
        json!({
            file_ref.as_str(): {"site-1": "success"},
            arrays_ref.as_str(): {"site-1": "success"},
        })
    );
    service.shutdown().await;
    cell.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receivers_download_file_and_arrays_from_a_ferry_sender() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("weights.bin");
    std::fs::write(&src, pattern_bytes((3 << 20) + 77, 4)).unwrap();
    let file_sha = sha256_file_hex(&src).unwrap();
    let arrays = ferry_arrays();
    let want = checksums(&arrays);

    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    // Transaction 1 for site-1: the file and the arrays packed NVFlare's way (2 MiB chunks).
    let tx1 = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
    )
    .unwrap();
    let file_ref = tx1.add_file(&src, 1 << 20).unwrap();
    let packed = NpzDictObject::from_arrays(
        arrays.clone(),
        CacheOptions::default()
            .with_packing(ChunkPacking::MaxBytes(2 << 20))
            .with_receivers(ExpectedReceivers::Count(1)),
    )
    .unwrap();
    let arrays_ref = tx1.add_object(Arc::new(packed)).unwrap();
    // Transaction 2 for site-2: the same arrays, 3 per chunk with a plan (Python ignores the
    // plan and echoes the states).
    let tx2 = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_receiver_ids(["site-2"]),
    )
    .unwrap();
    let per_chunk = NpzDictObject::from_arrays(
        arrays.clone(),
        CacheOptions::default()
            .with_packing(ChunkPacking::PerChunk(3))
            .with_receivers(ExpectedReceivers::Ids(vec!["site-2".into()])),
    )
    .unwrap();
    let arrays2_ref = tx2.add_object(Arc::new(per_chunk)).unwrap();

    let out = tempfile::tempdir().unwrap();
    let mut r1 = PyPeer::spawn_async(
        "nv_download_receiver.py",
        args(&[
            &"--connect",
            &url,
            &"--fqcn",
            &"site-1",
            &"--source",
            &"server",
            &"--file-ref",
            &file_ref.as_str(),
            &"--arrays-ref",
            &arrays_ref.as_str(),
            &"--out-dir",
            &out.path(),
            &"--timeout",
            &PEER_TIMEOUT,
        ]),
    )
    .await;
    let mut r2 = PyPeer::spawn_async(
        "nv_download_receiver.py",
        args(&[
            &"--connect",
            &url,
            &"--fqcn",
            &"site-2",
            &"--source",
            &"server",
            &"--arrays-ref",
            &arrays2_ref.as_str(),
            &"--timeout",
            &PEER_TIMEOUT,
        ]),
    )
    .await;
    let f = r1.wait_event_async("file").await;
    assert_eq!(f["error"], Value::Null, "{f}");
    assert_eq!(f["sha256"], file_sha.as_str());
    let a = r1.wait_event_async("arrays").await;
    assert_eq!(a["error"], Value::Null, "{a}");
    assert_same_arrays(&a["arrays"], &want);
    let a2 = r2.wait_event_async("arrays").await;
    assert_eq!(a2["error"], Value::Null, "{a2}");
    assert_same_arrays(&a2["arrays"], &want);

    for (tx, refs) in [
        (&tx1, vec![(&file_ref, "site-1"), (&arrays_ref, "site-1")]),
        (&tx2, vec![(&arrays2_ref, "site-2")]),
    ] {
        let o = tx.waiter().wait_timeout(SOON).await.expect("outcome");
        assert_eq!(o.status, OutcomeStatus::Completed, "{o:?}");
        for (rid, who) in refs {
            assert_eq!(
                statuses(&o, rid),
                vec![(who.to_string(), DownloadStatus::Success)],
                "{rid}"
            );
        }
    }
    service.shutdown().await;
    cell.shutdown().await;
}

/// An NVFlare receiver dies mid-download from a Ferry sender: a Ferry receiver of the same
/// transaction still finishes, the dead one is FAILED at its idle budget, and the sender
/// releases every chunk it had produced for the dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_receiver_killed_mid_download_is_failed_at_its_idle_budget() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("weights.bin");
    std::fs::write(&src, pattern_bytes(12 << 20, 3)).unwrap();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120))
            .with_num_receivers(2)
            .with_idle_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let obj = ferry::objects::FileObject::builder(&src)
        .chunk_size(1 << 20)
        .open()
        .unwrap();
    let gated = GatedObject::new(obj, 3);
    let gate = gated.gate();
    let rid = tx.add_object(Arc::new(gated)).unwrap();
    let mut victim = PyPeer::spawn_async(
        "nv_download_receiver.py",
        args(&[
            &"--connect",
            &url,
            &"--fqcn",
            &"site-1",
            &"--source",
            &"server",
            &"--file-ref",
            &rid.as_str(),
            &"--timeout",
            &PEER_TIMEOUT,
        ]),
    )
    .await;
    gate.wait_reached(SOON).await.unwrap();
    victim.kill();
    gate.open();
    let (rcell, rservice) = receiver("site-2", &url).await;
    let out = tempfile::tempdir().unwrap();
    let path = download_file(
        &rservice,
        "server",
        &rid,
        out.path(),
        "w.bin",
        FileOptions::default(),
        opts(),
    )
    .await
    .unwrap();
    assert_eq!(
        sha256_file_hex(&path).unwrap(),
        sha256_file_hex(&src).unwrap()
    );
    let o = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert_eq!(o.status, OutcomeStatus::Failed, "{o:?}");
    assert_eq!(o.reason, "receiver_failed");
    assert_eq!(
        statuses(&o, &rid),
        vec![
            ("site-1".to_string(), DownloadStatus::Failed),
            ("site-2".to_string(), DownloadStatus::Success),
        ]
    );
    assert_released(&service).await;
    rservice.shutdown().await;
    rcell.shutdown().await;
    service.shutdown().await;
    cell.shutdown().await;
}

/// Ferry's `.npz` items are what `np.load` reads, array for array.
#[test]
fn numpy_loads_the_npz_items_ferry_produces() {
    let dir = tempfile::tempdir().unwrap();
    let mut arrays = ferry_arrays();
    arrays
        .insert(
            "unicode.ü",
            NdArray::new(
                "<U3",
                vec![2],
                pattern_bytes(24, 0)
                    .iter()
                    .map(|b| b & 0x3f)
                    .collect::<Vec<u8>>()
                    .into(),
            )
            .unwrap(),
        )
        .unwrap();
    arrays
        .insert(
            "big_endian",
            NdArray::new(">i8", vec![2, 3], pattern_bytes(48, 5).into()).unwrap(),
        )
        .unwrap();
    arrays
        .insert(
            "empty",
            NdArray::new("<f4", vec![0, 4], bytes::Bytes::new()).unwrap(),
        )
        .unwrap();
    let mut files = Vec::new();
    for (i, (name, a)) in arrays.iter().enumerate() {
        let p = dir.path().join(format!("item{i}.npz"));
        std::fs::write(&p, encode_npz([(name, a)]).unwrap()).unwrap();
        files.push(p);
    }
    // One archive with every array, too.
    let all = dir.path().join("all.npz");
    std::fs::write(&all, encode_npz(arrays.iter()).unwrap()).unwrap();
    files.push(all);
    let got = np_load(&files);
    let mut merged = serde_json::Map::new();
    for per_file in got[..got.len() - 1].iter() {
        let m = per_file.as_object().unwrap();
        assert_eq!(m.len(), 1, "one array per item: {per_file}");
        merged.extend(m.clone());
    }
    let want = checksums(&arrays);
    assert_same_arrays(&Value::Object(merged), &want);
    assert_same_arrays(&got[got.len() - 1], &want);
}

/// `np.load` each file (allow_pickle=False); per file `{name: {"dtype", "shape", "sha256"}}`.
fn np_load(files: &[impl AsRef<Path>]) -> Vec<Value> {
    let code = r#"
import hashlib, json, sys
import numpy as np
out = []
for path in sys.argv[1:]:
    with np.load(path, allow_pickle=False) as z:
        d = {}
        for k in z.files:
            a = np.asarray(z[k], order="C")
            d[k] = {"dtype": a.dtype.str, "shape": list(a.shape),
                    "sha256": hashlib.sha256(a.tobytes()).hexdigest()}
        out.append(d)
print(json.dumps(out))
"#;
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(code)
        .args(files.iter().map(|f| f.as_ref()))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "np.load failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}
