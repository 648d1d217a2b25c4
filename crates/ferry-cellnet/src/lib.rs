//! # ferry-cellnet — NVFlare-compatible cells
//!
//! Cells named by dotted FQCNs exchange request/reply and fire-and-forget messages on
//! (channel, topic) pairs, directly or routed through parent cells. The TCP wire is NVFlare
//! 2.9's F3 protocol (16-byte frame prefix, HELLO/READY, PING/PONG, msgpack `cn__*` headers,
//! FOBS payloads, forwarding with `cn__route`, the `sm__*` byte-stream protocol), so a Python
//! NVFlare cell can be the peer on either side of a connection. `stcp://` wraps the same
//! stream in mutual TLS (feature `tls`, on by default); `inproc://` pipes serve tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ferry_cellnet::CellnetError> {
//! use std::time::Duration;
//! use ferry_cellnet::{Cell, Message, ReturnCode};
//!
//! let server = Cell::new("server")?;
//! server.register_request_handler("task", "*", |req: Message| async move {
//!     Message::from_value(format!("hello {}", req.origin().unwrap_or("?")))
//! });
//! let url = server.listen("tcp://127.0.0.1:0").await?;
//! let site = Cell::new("site-1")?;
//! site.connect(&url).await?;
//! let reply = site
//!     .send_request("task", "greet", "server", Message::new(), Duration::from_secs(5))
//!     .await;
//! assert_eq!(reply.return_code(), ReturnCode::Ok);
//! assert_eq!(reply.value()?.as_str(), Some("hello site-1"));
//! site.shutdown().await;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Layout, top down (a module uses only the ones below it; docs/architecture.md draws it):
//! `cell` (the public [`Cell`], its builder, listeners and accept loops, shutdown) and
//! `connect` (connecting to a parent); `node` (what the cell does with each message: the
//! `Inbound` side of every connection); `request` (one path for requests and
//! fire-and-forget, plain or streamed), `reply`, `handlers`; `streams` (the `sm__*` machines
//! on connections) over `stream` (the sans-IO `SendStream` and `Reassembler`); `outbound`
//! (route, seal, queue); `connection` (one socket: the read loop, the `Inbound` trait),
//! `handshake` (HELLO/READY), `reader` and `writer` (the two halves of a socket), `held`
//! (the budget of unfinished data), `admission` (connection limits), `driver` (tcp, tls,
//! inproc); `router` (routing table, reply waiters), `envelope` (typed `cn__`/`sm__`
//! headers, the one builder of outgoing ones); and the wire: [`frame`] (prefix and decoder),
//! [`headers`] (header map), [`fobs`] (payload container), [`msgpack`] (zero-copy writer,
//! bounded scanner), `log_limit` (rate-limited complaints about peers).

mod admission;
mod cell;
mod clock;
mod connect;
mod connection;
mod driver;
mod envelope;
mod error;
pub mod fobs;
mod fqcn;
pub mod frame;
mod handlers;
mod handshake;
pub mod headers;
mod held;
mod joined;
mod limits;
mod log_limit;
mod message;
pub mod msgpack;
mod node;
mod outbound;
mod prefault;
mod reader;
mod reply;
mod request;
mod request_id;
mod return_code;
mod router;
mod segment;
mod stream;
mod streams;
#[cfg(test)]
mod testutil;
mod trust;
mod writer;

pub use cell::{Cell, CellBuilder, DEFAULT_SHUTDOWN_GRACE};
pub use connection::ConnectionInfo;
#[cfg(feature = "tls")]
pub use driver::tls::{common_name, TlsConfig};
pub use driver::Url;
pub use envelope::stream::data_type as stream_data_type;
pub use error::{CellnetError, Result, TlsFile};
pub use fobs::Fobs;
pub use fqcn::{validate as validate_fqcn, Fqcn, SERVER_ROOT};
pub use frame::FrameError;
pub use handlers::{IntoReply, ANY};
pub use headers::Headers;
pub use limits::{Limits, MIB, NVFLARE_MAX_FRAME_SIZE};
pub use message::{encoding, Message, Payload};
pub use msgpack::{MsgpackBody, MsgpackWriter};
pub use node::{BYE_TOPIC, CELLNET_CHANNEL};
pub use request::RequestOptions;
pub use return_code::ReturnCode;
pub use rmpv;
pub use router::PeerEvent;
pub use segment::{FileRegion, Segment};
pub use trust::Forwarding;
