//! Pass-through refs over real TCP cells: `server` → `site-1` (forwards the ref, downloads
//! nothing) → `site-1.job7` (connected only to `site-1`), which pulls from `server` through
//! `site-1` and holds it to the ref's pin.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::cellnet::rmpv::Value;
use ferry::passthrough::ObjectRef;
use ferry::prelude::*;

/// Generous bound for anything that should take a second; only guards against hangs.
const BOUND: Duration = Duration::from_secs(120);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f).await.expect("hung")
}

async fn eventually(f: impl Fn() -> bool) {
    within(async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// The three cells; `site-1` forwards every `app/task` message to the job cell untouched
/// (after reading the ref out of it, as an application would), and records what it saw.
struct Net {
    server: Cell,
    site: Cell,
    job: Cell,
    origin: DownloadService,
    job_service: DownloadService,
    seen_at_site: Arc<Mutex<Vec<ObjectRef>>>,
}

async fn net() -> Net {
    let server = Cell::new("server").unwrap();
    let url = server.listen("tcp://127.0.0.1:0").await.unwrap();
    let site = Cell::new("site-1").unwrap();
    let site_url = site.listen("tcp://127.0.0.1:0").await.unwrap();
    site.connect(&url).await.unwrap();
    let job = Cell::new("site-1.job7").unwrap();
    job.connect(&site_url).await.unwrap();
    eventually(|| server.is_connected("site-1") && site.is_connected("site-1.job7")).await;
    let origin = DownloadService::new(&server, ServiceOptions::default());
    let job_service = DownloadService::new(&job, ServiceOptions::default());
    let seen_at_site = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&seen_at_site);
    let fwd = site.clone();
    site.register_request_handler("app", "task", move |req: Message| {
        let seen = Arc::clone(&seen);
        let fwd = fwd.clone();
        async move {
            let r = ObjectRef::from_value(&req.value().unwrap()).unwrap();
            seen.lock().unwrap().push(r.clone());
            // Pass-through: the same ref, on to the job cell; no download here.
            fwd.send_request(
                "app",
                "task",
                "site-1.job7",
                Message::from_value(r.to_value()),
                BOUND,
            )
            .await
        }
    });
    Net {
        server,
        site,
        job,
        origin,
        job_service,
        seen_at_site,
    }
}

/// The job cell resolves each ref it gets into memory and answers with the bytes' length, or
/// the error text.
fn resolve_at_job(net: &Net) {
    let svc = net.job_service.clone();
    net.job
        .register_request_handler("app", "task", move |req: Message| {
            let svc = svc.clone();
            async move {
                let r = ObjectRef::from_value(&req.value().unwrap()).unwrap();
                match r.fetch_bytes(&svc, DownloadOptions::default()).await {
                    Ok(b) => Message::from_value(Value::from(b.to_vec())),
                    Err(e) => Message::from_value(Value::from(format!("error: {e}"))),
                }
            }
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_passes_through_a_cell_and_the_final_receiver_pulls_from_the_origin() {
    let net = net().await;
    resolve_at_job(&net);
    let data: Bytes = (0..3_000_000u32)
        .map(|i| (i * 7) as u8)
        .collect::<Vec<u8>>()
        .into();
    let tx = ObjectDownloader::new(
        &net.origin,
        TxConfig::new(Duration::from_secs(60)).with_receiver_ids(["site-1.job7"]),
    )
    .unwrap();
    let rid = tx
        .add_object(Arc::new(
            BytesObject::new(data.clone())
                .with_chunk_size(256 << 10)
                .unwrap(),
        ))
        .unwrap();
    let r = ObjectRef::new("server", &rid).pinned(data.len() as u64, blake3::hash(&data));
    let reply = within(net.server.send_request(
        "app",
        "task",
        "site-1",
        Message::from_value(r.to_value()),
        BOUND,
    ))
    .await;
    let got = reply.value().unwrap();
    assert_eq!(got.as_slice(), Some(&data[..]), "{got:?}");
    // The hop saw the origin's ref, unchanged, and pulled nothing: the origin's only
    // receiver is the job cell, which confirmed.
    assert_eq!(*net.seen_at_site.lock().unwrap(), vec![r]);
    let outcome = within(tx.waiter().wait()).await.unwrap();
    assert!(outcome.completed(), "{outcome:?}");
    assert_eq!(
        outcome.refs[0].1.keys().collect::<Vec<_>>(),
        vec!["site-1.job7"]
    );
    net.job_service.shutdown().await;
    net.origin.shutdown().await;
    for c in [&net.job, &net.site, &net.server] {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_pinned_to_other_content_fails_at_the_final_receiver() {
    let net = net().await;
    resolve_at_job(&net);
    let data = Bytes::from_static(b"the real weights");
    let tx = ObjectDownloader::new(
        &net.origin,
        TxConfig::new(Duration::from_secs(60)).with_num_receivers(1),
    )
    .unwrap();
    let rid = tx.add_bytes(data.clone()).unwrap();
    let forged = ObjectRef::new("server", &rid).pinned(data.len() as u64, blake3::hash(b"other"));
    let reply = within(net.server.send_request(
        "app",
        "task",
        "site-1",
        Message::from_value(forged.to_value()),
        BOUND,
    ))
    .await;
    let text = reply.value().unwrap();
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.starts_with("error:") && text.contains("pins"),
        "{text}"
    );
}

#[test]
fn malformed_refs_are_refused() {
    let ok =
        ObjectRef::new("server", &ferry::core::RefId::new("R1")).pinned(3, blake3::hash(b"abc"));
    assert_eq!(ObjectRef::from_value(&ok.to_value()).unwrap(), ok);
    let bad = [
        Value::from(3),
        Value::Map(vec![(Value::from("ref_id"), Value::from("R1"))]),
        Value::Map(vec![
            (Value::from("fqcn"), Value::from("no spaces allowed")),
            (Value::from("ref_id"), Value::from("R1")),
        ]),
        Value::Map(vec![
            (Value::from("fqcn"), Value::from("server")),
            (Value::from("ref_id"), Value::from("R".repeat(300))),
        ]),
        Value::Map(vec![
            (Value::from("fqcn"), Value::from("server")),
            (Value::from("ref_id"), Value::from("R1")),
            (Value::from("size"), Value::from(3)),
        ]),
        Value::Map(vec![
            (Value::from("fqcn"), Value::from("server")),
            (Value::from("ref_id"), Value::from("R1")),
            (Value::from("size"), Value::from(3)),
            (Value::from("b3"), Value::from("zz")),
        ]),
    ];
    for v in bad {
        let e = ObjectRef::from_value(&v).unwrap_err();
        assert!(e.to_string().contains("not an object ref"), "{e}");
    }
}
