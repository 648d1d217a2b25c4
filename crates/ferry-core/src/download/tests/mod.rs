//! Receiver-engine tests on virtual time, one module per behaviour: stop-and-wait (NVFlare),
//! timeouts and retries, failures with cancel and confirm, the window with reordering and plan
//! checks, progress. The helpers below build configs, replies and plans.

mod failures;
mod progress;
mod stop_and_wait;
mod timeouts;
mod window;

use super::*;
use crate::message::{ConfirmRequest, ReplyBody, ReplyStatus};
use crate::plan::KEY_RECEIVED_BYTES;
use crate::{
    ChunkData, ConsumeError, DownloadStatus, PlanLayout, ProgressState, RefId, Refusal, ReturnCode,
    State, TransferPlan, WirePlan,
};
use bytes::Bytes;
use std::time::{Duration, Instant};

const S: Duration = Duration::from_secs(1);

fn cfg() -> DownloadConfig {
    DownloadConfig {
        per_request_timeout: 10 * S,
        ..DownloadConfig::default()
    }
}

fn drain(d: &mut Download) -> Vec<Action> {
    std::iter::from_fn(|| d.poll_action()).collect()
}

fn sends(actions: &[Action]) -> Vec<(RequestId, Option<State>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { id, request } => Some((*id, request.state.clone())),
            _ => None,
        })
        .collect()
}

fn rb(n: u64) -> State {
    State::new().with(KEY_RECEIVED_BYTES, n)
}

fn data(state: State, bytes: &[u8]) -> ReplyBody {
    ReplyBody::data(state, ChunkData::Bytes(Bytes::copy_from_slice(bytes)))
}

fn eof(nonce: Option<&str>) -> ReplyBody {
    ReplyBody {
        confirm_expected: nonce.map(|_| true),
        confirm_nonce: nonce.map(str::to_string),
        ..ReplyBody::terminal(ReplyStatus::Eof)
    }
}

fn planned(total: u64, chunk: u64) -> WirePlan {
    TransferPlan {
        layout: PlanLayout::Bytes { total, chunk },
        total_bytes: Some(total),
        blake3: None,
    }
    .to_wire()
}
