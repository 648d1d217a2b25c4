//! Request handlers: what a handler may return ([`IntoReply`]), the registry of handlers by
//! (channel, topic) with NVFlare's lookup order, and running one so that a panic becomes a
//! reply. Nothing here knows of connections.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

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

type HandlerFuture = Pin<Box<dyn Future<Output = Option<Message>> + Send>>;

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

/// Handlers by (channel, topic).
#[derive(Default)]
pub(crate) struct Handlers {
    map: RwLock<HashMap<(String, String), Arc<dyn Handler>>>,
}

impl Handlers {
    /// Register `handler` on (`channel`, `topic`), replacing any.
    pub fn register<F, Fut, R>(&self, channel: &str, topic: &str, handler: F)
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoReply + 'static,
    {
        self.map.write().unwrap_or_else(|e| e.into_inner()).insert(
            (channel.to_string(), topic.to_string()),
            Arc::new(FnHandler(handler)),
        );
    }

    /// Remove the handler registered on exactly (`channel`, `topic`).
    pub fn unregister(&self, channel: &str, topic: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(channel.to_string(), topic.to_string()));
    }

    /// The handler for (`channel`, `topic`): exact, then (channel, `*`), then (`*`, `*`).
    pub fn lookup(&self, channel: &str, topic: &str) -> Option<Arc<dyn Handler>> {
        let h = self.map.read().unwrap_or_else(|e| e.into_inner());
        h.get(&(channel.to_string(), topic.to_string()))
            .or_else(|| h.get(&(channel.to_string(), ANY.to_string())))
            .or_else(|| h.get(&(ANY.to_string(), ANY.to_string())))
            .cloned()
    }
}

/// Run a handler on `m`; a panic becomes a `process_exception` reply.
pub(crate) async fn run(h: Arc<dyn Handler>, m: Message) -> Option<Message> {
    use futures::FutureExt;
    // A panicking handler becomes a process_exception reply. The handler owns nothing that a
    // panic could leave half-updated for us: we only use its output.
    match std::panic::AssertUnwindSafe(h.call(m)).catch_unwind().await {
        Ok(r) => r,
        Err(p) => {
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
    }
}
