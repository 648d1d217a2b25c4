//! What the cellnet interop test files share: the echo handler Ferry cells register, the
//! request bodies both sides build and check, the TLS and connection helpers.

use std::time::Duration;

use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, Message, ReturnCode, TlsConfig};
use ferry_tests::names::{
    ECHO_HEADER, ECHO_TOPIC, NOTIFY_TOPIC, PLAIN_CHANNEL, REPLY_HEADER, REQUEST_HEADER,
    STREAM_CHANNEL,
};
use ferry_tests::{pattern_bytes, sha256_hex, CellCert, TestPki};
use tokio::sync::mpsc;

/// Per-request bound; generous because NVFlare runs on a loaded 2-core CI box.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Overall deadline handed to every Python peer.
pub const PEER_TIMEOUT: &str = "150";
/// Above FOBS's 10 MiB datum threshold: such a value travels as a datum section.
pub const DATUM_SIZE: usize = 10 * 1024 * 1024 + 4321;

/// What a Ferry-side handler saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub topic: String,
    pub channel: String,
    pub origin: String,
    pub req_header: Option<String>,
    pub payload: Value,
}

/// The same handlers as the Python peers (`ferry_peer.register_echo_handlers`): `echo` on
/// both channels replies with the request map plus `_echo_*` markers and headers
/// `x-ferry-reply` / `x-ferry-echo`; `notify` replies nothing. Everything seen is reported.
pub fn register_echo(cell: &Cell) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let me = cell.fqcn().as_str().to_string();
    for channel in [PLAIN_CHANNEL, STREAM_CHANNEL] {
        for topic in [ECHO_TOPIC, NOTIFY_TOPIC] {
            let tx = tx.clone();
            let me = me.clone();
            cell.register_request_handler(channel, topic, move |req: Message| {
                let seen = Seen {
                    topic: req.topic().unwrap_or_default().to_string(),
                    channel: req.channel().unwrap_or_default().to_string(),
                    origin: req.origin().unwrap_or_default().to_string(),
                    req_header: req.headers.get_str(REQUEST_HEADER).map(str::to_string),
                    payload: req.value().unwrap_or(Value::Nil),
                };
                let reply = (seen.topic == ECHO_TOPIC).then(|| echo_reply(&me, &seen));
                let _ = tx.send(seen);
                async move { reply }
            });
        }
    }
    rx
}

pub fn echo_reply(me: &str, seen: &Seen) -> Message {
    let mut entries = match &seen.payload {
        Value::Map(m) => m.clone(),
        other => vec![(Value::from("echo"), other.clone())],
    };
    for (k, v) in [
        ("_echo_by", me),
        ("_echo_origin", seen.origin.as_str()),
        ("_echo_channel", seen.channel.as_str()),
        ("_echo_topic", seen.topic.as_str()),
    ] {
        entries.push((Value::from(k), Value::from(v)));
    }
    let mut reply = Message::from_value(Value::Map(entries))
        .with_return_code(ReturnCode::Ok)
        .with_header(REPLY_HEADER, me);
    if let Some(h) = &seen.req_header {
        reply = reply.with_header(ECHO_HEADER, h.as_str());
    }
    reply
}

/// A request payload like the Python peers send: a map with text, ints and `bin` values.
pub fn request_body(kind: &str, seq: u8, big: Option<usize>) -> Value {
    let mut m = vec![
        (Value::from("seq"), Value::from(seq)),
        (Value::from("kind"), Value::from(kind)),
        (
            Value::from("text"),
            Value::from(format!("ferry {kind} request")),
        ),
        (
            Value::from("nums"),
            Value::Array(vec![1.into(), 2.into(), 3.into()]),
        ),
        (Value::from("small"), Value::Binary(pattern_bytes(64, seq))),
    ];
    if let Some(n) = big {
        m.push((Value::from("big"), Value::Binary(pattern_bytes(n, seq))));
    }
    Value::Map(m)
}

/// Assert that a Python echo reply carries what Ferry sent, and who answered.
pub fn assert_python_echo(reply: &Message, sent: &Value, by: &str, origin: &str, channel: &str) {
    assert_eq!(
        reply.return_code(),
        ReturnCode::Ok,
        "reply {:?} / {:?}",
        reply.headers,
        reply.error_text()
    );
    assert_eq!(reply.headers.get_str(REPLY_HEADER), Some(by));
    let body = reply.value().expect("FOBS reply decodes");
    assert_eq!(body["_echo_by"].as_str(), Some(by));
    assert_eq!(body["_echo_origin"].as_str(), Some(origin));
    assert_eq!(body["_echo_channel"].as_str(), Some(channel));
    for key in ["seq", "kind", "text", "nums", "small", "big"] {
        assert_eq!(body[key], sent[key], "field {key} round-trips unchanged");
    }
}

/// Assert a Python `reply` RESULT (a Python cell's request answered by a Ferry cell).
pub fn assert_ferry_echo_result(r: &serde_json::Value, by: &str, origin: &str) {
    assert_eq!(r["rc"], "ok", "{r}");
    assert_eq!(r["headers"][REPLY_HEADER], by, "{r}");
    let kind = r["kind"].as_str().unwrap();
    let seq = r["seq"].as_u64().unwrap();
    assert_eq!(r["headers"][ECHO_HEADER], format!("{kind}-{seq}"), "{r}");
    let p = &r["payload"];
    assert_eq!(p["_echo_by"], by, "{r}");
    assert_eq!(p["_echo_origin"], origin, "{r}");
    assert_eq!(p["_echo_channel"], r["channel"], "{r}");
    // every field the Python cell sent comes back identical (bytes by length and digest)
    for (k, v) in r["sent"].as_object().unwrap() {
        assert_eq!(&p[k], v, "field {k} of {r}");
    }
    let small = sha256_hex(&pattern_bytes(64, seq as u8)).unwrap();
    assert_eq!(p["small"]["sha256"], small.as_str());
}

pub fn ferry_tls(pki: &TestPki, cert: &CellCert) -> TlsConfig {
    TlsConfig::from_pem(
        pki.ca_pem().as_bytes(),
        cert.cert_pem.as_bytes(),
        cert.key_pem.as_bytes(),
    )
    .expect("TLS config from generated PEM")
}

/// Connect `cell` to the NVFlare cell at `url`; returns the peer's FQCN.
///
/// NVFlare's passive side sends READY *before* it registers the connecting endpoint and handles
/// frames in a thread pool, so a request sent right after READY could be dropped.
/// `Cell::connect` guards against that itself (it probes an NVFlare peer until it answers);
/// `first_request_right_after_connect_is_answered` pins that behaviour down.
pub async fn connect_settled(cell: &Cell, url: &str) -> String {
    cell.connect(url)
        .await
        .expect("HELLO/READY with NVFlare")
        .as_str()
        .to_string()
}

pub fn bin_sha(v: &Value) -> String {
    sha256_hex(v.as_slice().expect("a bin value")).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Ferry cell -> Python server cell
// ---------------------------------------------------------------------------------------
