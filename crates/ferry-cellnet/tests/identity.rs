//! Attribution and names over real TCP: a message is handled only if the connection it came
//! by can vouch for its `cn__origin`; a live peer keeps its name against a second connection;
//! a cell with forwarding off relays nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ferry_cellnet::frame::FrameType;
use ferry_cellnet::headers::keys;
use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, CellnetError, Forwarding, Headers, Limits, Message, ReturnCode};

/// Register `t/who` on `cell`: answers with the origin it was given, counts its calls.
fn who(cell: &Cell) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    cell.register_request_handler("t", "who", move |m: Message| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Message::from_value(m.origin().unwrap_or_default()) }
    });
    calls
}

/// A plain request as a raw peer writes it, with whatever origin it likes.
fn raw_request(origin: &str, dest: &str, req_id: &str) -> Vec<u8> {
    let mut h = Headers::new();
    h.insert(keys::MSG_TYPE, "req");
    h.insert(keys::ORIGIN, origin);
    h.insert(keys::DESTINATION, dest);
    h.insert(keys::FROM, origin);
    h.insert(keys::TO, dest);
    h.insert(keys::CHANNEL, "t");
    h.insert(keys::TOPIC, "who");
    h.insert(keys::REQ_ID, req_id);
    h.insert(keys::REPLY_EXPECTED, true);
    h.insert(keys::PAYLOAD_ENCODING, "none");
    frame(FrameType::Data, 1, h.encode(), vec![]).to_vec()
}

fn decode(f: &ferry_cellnet::frame::Frame) -> Headers {
    Headers::decode(&f.headers).unwrap()
}

#[tokio::test]
async fn a_message_in_another_cells_name_is_refused_and_never_handled() {
    let (server, url) = listening("server", Limits::default()).await;
    let calls = who(&server);
    let mut evil = RawPeer::connect(&url).await;
    evil.handshake("site-evil").await;
    eventually(|| server.is_connected("site-evil")).await;

    // claims to be site-1: a RETURN the peer can read, the handler never runs
    evil.send(&raw_request("site-1", "server", "r1")).await;
    let f = evil.next_data().await.expect("an answer");
    let h = decode(&f);
    assert_eq!(h.get_str(keys::MSG_TYPE), Some("return"));
    assert_eq!(h.get_str(keys::RETURN_CODE), Some("unauthenticated"));
    assert_eq!(
        h.get(keys::REQ_ID),
        Some(&Value::Array(vec![Value::from("r1")]))
    );
    let why = h.get_str(keys::ERROR).unwrap();
    assert!(why.contains("site-evil") && why.contains("site-1"), "{why}");

    // claims to be the server itself: refused too
    evil.send(&raw_request("server", "server", "r2")).await;
    let h = decode(&evil.next_data().await.unwrap());
    assert_eq!(h.get_str(keys::RETURN_CODE), Some("unauthenticated"));

    // its own name and its own job cells are what it may speak for
    for (origin, id) in [("site-evil", "r3"), ("site-evil.job7", "r4")] {
        evil.send(&raw_request(origin, "server", id)).await;
        let f = evil.next_data().await.unwrap();
        let h = decode(&f);
        assert_eq!(h.get_str(keys::MSG_TYPE), Some("reply"), "{origin}");
        assert_eq!(h.get_str(keys::RETURN_CODE), Some("ok"), "{origin}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // the refused messages did not cost the connection
    assert!(server.is_connected("site-evil"));
    server.shutdown().await;
}

/// A relay forwards for a cell below it; it cannot forward for a cell elsewhere in the tree.
#[tokio::test]
async fn a_relay_speaks_only_for_the_cells_below_it() {
    let (server, url) = listening("server", Limits::default()).await;
    let calls = who(&server);
    // site-evil connects to the server and lets cells connect to it
    let relay = connected("site-evil", &url).await;
    let relay_url = relay.listen("tcp://127.0.0.1:0").await.unwrap();
    // its job cell: forwarded, and attributed to the job cell
    let job = connected("site-evil.j1", &relay_url).await;
    let r = job
        .send_request("t", "who", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert_eq!(r.value().unwrap().as_str(), Some("site-evil.j1"));
    // a cell that calls itself site-1 behind the relay: refused at the server, and the
    // refusal comes back through the relay to the requester
    let fake = connected("site-1", &relay_url).await;
    let r = fake
        .send_request("t", "who", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Unauthenticated);
    assert!(
        r.error_text()
            .unwrap()
            .contains("cannot send messages as \"site-1\""),
        "{:?}",
        r.error_text()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for c in [fake, job, relay, server] {
        c.shutdown().await;
    }
}

#[tokio::test]
async fn a_second_connection_cannot_take_a_live_peers_name() {
    let (server, url) = listening("server", Limits::default()).await;
    who(&server);
    let first = connected("site-1", &url).await;
    let second = Cell::new("site-1").unwrap();
    match second.connect(&url).await {
        Err(CellnetError::Refused(why)) => {
            assert!(why.contains("already holds the name \"site-1\""), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // the first one keeps working, and it still is the one the server talks to
    let r = first
        .send_request("t", "who", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error_text());
    assert!(first.is_connected("server"));
    assert!(!second.is_connected("server"));
    // a raw peer gets READY with the refusal, then the connection closes
    let mut raw = RawPeer::connect(&url).await;
    raw.send(&frame(
        FrameType::Hello,
        0,
        vec![],
        hello_payload("site-1").to_vec(),
    ))
    .await;
    let ready = raw.next_frame().await.unwrap();
    assert_eq!(ready.frame_type(), Some(FrameType::Ready));
    assert!(String::from_utf8_lossy(&ready.payload).contains("ferry_refused"));
    assert!(raw.closed_by_peer().await);
    let r = first
        .send_request("t", "who", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    for c in [second, first, server] {
        c.shutdown().await;
    }
}

/// The holder of a name that does not answer a PING (its machine died, its network is gone)
/// loses the name to the cell that reconnects under it.
#[tokio::test]
async fn a_silent_holder_is_replaced_by_a_reconnecting_cell() {
    let limits = Limits {
        name_probe_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (server, url) = listening("server", limits).await;
    who(&server);
    let mut old = RawPeer::connect(&url).await;
    old.handshake("site-1").await;
    eventually(|| server.is_connected("site-1")).await;
    // the raw peer never reads nor answers: it is dead as far as the server can tell
    let c = connected("site-1", &url).await;
    assert!(old.closed_by_peer().await);
    let r = c
        .send_request("t", "who", "server", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    assert_eq!(r.value().unwrap().as_str(), Some("site-1"));
    c.shutdown().await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_cell_with_forwarding_off_relays_nothing() {
    init_tracing();
    let hub = Cell::builder("hub")
        .unwrap()
        .forwarding(Forwarding::Off)
        .build();
    let url = hub.listen("tcp://127.0.0.1:0").await.unwrap();
    let hub_calls = who(&hub);
    let a = connected("a", &url).await;
    let b = connected("b", &url).await;
    let b_calls = who(&b);
    eventually(|| hub.is_connected("a") && hub.is_connected("b")).await;
    let r = a.send_request("t", "who", "b", Message::new(), LONG).await;
    assert_eq!(r.return_code(), ReturnCode::CommError);
    assert!(
        r.error_text().unwrap().contains("does not relay"),
        "{:?}",
        r.error_text()
    );
    // fire-and-forget is dropped too
    a.fire_and_forget("t", "who", "b", Message::new())
        .await
        .unwrap();
    // the hub still serves its own requests (and that reply proves the drop above happened)
    let r = a
        .send_request("t", "who", "hub", Message::new(), LONG)
        .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    assert_eq!(hub_calls.load(Ordering::SeqCst), 1);
    assert_eq!(b_calls.load(Ordering::SeqCst), 0);
    for c in [a, b, hub] {
        c.shutdown().await;
    }
}
