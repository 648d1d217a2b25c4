//! Strangers cannot end a transfer for the receivers it counts (issue 10 §3), over real TCP:
//! a pull with an invalid state, a pull followed by a cancel, a cancel for a ref the sender
//! never served it. Each changes nothing for the real receiver, which completes the transfer.

use std::time::Duration;

use ferry::cellnet::rmpv::Value;
use ferry::core::message::{CHANNEL, TOPIC_DOWNLOAD};
use ferry::core::refusal::REFUSAL_HEADER;
use ferry::prelude::*;
use ferry_tests::e2e::{assert_released, receiver, sender, statuses};
use ferry_tests::init_tracing;

/// Generous bound for anything that should happen "soon" on a loaded 2-core machine.
const SOON: Duration = Duration::from_secs(90);

/// A raw topic-A request from `cell` to the sender, as a map of `(key, value)`.
async fn raw(cell: &Cell, kv: Vec<(&str, Value)>) -> Message {
    let map = Value::Map(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect());
    cell.send_request(
        CHANNEL,
        TOPIC_DOWNLOAD,
        "server",
        Message::from_value(map),
        SOON,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_invalid_pulls_and_cancels_change_nothing_for_the_real_receiver() {
    init_tracing();
    let (cell, service, url) = sender("server", ServiceOptions::default()).await;
    let tx = ObjectDownloader::new(
        &service,
        TxConfig::new(Duration::from_secs(120)).with_num_receivers(1),
    )
    .unwrap();
    let data = bytes::Bytes::from(vec![3u8; 3 << 20]);
    let rid = tx.add_bytes(data.clone()).unwrap();
    let rid_v = || Value::from(rid.as_str());

    // 1. A pull with received_bytes = -1: invalid_request, typed, nothing recorded.
    let (stranger, _ss) = receiver("stranger", &url).await;
    let reply = raw(
        &stranger,
        vec![
            ("ref_id", rid_v()),
            (
                "state",
                Value::Map(vec![("received_bytes".into(), Value::from(-1))]),
            ),
        ],
    )
    .await;
    assert_eq!(reply.return_code(), WireReturnCode::InvalidRequest);
    assert_eq!(
        reply.headers.get_str(REFUSAL_HEADER),
        Some("INVALID_REQUEST")
    );
    assert!(reply.error_text().is_some());
    // 2. A request with no ref at all.
    let reply = raw(&stranger, vec![("state", Value::Nil)]).await;
    assert_eq!(reply.return_code(), WireReturnCode::InvalidRequest);
    // 3. A pull, then a cancel: the stranger took the one place and gives it back.
    let reply = raw(&stranger, vec![("ref_id", rid_v())]).await;
    assert_eq!(reply.return_code(), WireReturnCode::Ok);
    let reply = raw(
        &stranger,
        vec![("ref_id", rid_v()), ("cancel", Value::from(true))],
    )
    .await;
    assert_eq!(reply.return_code(), WireReturnCode::Ok);
    assert!(tx.waiter().outcome().is_none(), "the transfer goes on");
    assert!(service.acquired_receivers(tx.tx_id()).is_empty());

    // The real receiver takes the place and completes the transfer; a stranger's cancel in
    // the middle is ignored (it holds no place).
    let (real, rs) = receiver("site-1", &url).await;
    let rid2 = rid.clone();
    let dl = tokio::spawn(async move {
        download_bytes(&rs, "server", &rid2, DownloadOptions::default()).await
    });
    let (other, _os) = receiver("other", &url).await;
    let reply = raw(
        &other,
        vec![("ref_id", rid_v()), ("cancel", Value::from(true))],
    )
    .await;
    assert_eq!(reply.return_code(), WireReturnCode::Ok);
    let got = tokio::time::timeout(SOON, dl)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got == data);
    let outcome = tx.waiter().wait_timeout(SOON).await.expect("outcome");
    assert!(outcome.completed(), "{outcome:?}");
    assert_eq!(
        statuses(&outcome, &rid),
        vec![("site-1".to_string(), DownloadStatus::Success)]
    );
    assert_released(&service).await;
    for c in [stranger, real, other] {
        c.shutdown().await;
    }
    service.shutdown().await;
    cell.shutdown().await;
}
