//! The receiving side: [`download_object`] and its typed helpers, and source-failure notices.
//!
//! A download is ferry-core's [`Download`](ferry_core::Download) engine driven by one async
//! loop ([`run`]): requests go out through the cell, several at once when the producer
//! advertised a plan ([`requests`]); chunks go to the [`Consumer`](ferry_core::Consumer) on the
//! blocking pool, or right on the download task when it does not block ([`worker`]); timers and
//! progress come from the engine, and the loop stops on the engine's verdict, on the caller's
//! cancellation, or on a source-failure notice for this (source, ref).
//!
//! Modules, each using only those listed before it: [`options`] (what a caller sets and is
//! told), [`sleeps`] (whether a thread blocked), [`worker`], [`requests`], [`run`], [`typed`]
//! (downloads into the workspace's consumers), and [`notify`] (announcing a failed source to
//! receivers).

mod notify;
mod options;
mod requests;
mod run;
mod sleeps;
mod typed;
mod worker;

pub use notify::notify_source_failure;
pub use options::{DownloadOptions, DownloadProgress, ProgressFn};
pub use run::download_object;
pub use typed::{
    download_bytes, download_file, download_tensors, download_tensors_to_file, FileOptions,
};
