//! The network side of a download: pull requests in flight through the cell, their replies
//! handed to the engine, and the fire-and-forget confirms and cancels.

use std::time::Duration;

use ferry_cellnet::{Cell, Message, RequestOptions};
use ferry_core::message::{CHANNEL, TOPIC_DOWNLOAD};
use ferry_core::{Download, RequestId, ReturnCode};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;

use super::options::DownloadOptions;
use crate::codec;
use crate::runtime::now;

/// How long a confirm or cancel may take to leave (they are never answered in substance).
const FIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The requests of one download to one source.
pub(super) struct Requests {
    cell: Cell,
    source: String,
    /// Options of every pull.
    pull: RequestOptions,
    streamed: bool,
    inflight: FuturesUnordered<BoxFuture<'static, (RequestId, Message)>>,
}

impl Requests {
    pub(super) fn new(cell: Cell, source: &str, opts: &DownloadOptions) -> Self {
        Self {
            cell,
            source: source.to_string(),
            pull: RequestOptions {
                // The engine times a request out only when the source has been silent for
                // `per_request_timeout` (a paced sender answers the requests ahead of this
                // one first), so the cell's own bound must not be the one that counts.
                timeout: transport_timeout(opts),
                streamed: opts.streamed,
                optional: false,
            },
            streamed: opts.streamed,
            inflight: FuturesUnordered::new(),
        }
    }

    /// Send pull `request` as request `id`; its reply comes out of [`next`](Self::next).
    pub(super) fn send(&mut self, id: RequestId, request: &impl Serialize) {
        let cell = self.cell.clone();
        let source = self.source.clone();
        let msg = codec::request(request);
        let ropts = self.pull.clone();
        self.inflight.push(Box::pin(async move {
            let reply = cell
                .send_request_with(CHANNEL, TOPIC_DOWNLOAD, &source, msg, ropts)
                .await;
            (id, reply)
        }));
    }

    /// The next reply of a request in flight (pending while none is). Cancel-safe.
    pub(super) async fn next(&mut self) -> (RequestId, Message) {
        match self.inflight.next().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// Send a confirm or cancel without waiting for an answer (NVFlare sends them
    /// fire-and-forget). `&mut`: the requests in flight are not `Sync`, and the download
    /// future must stay `Send`.
    pub(super) async fn fire(&mut self, request: &impl Serialize) {
        let opts = RequestOptions {
            timeout: FIRE_TIMEOUT,
            streamed: self.streamed,
            optional: true,
        };
        let msg = codec::request(request);
        if let Err(e) = self
            .cell
            .fire_and_forget_with(CHANNEL, TOPIC_DOWNLOAD, &self.source, msg, opts)
            .await
        {
            tracing::debug!(error = %e, "confirm/cancel not sent");
        }
    }
}

/// Hand the reply to request `id` to the engine: `ok` with its body (which the engine decodes),
/// anything else with the sender's explanation and typed refusal.
pub(super) fn answer(dl: &mut Download, id: RequestId, reply: &Message) {
    let rc = codec::from_wire(&reply.return_code());
    tracing::trace!(?id, %rc, "reply");
    if rc != ReturnCode::Ok {
        if let Some(text) = reply.error_text() {
            tracing::debug!(%rc, error = text, "request failed");
        }
        // The sender's explanation travels into the failure (capped by the engine).
        return dl.reply_error(id, rc, reply.error_text(), codec::refusal(reply), now());
    }
    match codec::main_body(reply) {
        Ok(body) => dl.reply_payload(id, rc, Some(&body), now()),
        Err(e) => {
            tracing::warn!(error = %e, "undecodable reply");
            dl.reply_payload(id, rc, None, now())
        }
    }
}

/// The cell's bound on one request: past the engine's deadline even when the request was
/// queued behind every other request of the window at a paced sender.
fn transport_timeout(opts: &DownloadOptions) -> Duration {
    let window = u32::try_from(opts.window.clamp(1, ferry_core::download::MAX_WINDOW)).unwrap_or(1);
    opts.per_request_timeout
        .saturating_mul(window + 1)
        .saturating_add(Duration::from_secs(1))
}
