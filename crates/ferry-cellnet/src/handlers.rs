//! Request handlers: what a handler may return ([`IntoReply`]), the registry of handlers by
//! (channel, topic) with NVFlare's lookup order, and running one so that a panic becomes a
//! reply. Nothing here knows of connections.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use tracing::error;

use crate::message::Message;
use crate::return_code::ReturnCode;

/// Wildcard channel/topic for handler registration.
pub const ANY: &str = "*";

/// What a request handler may return.
///
/// - [`Message`]: the reply (`cn__return_code` defaults to `ok`);
/// - `Option<Message>`: `None` sends no reply at all (the requester times out), as a Python
///   callback returning `None`;
/// - `Result<Message, E>`: `Err(e)` becomes a `process_exception` reply with `e` as text.
pub trait IntoReply {
    /// Convert into the reply to send, `None` for no reply.
    fn into_reply(self) -> Option<Message>;
}

impl IntoReply for Message {
    fn into_reply(self) -> Option<Message> {
        Some(self)
    }
}

impl IntoReply for Option<Message> {
    fn into_reply(self) -> Option<Message> {
        self
    }
}

impl<E: std::fmt::Display> IntoReply for Result<Message, E> {
    fn into_reply(self) -> Option<Message> {
        Some(match self {
            Ok(m) => m,
            Err(e) => Message::error(ReturnCode::ProcessException, e.to_string()),
        })
    }
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Option<Message>> + Send>>;

/// A registered handler, type-erased.
pub(crate) trait Handler: Send + Sync {
    fn call(&self, m: Message) -> HandlerFuture;
}

struct FnHandler<F>(F);

impl<F, Fut, R> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply + 'static,
{
    fn call(&self, m: Message) -> HandlerFuture {
        let fut = (self.0)(m);
        Box::pin(async move { fut.await.into_reply() })
    }
}

/// The handlers of one channel, by topic.
type Topics = HashMap<String, Arc<dyn Handler>>;

/// Handlers by channel, then topic (nested, so a lookup by `&str` allocates nothing).
#[derive(Default)]
pub(crate) struct Handlers {
    map: RwLock<HashMap<String, Topics>>,
}

impl Handlers {
    /// Register `handler` on (`channel`, `topic`), replacing any.
    pub fn register<F, Fut, R>(&self, channel: &str, topic: &str, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(channel.to_string())
            .or_default()
            .insert(topic.to_string(), Arc::new(FnHandler(handler)));
    }

    /// Remove the handler registered on exactly (`channel`, `topic`).
    pub fn unregister(&self, channel: &str, topic: &str) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(topics) = map.get_mut(channel) {
            topics.remove(topic);
            if topics.is_empty() {
                map.remove(channel);
            }
        }
    }

    /// The handler for (`channel`, `topic`): exact, then (channel, `*`), then (`*`, `*`).
    pub fn lookup(&self, channel: &str, topic: &str) -> Option<Arc<dyn Handler>> {
        let h = self.map.read().unwrap_or_else(|e| e.into_inner());
        let get = |c: &str, t: &str| h.get(c).and_then(|topics| topics.get(t));
        get(channel, topic)
            .or_else(|| get(channel, ANY))
            .or_else(|| get(ANY, ANY))
            .cloned()
    }
}

/// Run a handler on `m`; a panic becomes a `process_exception` reply.
pub(crate) async fn run(h: Arc<dyn Handler>, m: Message) -> Option<Message> {
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(|| h.call(m))) {
        Ok(f) => f,
        Err(p) => return panicked(p),
    };
    finish(fut).await
}

/// A handler started by [`start`].
pub(crate) enum Started {
    /// It answered in its first step (`None`: no reply).
    Done(Option<Message>),
    /// It waits for something: [`finish`] runs the rest (on a task of its own).
    Pending(HandlerFuture),
}

/// Call a handler on `m` and run its first step now, on the caller's task: a handler that
/// answers at once costs no task of its own. A panic, in the call or in that step, becomes
/// a `process_exception` reply. The step is polled with a no-op waker: what it waits for
/// wakes nobody, and [`finish`] polls it again (registering its own waker) at once.
pub(crate) fn start(h: &dyn Handler, m: Message) -> Started {
    let first = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut fut = h.call(m);
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(r) => Started::Done(r),
            Poll::Pending => Started::Pending(fut),
        }
    }));
    first.unwrap_or_else(|p| Started::Done(panicked(p)))
}

/// Run a started handler to its end; a panic becomes a `process_exception` reply.
pub(crate) async fn finish(fut: HandlerFuture) -> Option<Message> {
    use futures::FutureExt;
    // The handler owns nothing that a panic could leave half-updated for us: we only use its
    // output.
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .unwrap_or_else(panicked)
}

/// The reply to a handler that panicked with `p`.
fn panicked(p: Box<dyn std::any::Any + Send>) -> Option<Message> {
    let what = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    error!("request handler panicked: {what}");
    Some(Message::error(
        ReturnCode::ProcessException,
        format!("handler panicked: {what}"),
    ))
}
