//! What a connection's read loop must notice besides frames — the connection was closed here,
//! or its writer failed — as one atomic the loop reads per wakeup.
//!
//! Waiting on the two [`CancellationToken`]s themselves in the loop's `select!` cost a waiter
//! registration and removal per frame, each under the token's lock (about 0.6 µs of a
//! request/reply round trip's CPU); a small task waits on them instead and raises the alarm.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};

use futures::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The connection was closed here (or the cell shuts down).
pub(super) const CLOSED: u8 = 1;
/// A write to the peer failed.
pub(super) const BROKEN: u8 = 2;

/// The raised conditions ([`CLOSED`], [`BROKEN`]) and the waker of the loop that reads them.
#[derive(Default)]
pub(super) struct Alarm {
    raised: AtomicU8,
    waker: AtomicWaker,
}

impl Alarm {
    /// Watch `close` and `broken` (on a task of `tasks`, which ends when `close` is cancelled:
    /// the connection cancels it when it ends).
    pub(super) fn watch(
        tasks: &TaskTracker,
        close: &CancellationToken,
        broken: &CancellationToken,
    ) -> Arc<Alarm> {
        let alarm = Arc::new(Alarm::default());
        let (a, close, broken) = (Arc::clone(&alarm), close.clone(), broken.clone());
        tasks.spawn(async move {
            tokio::select! {
                _ = close.cancelled() => return a.raise(CLOSED),
                _ = broken.cancelled() => a.raise(BROKEN),
            }
            close.cancelled().await;
            a.raise(CLOSED);
        });
        alarm
    }

    fn raise(&self, what: u8) {
        self.raised.fetch_or(what, Ordering::AcqRel);
        self.waker.wake();
    }

    /// What is raised; the task of `cx` is woken when more is. `armed` is the caller's note
    /// of the waker it registered: while nothing is raised that waker stays here (only a
    /// raise takes it), so the same task's next poll registers nothing.
    pub(super) fn poll(&self, cx: &mut Context<'_>, armed: &mut Option<Waker>) -> u8 {
        let raised = self.raised.load(Ordering::Acquire);
        if raised == 0 && armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return 0;
        }
        // registered before the load: a raise after the load wakes this task
        self.waker.register(cx.waker());
        *armed = Some(cx.waker().clone());
        self.raised.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::ArcWake;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::Notify;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count {
        wakes: AtomicUsize,
        woke: Notify,
    }

    impl ArcWake for Count {
        fn wake_by_ref(c: &Arc<Self>) {
            c.wakes.fetch_add(1, Ordering::SeqCst);
            c.woke.notify_one();
        }
    }

    async fn until_woken(c: &Count, n: usize) {
        let wait = async {
            while c.wakes.load(Ordering::SeqCst) < n {
                c.woke.notified().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .expect("woken");
    }

    /// The loop's task is woken by each raise, the second included: a poll that finds its
    /// waker still registered registers nothing, and a raise takes the waker, so after one
    /// the next poll must register again.
    #[tokio::test]
    async fn every_raise_wakes_the_polling_task() {
        let (tasks, close, broken) = (
            TaskTracker::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let alarm = Alarm::watch(&tasks, &close, &broken);
        let count = Arc::new(Count::default());
        let waker = futures::task::waker(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut armed = None;
        assert_eq!(alarm.poll(&mut cx, &mut armed), 0);
        assert_eq!(alarm.poll(&mut cx, &mut armed), 0);
        broken.cancel();
        until_woken(&count, 1).await;
        assert_eq!(alarm.poll(&mut cx, &mut armed), BROKEN);
        close.cancel();
        until_woken(&count, 2).await;
        assert_eq!(alarm.poll(&mut cx, &mut armed), BROKEN | CLOSED);
        tasks.close();
        tasks.wait().await;
    }
}
