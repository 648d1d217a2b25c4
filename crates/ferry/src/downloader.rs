//! [`ObjectDownloader`]: one transaction and the objects in it (NVFlare's facade).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::{Downloadable, RefId, TxConfig, TxId};
use ferry_objects::{BytesObject, CacheOptions, FileObject, TensorDict, TensorDictObject};

use crate::error::DownloadError;
use crate::service::DownloadService;
use crate::waiter::TransferWaiter;

/// A transaction on a [`DownloadService`] and helpers to add the usual objects to it.
#[derive(Debug)]
pub struct ObjectDownloader {
    service: DownloadService,
    tx_id: TxId,
}

impl ObjectDownloader {
    /// Create the transaction.
    pub fn new(service: &DownloadService, cfg: TxConfig) -> Result<Self, DownloadError> {
        let tx_id = service.new_transaction(cfg)?;
        Ok(Self {
            service: service.clone(),
            tx_id,
        })
    }

    /// The transaction id.
    pub fn tx_id(&self) -> &TxId {
        &self.tx_id
    }

    /// The service.
    pub fn service(&self) -> &DownloadService {
        &self.service
    }

    /// Add any downloadable object; returns its ref id.
    pub fn add_object(&self, obj: Arc<dyn Downloadable>) -> Result<RefId, DownloadError> {
        self.service.add_object(&self.tx_id, obj, None)
    }

    /// Add an object under a ref id of the caller's choosing.
    pub fn add_object_with_id(
        &self,
        obj: Arc<dyn Downloadable>,
        ref_id: RefId,
    ) -> Result<RefId, DownloadError> {
        self.service.add_object(&self.tx_id, obj, Some(ref_id))
    }

    /// Add a file, read chunk by chunk with positioned reads, or, when the service's cell
    /// speaks plain TCP ([`Cell::sends_files_zero_copy`](ferry_cellnet::Cell::sends_files_zero_copy)),
    /// sent by the connections straight from the file (`sendfile(2)`, see
    /// [`FileObjectBuilder::file_chunks`](ferry_objects::FileObjectBuilder::file_chunks));
    /// `chunk_size` bytes per chunk. The
    /// file's BLAKE3 digest is computed now (one read of the file; none when this process
    /// already hashed the unchanged file for another transaction) and advertised, so ferry
    /// receivers verify what they wrote. A file that cannot be opened or read, or a chunk
    /// size out of range, is a [`DownloadError::Objects`].
    pub fn add_file(
        &self,
        path: impl AsRef<Path>,
        chunk_size: u64,
    ) -> Result<RefId, DownloadError> {
        let obj = FileObject::builder(path.as_ref())
            .chunk_size(chunk_size)
            .digest(true)
            .file_chunks(self.service.cell().sends_files_zero_copy())
            .open()?;
        self.add_object(Arc::new(obj))
    }

    /// Add an in-memory byte buffer (one chunk per MiB).
    pub fn add_bytes(&self, data: Bytes) -> Result<RefId, DownloadError> {
        self.add_object(Arc::new(BytesObject::new(data)))
    }

    /// Add a tensor dict, served tensor by tensor as one-tensor safetensors items (aliases once),
    /// each produced once for all the receivers the transaction expects. A dict that cannot be
    /// served is a [`DownloadError::Objects`].
    pub fn add_tensors(&self, dict: TensorDict) -> Result<RefId, DownloadError> {
        let obj = TensorDictObject::from_tensors(dict, CacheOptions::default())?;
        self.add_object(Arc::new(obj))
    }

    /// A waiter for this transaction's outcome.
    pub fn waiter(&self) -> TransferWaiter {
        self.service.waiter(&self.tx_id)
    }

    /// Delete the transaction now (downloads in progress fail).
    pub fn delete_transaction(&self) -> Result<(), DownloadError> {
        self.service.delete_transaction(&self.tx_id)
    }
}
