//! Request handlers: what a handler may return ([`IntoReply`]), the registry of handlers by
//! (channel, topic) with NVFlare's lookup order, and running one so that a panic becomes a
//! reply. Nothing here knows of connections.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
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

/// Hashes a channel or topic name with FNV-1a and a final mix instead of SipHash (about 100
/// instructions a name; two lookups per request). Safe without SipHash's keyed defence:
/// only the names this cell's own code registers are ever inserted; a peer choosing the
/// channel and topic it sends only looks up, and cannot crowd a bucket.
pub(crate) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        // spread every byte into the high bits too (the table's control bytes use them)
        let h = (self.0 ^ (self.0 >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A map by channel or topic name.
type ByName<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// The handlers of one channel, by topic.
type Topics = ByName<Arc<dyn Handler>>;

/// Handlers by channel, then topic (nested, so a lookup by `&str` allocates nothing).
#[derive(Default)]
pub(crate) struct Handlers {
    map: RwLock<ByName<Topics>>,
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

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    fn answer(n: i64) -> impl Fn(Message) -> std::future::Ready<Message> + Send + Sync {
        move |_| std::future::ready(Message::new().with_header("n", n))
    }

    fn found(h: &Handlers, channel: &str, topic: &str) -> Option<i64> {
        let handler = h.lookup(channel, topic)?;
        match start(&*handler, Message::new()) {
            Started::Done(Some(m)) => m.headers.get("n").and_then(|v| v.as_i64()),
            _ => None,
        }
    }

    #[test]
    fn lookup_is_exact_then_any_topic_then_any_channel_among_many_names() {
        let h = Handlers::default();
        for i in 0..200 {
            h.register(&format!("ch{i}"), &format!("tp{i}"), answer(i));
        }
        h.register("ch7", ANY, answer(-7));
        h.register(ANY, ANY, answer(-1));
        for i in 0..200 {
            assert_eq!(found(&h, &format!("ch{i}"), &format!("tp{i}")), Some(i));
        }
        assert_eq!(found(&h, "ch7", "tp8"), Some(-7));
        assert_eq!(found(&h, "ch8", "tp7"), Some(-1));
        h.unregister(ANY, ANY);
        assert_eq!(found(&h, "ch8", "tp7"), None);
        assert_eq!(found(&h, "", ""), None);
    }

    #[test]
    fn names_that_differ_hash_apart() {
        let hash = |s: &str| BuildHasherDefault::<NameHasher>::default().hash_one(s);
        let names = [
            "", "a", "b", "ab", "ba", "a\0", "ch1", "ch10", "tp1", "tp01",
        ];
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                assert_ne!(hash(a), hash(b), "{a:?} {b:?}");
            }
        }
        assert_eq!(hash("topic"), hash("topic"));
    }
}
