//! The producer engine's tests on virtual time, one module per group of NVFlare's rules (R1–R10
//! and §3.2–§3.6 in the test names, labels listed in the service module's docs: what a pull
//! does, confirm and cancel, budgets, who counts, how transactions end, settlement) plus bad
//! input. `receiver_tests.rs` beside this directory
//! holds ferry's own receiver rules. The driver [`H`] below runs hooks and collects events as
//! the glue does.

mod bad_input;
mod budgets;
mod confirm_cancel;
mod lifecycle;
mod modes;
mod serving;
mod settlement;

use super::*;
use crate::message::{DownloadRequest, PullRequest, Reply, ReplyBody, ReplyStatus};
use crate::progress::ProgressState;
use crate::testing::{BytesObject, HookLog, ItemsObject};
use crate::OutcomeStatus;
use crate::{
    DoneStatus, Downloadable, Error, ProduceError, Produced, ReturnCode, State, TransferOutcome,
};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

pub(super) const S: Duration = Duration::from_secs(1);
pub(super) const NS: Duration = Duration::from_nanos(1);

/// A driver on virtual time: after each engine call it runs the queued hooks and collects the
/// events, as the glue does (outside the engine).
pub(super) struct H {
    pub(super) svc: Service,
    pub(super) t0: Instant,
    pub(super) now: Instant,
    /// Events delivered and not yet taken by a test.
    ev: Vec<ServiceEvent>,
}

/// NVFlare's exact receiver rules: no count-mode places, first final status wins for FAILED
/// too, undeclared receivers served but not counted.
pub(super) fn nvflare() -> ServiceConfig {
    ServiceConfig {
        refuse_undeclared: false,
        count_slots: false,
        reopen_failed: false,
        ..ServiceConfig::default()
    }
}

impl H {
    pub(super) fn new() -> Self {
        Self::with(ServiceConfig::default())
    }

    pub(super) fn with(cfg: ServiceConfig) -> Self {
        let t0 = Instant::now();
        Self {
            svc: Service::new(cfg),
            t0,
            now: t0,
            ev: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, secs: u64) {
        self.now = self.t0 + S * secs as u32;
    }

    /// Run the hooks and collect the events queued so far.
    pub(super) fn pump(&mut self) {
        while let Some(out) = self.svc.poll_output() {
            match out {
                ServiceOutput::Hook(h) => h.run(),
                ServiceOutput::Event(e) => self.ev.push(e),
            }
        }
    }

    pub(super) fn tx(&mut self, cfg: TxConfig) -> TxId {
        let id = self.svc.new_transaction(cfg, self.now).unwrap();
        self.pump();
        id
    }

    pub(super) fn obj(&mut self, tx: &TxId, len: usize, chunk: usize) -> (RefId, Arc<BytesObject>) {
        let o = Arc::new(BytesObject::unplanned(vec![7u8; len], chunk));
        let rid = self.svc.add_object(tx, o.clone(), None, self.now).unwrap();
        self.pump();
        (rid, o)
    }

    pub(super) fn pull(&mut self, rcv: &str, rid: &RefId, state: Option<State>, cc: bool) -> Reply {
        let req = PullRequest {
            ref_id: rid.clone(),
            state,
            confirm_capable: cc.then_some(true),
        };
        let r = match self.svc.begin_pull(rcv, req, self.now) {
            Err(r) => r,
            Ok(t) => {
                let p = t.produce();
                self.svc.finish_pull(t, p, self.now)
            }
        };
        self.pump();
        r
    }

    /// Pull until a terminal reply (stop-and-wait, state echoed).
    pub(super) fn download(&mut self, rcv: &str, rid: &RefId, cc: bool) -> Reply {
        let mut state = None;
        loop {
            let r = self.pull(rcv, rid, state.take(), cc);
            match &r.body {
                Some(b) if b.status == ReplyStatus::Ok => state = b.state.clone(),
                _ => return r,
            }
        }
    }

    pub(super) fn confirm(&mut self, rcv: &str, rid: &RefId, st: DownloadStatus, nonce: &str) {
        let r = self.svc.confirm(rcv, rid, Some(st), Some(nonce), self.now);
        assert_eq!(r, Reply::ack());
        self.pump();
    }

    pub(super) fn cancel(&mut self, rcv: &str, rid: &RefId) {
        assert_eq!(self.svc.cancel(rcv, rid, self.now), Reply::ack());
        self.pump();
    }

    pub(super) fn fire(&mut self) {
        self.svc.handle_timeout(self.now);
        self.pump();
    }

    pub(super) fn events(&mut self) -> Vec<ServiceEvent> {
        self.pump();
        std::mem::take(&mut self.ev)
    }

    pub(super) fn done_events(&mut self) -> Vec<TransferOutcome> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                ServiceEvent::TransactionDone { outcome, .. } => Some(outcome),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn nonce(r: &Reply) -> String {
    r.body.as_ref().unwrap().confirm_nonce.clone().unwrap()
}

pub(super) fn status(r: &Reply) -> ReplyStatus {
    r.body.as_ref().unwrap().status
}
