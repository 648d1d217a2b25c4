//! A relay of a tensor dict serves NVFlare 2.9's item downloader (`tests/py/nv_download_receiver.py
//! --tensors-ref`: NVFlare's `download_object` with an `ItemConsumer` of safetensors blobs, as
//! its tensor downloader) exactly as the origin would: ferry sender → ferry relay → NVFlare.
//!
//! Needs the interop interpreter (`cargo xtask interop-setup`, or `FERRY_INTEROP_PYTHON`);
//! without it the test fails with that instruction.

use std::sync::Arc;
use std::time::Duration;

use ferry::objects::tensors::{tensor_dict_pin, Dtype};
use ferry::prelude::*;
use ferry::relay::{Relay, RelayOptions};
use ferry::ticket::{Kind, Ticket};
use ferry_tests::e2e::{sender, statuses};
use ferry_tests::{args, init_tracing, pattern_bytes, sha256_hex, PyPeer};
use serde_json::{json, Value};

/// Overall deadline handed to the Python peer.
const PEER_TIMEOUT: &str = "150";
/// Generous bound for outcomes on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nvflare_receiver_pulls_a_tensor_dict_from_a_relay() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let specs: [(&str, Dtype, &str, Vec<usize>, usize); 3] = [
        ("layer0.weight", Dtype::F32, "<f4", vec![64, 32], 4),
        ("layer1.index", Dtype::I64, "<i8", vec![300_000], 8),
        ("layer2.mask", Dtype::U8, "|u1", vec![1000], 1),
    ];
    let mut dict = TensorDict::new();
    let mut want = serde_json::Map::new();
    for (i, (name, dtype, descr, shape, size)) in specs.into_iter().enumerate() {
        let data = pattern_bytes(shape.iter().product::<usize>() * size, i as u8);
        want.insert(
            name.to_string(),
            json!({"dtype": descr, "shape": shape, "sha256": sha256_hex(&data).unwrap()}),
        );
        dict.insert(name, Tensor::new(dtype, shape, data.into()).unwrap())
            .unwrap();
    }

    // The origin serves the dict as `Sender.add_tensors` does, to one receiver: the relay.
    let (ocell, oservice, ourl) = sender("origin", ServiceOptions::default()).await;
    let otx = ObjectDownloader::new(
        &oservice,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
    )
    .unwrap();
    let orid = otx.add_tensors(dict.clone()).unwrap();
    let pin = tensor_dict_pin(&dict);
    let up = Ticket {
        tls: false,
        addr: ourl.trim_start_matches("tcp://").to_string(),
        source: "origin".into(),
        ref_id: orid.to_string(),
        kind: Kind::Tensors,
        name: "model.safetensors".into(),
        size: pin.size,
        blake3: pin.hex(),
    };

    let (rcell, rservice, rurl) = sender("relay", ServiceOptions::default()).await;
    let relay = Arc::new(
        Relay::new(
            vec![up],
            RelayOptions {
                spill_dir: dir.path().to_path_buf(),
                ..RelayOptions::default()
            },
        )
        .unwrap(),
    );
    let run = {
        let (relay, service) = (Arc::clone(&relay), rservice.clone());
        tokio::spawn(async move { relay.run(&service, DownloadOptions::default()).await })
    };
    assert!(relay.wait_plan(SOON).await);
    let rtx = ObjectDownloader::new(
        &rservice,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
    )
    .unwrap();
    let rrid = rtx.add_object(relay.object()).unwrap();

    let mut nv = PyPeer::spawn_async(
        "nv_download_receiver.py",
        args(&[
            &"--connect",
            &rurl,
            &"--fqcn",
            &"site-1",
            &"--source",
            &"relay",
            &"--tensors-ref",
            &rrid.as_str(),
            &"--timeout",
            &PEER_TIMEOUT,
        ]),
    )
    .await;
    let t = nv.wait_event_async("tensors").await;
    assert_eq!(t["error"], Value::Null, "{t}");
    assert_eq!(t["arrays"], Value::Object(want), "{t}");

    tokio::time::timeout(SOON, run)
        .await
        .expect("relay hung")
        .unwrap()
        .unwrap();
    for (tx, rid, who) in [(&otx, &orid, "relay"), (&rtx, &rrid, "site-1")] {
        let o = tx.waiter().wait_timeout(SOON).await.expect("outcome");
        assert_eq!(o.status, OutcomeStatus::Completed, "{o:?}");
        assert_eq!(
            statuses(&o, rid),
            vec![(who.to_string(), DownloadStatus::Success)]
        );
    }
    for (s, c) in [(rservice, rcell), (oservice, ocell)] {
        s.shutdown().await;
        c.shutdown().await;
    }
}
