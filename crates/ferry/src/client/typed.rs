//! Downloads into the workspace's own consumers: bytes, a file, a tensor dict in memory or in
//! a `.safetensors` file.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_core::RefId;
use ferry_objects::{
    BytesConsumer, FileConsumer, SafetensorsFileConsumer, TensorDict, TensorDictConsumer,
};

use super::options::DownloadOptions;
use super::run::download_object;
use crate::error::DownloadError;
use crate::service::DownloadService;

/// Download an in-memory object (a `BytesObject` on the sender).
pub async fn download_bytes(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    opts: DownloadOptions,
) -> Result<Bytes, DownloadError> {
    let mut c = download_object(service, source, ref_id, BytesConsumer::new(), opts).await?;
    c.take()
        .ok_or_else(|| DownloadError::Local("download completed without data".into()))
}

/// How [`download_file`] treats the destination.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileOptions {
    /// Replace an existing file at the final path (default: refuse).
    pub overwrite: bool,
    /// Keep `NAME.part` on failure and continue from it next time.
    pub resume: bool,
}

/// Download a file into `dir/name` (written as `name.part`, verified, fsynced, renamed);
/// returns the final path. Nothing is left at the final path on failure. A destination that
/// cannot be used (it exists and `overwrite` is off, the name is not a plain relative name,
/// the directory is missing or not writable) fails before anything is requested, with
/// [`DownloadError::Objects`].
pub async fn download_file(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    dir: impl AsRef<Path>,
    name: &str,
    file: FileOptions,
    mut opts: DownloadOptions,
) -> Result<PathBuf, DownloadError> {
    let consumer = FileConsumer::builder(dir.as_ref(), name)
        .overwrite(file.overwrite)
        .keep_part_for_resume(file.resume)
        .open()?;
    if file.resume && opts.resume_state.is_none() {
        opts.resume_state = consumer.resume_state();
    }
    let c = download_object(service, source, ref_id, consumer, opts).await?;
    Ok(c.final_path().to_path_buf())
}

/// Download a tensor dict into memory.
pub async fn download_tensors(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    opts: DownloadOptions,
) -> Result<TensorDict, DownloadError> {
    let mut c = download_object(service, source, ref_id, TensorDictConsumer::new(), opts).await?;
    c.take()
        .ok_or_else(|| DownloadError::Local("download completed without tensors".into()))
}

/// Download a tensor dict straight into one `.safetensors` file at `dir/name` (written
/// incrementally, never whole in memory); returns the final path. An unusable destination
/// fails before anything is requested, with [`DownloadError::Objects`] (as for
/// [`download_file`]).
pub async fn download_tensors_to_file(
    service: &DownloadService,
    source: &str,
    ref_id: &RefId,
    dir: impl AsRef<Path>,
    name: &str,
    overwrite: bool,
    opts: DownloadOptions,
) -> Result<PathBuf, DownloadError> {
    let consumer = SafetensorsFileConsumer::builder(dir.as_ref(), name)
        .overwrite(overwrite)
        .open()?;
    let c = download_object(service, source, ref_id, consumer, opts).await?;
    Ok(c.final_path().to_path_buf())
}
