//! # ferry — pull-based distribution of large objects over NVFlare-compatible cells
//!
//! The sender registers objects in a transaction on its [`DownloadService`] and hands out ref
//! ids (in any message of its own); each receiver pulls the object chunk by chunk with
//! [`download_object`] (or [`download_file`], [`download_tensors`], [`download_bytes`]). The
//! service frees an object when every expected receiver confirmed it, or when the transaction
//! times out or is deleted, and reports a [`TransferOutcome`](ferry_core::TransferOutcome).
//!
//! ```
//! use ferry::prelude::*;
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The sender: a cell, its download service, a transaction with one object.
//!     let server = Cell::new("server")?;
//!     let url = server.listen("tcp://127.0.0.1:0").await?;
//!     let sender = DownloadService::new(&server, ServiceOptions::default());
//!     let config = TxConfig::new(Duration::from_secs(30)).with_num_receivers(1);
//!     let tx = ObjectDownloader::new(&sender, config)?;
//!     let rid = tx.add_bytes(Bytes::from_static(b"weights"))?;
//!
//!     // A receiver: its own cell connected to the sender, pulling the ref.
//!     let site = Cell::new("site-1")?;
//!     site.connect(&url).await?;
//!     let receiver = DownloadService::new(&site, ServiceOptions::default());
//!     let got = download_bytes(&receiver, "server", &rid, DownloadOptions::default()).await?;
//!     assert_eq!(&got[..], b"weights");
//!
//!     let outcome = tx.waiter().wait().await.expect("recorded");
//!     assert!(outcome.completed());
//!     receiver.shutdown().await;
//!     sender.shutdown().await;
//!     site.shutdown().await;
//!     server.shutdown().await;
//!     Ok(())
//! }
//! ```
//!
//! Layers (arrows point down): `ferry` (this crate: the async glue) →
//! [`ferry_core`] (sans-IO engines), [`ferry_cellnet`] (cells, F3 wire), [`ferry_objects`]
//! (files, caches, tensors). All three are re-exported.

mod budget;
mod client;
mod codec;
mod dispatch;
mod downloader;
mod error;
pub mod fetch;
pub mod fetch_set;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod manifest;
pub mod passthrough;
pub mod peers;
mod produce;
pub mod relay;
mod runtime;
mod service;
mod source_failures;
pub mod ticket;
mod waiter;

pub use budget::{BudgetPermit, ByteBudget, ShareKey};
pub use client::{
    download_bytes, download_file, download_object, download_tensors, download_tensors_to_file,
    notify_source_failure, DownloadOptions, DownloadProgress, FileOptions, ProgressFn,
};
pub use downloader::ObjectDownloader;
pub use error::DownloadError;
pub use service::{DownloadService, Retained, ServiceOptions};
pub use waiter::TransferWaiter;

pub use ferry_cellnet as cellnet;
pub use ferry_core as core;
pub use ferry_objects as objects;

/// One import for application code.
pub mod prelude {
    pub use crate::{
        download_bytes, download_file, download_object, download_tensors, download_tensors_to_file,
        notify_source_failure, DownloadError, DownloadOptions, DownloadProgress, DownloadService,
        FileOptions, ObjectDownloader, ServiceOptions, TransferWaiter,
    };
    /// The byte buffer objects are made of and downloads return (the `bytes` crate's).
    pub use bytes::Bytes;
    pub use ferry_cellnet::{Cell, Message, ReturnCode as WireReturnCode};
    pub use ferry_core::service::ServiceEvent;
    pub use ferry_core::{
        ChunkData, ConsumeError, Consumer, DoneStatus, DownloadFailure, DownloadStatus,
        Downloadable, OutcomeStatus, ProduceError, Produced, RefId, Refusal, State,
        TransferOutcome, TxConfig, TxId,
    };
    pub use ferry_objects::{BytesObject, FileObject, Tensor, TensorDict, TensorDictObject};
    pub use tokio_util::sync::CancellationToken;
}
