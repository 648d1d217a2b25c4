//! The consumer's side of a download: the work the engine asks of it, run one piece at a time
//! in the engine's order — on tokio's blocking pool (it may write to disk), or right on the
//! download task for a chunk when the consumer's [`blocks`](Consumer::blocks) is false.

use std::collections::VecDeque;

use ferry_core::{ChunkData, ConsumeError, Consumer, Download, State, TransferPlan};
use tokio::task::JoinHandle;

use crate::runtime::{now, panic_text};

/// Work for the consumer, run in engine order.
pub(super) enum Work {
    Plan(TransferPlan),
    Consume {
        seq: u64,
        state: State,
        data: ChunkData,
    },
    Complete,
}

/// What the consumer said.
pub(super) enum Done {
    Plan(Result<(), ConsumeError>),
    Consumed(u64, Result<State, ConsumeError>),
    Completed(Result<(), ConsumeError>),
}

impl Done {
    /// Hand the consumer's answer to the engine.
    pub(super) fn tell(self, dl: &mut Download) {
        match self {
            Done::Plan(r) => dl.plan_result(r, now()),
            Done::Consumed(seq, r) => dl.consumed(seq, r, now()),
            Done::Completed(r) => dl.completion_result(r, now()),
        }
    }
}

/// The consumer's current piece of work: on the blocking pool, or already done on the
/// download task (a non-blocking consumer's chunk). Either gives the consumer back (`None` if
/// it panicked) with its answer.
enum Working<C> {
    Pool(JoinHandle<(Option<C>, Done)>),
    /// Boxed: consumers can be large, and this sits in every download future.
    Ready(Option<Box<(Option<C>, Done)>>),
}

/// A consumer and the work queued for it.
pub(super) struct Worker<C> {
    /// The ref, as the consumer's calls name it.
    rid: String,
    /// `None` while it works (it is on the blocking pool), and for good once it panicked.
    consumer: Option<C>,
    queue: VecDeque<Work>,
    working: Option<Working<C>>,
}

impl<C: Consumer + 'static> Worker<C> {
    pub(super) fn new(consumer: C, rid: &str) -> Self {
        Self {
            rid: rid.to_string(),
            consumer: Some(consumer),
            queue: VecDeque::new(),
            working: None,
        }
    }

    /// Queue `work` behind what is queued.
    pub(super) fn push(&mut self, work: Work) {
        self.queue.push_back(work);
    }

    /// If the consumer is idle and work is queued, start the next piece.
    pub(super) fn start(&mut self) {
        if self.working.is_some() || self.queue.is_empty() {
            return;
        }
        let Some(c) = self.consumer.take() else {
            return;
        };
        let Some(work) = self.queue.pop_front() else {
            self.consumer = Some(c);
            return;
        };
        let rid = self.rid.clone();
        // A non-blocking consumer takes its chunks right here; everything else (and every
        // plan and completion) goes to the blocking pool.
        let inline = matches!(work, Work::Consume { .. }) && !c.blocks();
        self.working = Some(if inline {
            Working::Ready(Some(Box::new(do_work(c, &rid, work))))
        } else {
            Working::Pool(tokio::task::spawn_blocking(move || do_work(c, &rid, work)))
        });
    }

    /// The answer to the piece of work in progress, once it is done (pending while idle).
    /// `Err` only when the runtime shuts down under the download: the consumer is then gone
    /// with its task. Cancel-safe.
    pub(super) async fn done(&mut self) -> Result<Done, String> {
        let joined = match self.working.as_mut() {
            Some(Working::Pool(h)) => h.await.map_err(|e| e.to_string()),
            Some(Working::Ready(r)) => r
                .take()
                .map(|b| *b)
                .ok_or_else(|| "consumer lost".to_string()),
            None => std::future::pending().await,
        };
        self.working = None;
        joined.map(|(c, done)| {
            self.consumer = c;
            done
        })
    }

    /// Let a piece of work in progress finish; the consumer, unless it panicked or was lost.
    pub(super) async fn finish(mut self) -> Option<C> {
        let last = match self.working.take() {
            Some(Working::Pool(h)) => h.await.ok(),
            Some(Working::Ready(r)) => r.map(|b| *b),
            None => None,
        };
        if let Some((c, _)) = last {
            self.consumer = c;
        }
        self.consumer
    }
}

/// Run `work` on consumer `c`. A panic becomes the answer to that piece of work ("consumer
/// panicked: ..."), so the engine fails the download with the panic's message; the consumer
/// is then gone (`None`) and nobody calls it again.
fn do_work<C: Consumer>(c: C, rid: &str, work: Work) -> (Option<C>, Done) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let panicked = |p: Box<dyn std::any::Any + Send>| {
        ConsumeError::Other(format!("consumer panicked: {}", panic_text(&*p)))
    };
    let mut c = c;
    let done = match work {
        Work::Plan(p) => match catch_unwind(AssertUnwindSafe(|| c.plan_received(&p))) {
            Ok(r) => Done::Plan(r),
            Err(e) => return (None, Done::Plan(Err(panicked(e)))),
        },
        Work::Consume { seq, state, data } => {
            match catch_unwind(AssertUnwindSafe(|| c.consume(rid, &state, data))) {
                Ok(r) => Done::Consumed(seq, r),
                Err(e) => return (None, Done::Consumed(seq, Err(panicked(e)))),
            }
        }
        Work::Complete => match catch_unwind(AssertUnwindSafe(|| c.completed(rid))) {
            Ok(r) => Done::Completed(r),
            Err(e) => return (None, Done::Completed(Err(panicked(e)))),
        },
    };
    (Some(c), done)
}
