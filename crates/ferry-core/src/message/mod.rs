//! The Download Service's messages: requests and notices as serde types whose msgpack form
//! (`rmp_serde::to_vec_named`) is exactly NVFlare's payload maps, and replies with their
//! own zero-copy codec ([`reply`]).
//!
//! Optional keys are *omitted* when absent (never `nil`), chunk bytes are msgpack `bin`
//! ([`ChunkData`](crate::ChunkData)), and unknown keys are ignored when decoding, as NVFlare
//! does. Requests from peers are decoded leniently by [`DownloadRequest::decode`], which never
//! fails: a malformed request becomes [`DownloadRequest::Invalid`] and is answered
//! `invalid_request`.

mod lists;
pub mod reply;

pub use lists::grown_vec;
pub use reply::{BodyPart, Reply, ReplyBody, ReplyDecodeError, ReplyStatus};

use crate::{DownloadStatus, RefId, State};
use rmpv::Value;
use serde::{Deserialize, Serialize};

/// Cellnet channel of the Download Service.
pub const CHANNEL: &str = "download_service__";
/// Topic A: pulls, confirmations and cancellations.
pub const TOPIC_DOWNLOAD: &str = "download_service__download";
/// Topic B: owned-source failure notices.
pub const TOPIC_SOURCE_FAILURE: &str = "download_service__source_failure";
/// Largest request payload the engines decode. Requests are tiny maps (a ref id, a small state,
/// a nonce); anything bigger is hostile and answered `invalid_request` without decoding.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A pull request (receiver → producer): `{ref_id, [state], [confirm_capable]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The ref being pulled.
    pub ref_id: RefId,
    /// The state from the previous reply; absent on the first request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// `true` when the receiver will confirm a terminal reply that asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_capable: Option<bool>,
}

/// A confirmation (receiver → producer, fire-and-forget): `{ref_id, confirm, confirm_nonce}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmRequest {
    /// The ref being confirmed.
    pub ref_id: RefId,
    /// The receiver's verdict.
    pub confirm: DownloadStatus,
    /// The nonce of the terminal reply being confirmed.
    pub confirm_nonce: String,
}

/// A cancellation (receiver → producer, fire-and-forget): `{ref_id, cancel: true}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRequest {
    /// Any ref of the transaction being abandoned.
    pub ref_id: RefId,
    /// Always `true`.
    pub cancel: bool,
}

impl CancelRequest {
    /// A cancel for `ref_id`.
    pub fn new(ref_id: RefId) -> Self {
        Self {
            ref_id,
            cancel: true,
        }
    }
}

/// A topic-A request as the producer dispatches it (NVFlare's order: no `ref_id` → invalid;
/// `confirm` present → confirm; `cancel` true → cancel; otherwise pull).
#[derive(Clone, Debug, PartialEq)]
pub enum DownloadRequest {
    /// Pull the next chunk.
    Pull(PullRequest),
    /// Confirm a terminal serve. `status`/`nonce` are `None` when the peer sent something
    /// unusable; such a confirm is dropped (reply still `ok`).
    Confirm {
        /// The ref.
        ref_id: RefId,
        /// The verdict, if it was `"success"` or `"failed"`.
        status: Option<DownloadStatus>,
        /// The nonce, if it was a string.
        nonce: Option<String>,
    },
    /// Cancel every ref of the transaction for this receiver.
    Cancel {
        /// The ref named in the request.
        ref_id: RefId,
    },
    /// Unusable request; answered `invalid_request`.
    Invalid(String),
}

/// The keys of a topic-A request, decoded without committing to their types.
#[derive(Deserialize)]
struct RawRequest {
    #[serde(default)]
    ref_id: Option<Value>,
    #[serde(default)]
    state: Option<Value>,
    #[serde(default)]
    confirm_capable: Option<Value>,
    #[serde(default)]
    confirm: Option<Value>,
    #[serde(default)]
    confirm_nonce: Option<Value>,
    #[serde(default)]
    cancel: Option<Value>,
}

impl DownloadRequest {
    /// Decode a topic-A payload (the msgpack map). Never fails: bad input is `Invalid`.
    pub fn decode(payload: &[u8]) -> Self {
        if payload.len() > MAX_REQUEST_BYTES {
            return Self::Invalid(format!(
                "request of {} bytes exceeds {MAX_REQUEST_BYTES}",
                payload.len()
            ));
        }
        let raw: RawRequest = match rmp_serde::from_slice(payload) {
            Ok(r) => r,
            Err(e) => return Self::Invalid(format!("undecodable request: {e}")),
        };
        let ref_id = match raw.ref_id {
            Some(Value::String(s)) if s.as_str().is_some_and(|s| !s.is_empty()) => {
                RefId::new(s.into_str().unwrap_or_default())
            }
            _ => return Self::Invalid("no ref_id".into()),
        };
        if let Some(c) = raw.confirm.filter(|v| !v.is_nil()) {
            let status = match c.as_str() {
                Some("success") => Some(DownloadStatus::Success),
                Some("failed") => Some(DownloadStatus::Failed),
                _ => None,
            };
            let nonce = raw
                .confirm_nonce
                .and_then(|n| n.as_str().map(str::to_string));
            return Self::Confirm {
                ref_id,
                status,
                nonce,
            };
        }
        if raw.cancel == Some(Value::Boolean(true)) {
            return Self::Cancel { ref_id };
        }
        let state = match raw.state {
            None | Some(Value::Nil) => None,
            Some(v @ Value::Map(_)) => match rmpv::ext::from_value::<State>(v) {
                Ok(s) => Some(s),
                Err(e) => return Self::Invalid(format!("bad state: {e}")),
            },
            Some(_) => return Self::Invalid("state is not a map".into()),
        };
        let confirm_capable = (raw.confirm_capable == Some(Value::Boolean(true))).then_some(true);
        Self::Pull(PullRequest {
            ref_id,
            state,
            confirm_capable,
        })
    }
}

/// An owned-source failure notice (topic B): `{source_fqcn, ref_ids, reason}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFailureNotice {
    /// The failed source (a child FQCN of the notifier).
    pub source_fqcn: String,
    /// The refs that source was serving.
    // grown as ref ids arrive: the count a peer's list header claims reserves nothing
    #[serde(deserialize_with = "grown_vec")]
    pub ref_ids: Vec<String>,
    /// Why, in words.
    pub reason: String,
}

impl SourceFailureNotice {
    /// Decode a topic-B payload.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        if payload.len() > MAX_REQUEST_BYTES {
            return Err(format!("notice of {} bytes is too large", payload.len()));
        }
        rmp_serde::from_slice(payload).map_err(|e| format!("undecodable notice: {e}"))
    }

    /// msgpack bytes of this notice.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// msgpack bytes of any request (`to_vec_named`, the map form NVFlare expects).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing plain maps, strings, integers and bytes into a Vec cannot fail.
    rmp_serde::to_vec_named(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a<len> <ascii>` as msgpack fixstr.
    fn fixstr(s: &str) -> Vec<u8> {
        let mut v = vec![0xa0 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    const RID: &str = "Rcb50e1a2-0c3d-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn first_request_is_nvflares_64_byte_body() {
        let req = PullRequest {
            ref_id: RefId::new(RID),
            state: None,
            confirm_capable: Some(true),
        };
        let enc = encode(&req);
        // As NVFlare 2.9 sends it: blob = LOBS header (size 0x40) | {"ref_id":"Rcb50…",
        // "confirm_capable":true}, a 64-byte msgpack map
        assert_eq!(enc.len(), 0x40);
        let mut want = vec![0x82];
        want.extend(fixstr("ref_id"));
        want.extend([0xd9, 0x25]);
        want.extend_from_slice(RID.as_bytes());
        want.extend(fixstr("confirm_capable"));
        want.push(0xc3);
        assert_eq!(enc, want);
        assert_eq!(DownloadRequest::decode(&enc), DownloadRequest::Pull(req));
    }

    #[test]
    fn pull_with_state_omits_nothing_it_has_and_adds_no_nil() {
        let req = PullRequest {
            ref_id: RefId::new("R1"),
            state: Some(State::new().with("received_bytes", 5u64)),
            confirm_capable: None,
        };
        let enc = encode(&req);
        let mut want = vec![0x82];
        want.extend(fixstr("ref_id"));
        want.extend(fixstr("R1"));
        want.extend(fixstr("state"));
        want.push(0x81);
        want.extend(fixstr("received_bytes"));
        want.push(0x05);
        assert_eq!(enc, want);
        assert!(!enc.contains(&0xc0), "no nil anywhere");
    }

    #[test]
    fn confirm_cancel_and_notice_shapes() {
        let c = ConfirmRequest {
            ref_id: RefId::new("R1"),
            confirm: DownloadStatus::Success,
            confirm_nonce: "ab".into(),
        };
        let mut want = vec![0x83];
        want.extend(fixstr("ref_id"));
        want.extend(fixstr("R1"));
        want.extend(fixstr("confirm"));
        want.extend(fixstr("success"));
        want.extend(fixstr("confirm_nonce"));
        want.extend(fixstr("ab"));
        assert_eq!(encode(&c), want);
        assert_eq!(
            DownloadRequest::decode(&want),
            DownloadRequest::Confirm {
                ref_id: RefId::new("R1"),
                status: Some(DownloadStatus::Success),
                nonce: Some("ab".into())
            }
        );
        let k = CancelRequest::new(RefId::new("R1"));
        let mut want = vec![0x82];
        want.extend(fixstr("ref_id"));
        want.extend(fixstr("R1"));
        want.extend(fixstr("cancel"));
        want.push(0xc3);
        assert_eq!(encode(&k), want);
        assert_eq!(
            DownloadRequest::decode(&want),
            DownloadRequest::Cancel {
                ref_id: RefId::new("R1")
            }
        );
        let n = SourceFailureNotice {
            source_fqcn: "site-1.job".into(),
            ref_ids: vec!["R1".into()],
            reason: "died".into(),
        };
        let mut want = vec![0x83];
        want.extend(fixstr("source_fqcn"));
        want.extend(fixstr("site-1.job"));
        want.extend(fixstr("ref_ids"));
        want.push(0x91);
        want.extend(fixstr("R1"));
        want.extend(fixstr("reason"));
        want.extend(fixstr("died"));
        assert_eq!(n.encode(), want);
        assert_eq!(SourceFailureNotice::decode(&want).unwrap(), n);
    }

    #[test]
    fn hostile_requests_decode_to_invalid_never_panic() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xc1],
            vec![0x80],
            encode(&serde_json_like_map(&[("ref_id", Value::from(""))])),
            encode(&serde_json_like_map(&[("ref_id", Value::from(5))])),
            encode(&serde_json_like_map(&[
                ("ref_id", Value::from("R1")),
                ("state", Value::from(3)),
            ])),
            vec![0u8; MAX_REQUEST_BYTES + 1],
        ];
        for c in cases {
            assert!(
                matches!(DownloadRequest::decode(&c), DownloadRequest::Invalid(_)),
                "{c:?}"
            );
        }
        // confirm wins over cancel and pull; a confirm with junk is still a confirm
        let m = serde_json_like_map(&[
            ("ref_id", Value::from("R1")),
            ("confirm", Value::from(7)),
            ("cancel", Value::from(true)),
        ]);
        assert_eq!(
            DownloadRequest::decode(&encode(&m)),
            DownloadRequest::Confirm {
                ref_id: RefId::new("R1"),
                status: None,
                nonce: None
            }
        );
        // cancel must be literally true
        let m = serde_json_like_map(&[("ref_id", Value::from("R1")), ("cancel", Value::from(1))]);
        assert!(matches!(
            DownloadRequest::decode(&encode(&m)),
            DownloadRequest::Pull(_)
        ));
    }

    fn serde_json_like_map(kv: &[(&str, Value)]) -> Value {
        Value::Map(
            kv.iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }
}
