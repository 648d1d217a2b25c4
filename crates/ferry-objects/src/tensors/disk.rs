//! The on-disk tensor dict consumer: one `.safetensors` file, written incrementally.

use super::blob::decode_item;
use super::digest::DictMetadata;
use super::TensorPinCheck;
use crate::cacheable::ItemTracker;
use crate::names::{destination_path, publish};
use crate::small_writes;
use crate::verify::{Pin, Verified};
use crate::ObjectsError;
use ferry_core::{ChunkData, ConsumeError, Consumer, State, TransferPlan};
use safetensors::tensor::{Dtype, Metadata, TensorInfo};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Builds a [`SafetensorsFileConsumer`].
#[derive(Debug, Clone)]
pub struct SafetensorsFileConsumerBuilder {
    dir: PathBuf,
    name: String,
    overwrite: bool,
    tracker: ItemTracker,
    pin: Option<Pin>,
}

impl SafetensorsFileConsumerBuilder {
    /// Hold the sender to `pin` (size and tensor-dict digest, see
    /// [`tensor_dict_pin`](crate::tensors::tensor_dict_pin)): items are hashed as they
    /// arrive, tensor data beyond the pinned size fail at once, and nothing is written at the
    /// destination unless the digest matches.
    pub fn pin(mut self, pin: Pin) -> Self {
        self.pin = Some(pin);
        self
    }

    /// Replace an existing destination file (refused by default).
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }

    /// Use a tracker with a custom item limit.
    pub fn tracker(mut self, tracker: ItemTracker) -> Self {
        self.tracker = tracker;
        self
    }

    /// Check the name and destination and create the (unlinked) data spool file.
    pub fn open(self) -> Result<SafetensorsFileConsumer, ObjectsError> {
        let final_path = destination_path(&self.dir, &self.name, self.overwrite)?;
        // In the target directory (same file system, no tmpfs surprise), already unlinked: the
        // OS frees it whatever happens to this process.
        let spool = tempfile::tempfile_in(&self.dir).map_err(|e| {
            ObjectsError::io(
                format!("creating a spool file in {}", self.dir.display()),
                e,
            )
        })?;
        Ok(SafetensorsFileConsumer {
            part_path: self.dir.join(format!("{}.part", self.name)),
            final_path,
            overwrite: self.overwrite,
            spool: Some(spool),
            spool_end: 0,
            entries: Vec::new(),
            names: HashSet::new(),
            tracker: self.tracker,
            check: self.pin.map(TensorPinCheck::new),
            metadata: DictMetadata::new(),
            finished: false,
        })
    }
}

/// One tensor name and where its data sits in the spool file.
#[derive(Debug)]
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: u64,
    len: u64,
}

/// Writes a tensor dict object to `DIR/NAME` as one valid `.safetensors` file.
///
/// As items arrive (in any order) their tensor data are appended to an unlinked spool file in
/// `DIR` and their names, dtypes, shapes and offsets recorded; at completion the header is
/// built, header and data are written to `NAME.part`, which is fsynced and renamed atomically.
/// Memory stays at about one item plus a 1 MiB copy buffer. Aliased names are stored once in
/// the spool and written once per name in the file (the format has no aliasing). The dict's
/// `__metadata__` (carried by the first item) is written as the file's. A failure leaves
/// nothing at `DIR/NAME` and no `NAME.part`.
#[derive(Debug)]
pub struct SafetensorsFileConsumer {
    final_path: PathBuf,
    part_path: PathBuf,
    overwrite: bool,
    /// `None` once finished.
    spool: Option<File>,
    spool_end: u64,
    entries: Vec<Entry>,
    names: HashSet<String>,
    tracker: ItemTracker,
    check: Option<TensorPinCheck>,
    /// The dict's `__metadata__` (from the first item), written to the file's header.
    metadata: DictMetadata,
    finished: bool,
}

impl SafetensorsFileConsumer {
    /// A builder writing `dir/name`.
    pub fn builder(dir: impl AsRef<Path>, name: &str) -> SafetensorsFileConsumerBuilder {
        SafetensorsFileConsumerBuilder {
            dir: dir.as_ref().to_path_buf(),
            name: name.to_string(),
            overwrite: false,
            tracker: ItemTracker::new(),
            pin: None,
        }
    }

    /// What the file was checked against: meaningful once the download completed.
    pub fn verified(&self) -> Verified {
        self.check
            .as_ref()
            .map_or(Verified::Unverified, |c| Verified::Pinned(c.pin()))
    }

    /// Open a consumer for `dir/name` with default options.
    pub fn create(dir: impl AsRef<Path>, name: &str) -> Result<Self, ObjectsError> {
        Self::builder(dir, name).open()
    }

    /// The destination path.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Test hook: spool through another handle (e.g. `/dev/full`) to provoke OS errors.
    #[cfg(test)]
    pub(crate) fn replace_spool_for_test(&mut self, file: File) {
        self.spool = Some(file);
    }

    fn spool(&self) -> Result<&File, ConsumeError> {
        self.spool
            .as_ref()
            .ok_or_else(|| ConsumeError::Other("safetensors consumer already finished".into()))
    }

    fn io(&self, what: String, source: std::io::Error) -> ConsumeError {
        ConsumeError::Io {
            context: what,
            source,
        }
    }

    /// Header bytes (8-byte length + JSON padded to 8) and the entries in file order.
    fn header(&mut self) -> Result<Vec<u8>, ConsumeError> {
        // safetensors' own order: larger alignment first, then by name.
        self.entries
            .sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
        let mut offset = 0usize;
        let mut infos = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let len = e.len as usize;
            infos.push((
                e.name.clone(),
                TensorInfo {
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    data_offsets: (offset, offset + len),
                },
            ));
            offset += len;
        }
        let bad = |e: String| ConsumeError::Other(format!("building the safetensors header: {e}"));
        let dict_meta = (!self.metadata.is_empty()).then(|| {
            self.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        let meta = Metadata::new(dict_meta, infos).map_err(|e| bad(e.to_string()))?;
        let mut json = serde_json::to_vec(&meta).map_err(|e| bad(e.to_string()))?;
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        Ok(out)
    }

    fn write_part(&mut self) -> Result<(), ConsumeError> {
        let header = self.header()?;
        match std::fs::remove_file(&self.part_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(self.io(format!("removing stale {}", self.part_path.display()), e))
            }
        }
        let mut part = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&self.part_path)
            .map_err(|e| self.io(format!("creating {}", self.part_path.display()), e))?;
        let werr = |e| ConsumeError::Io {
            context: format!("writing {}", self.part_path.display()),
            source: e,
        };
        small_writes::write_all(&mut part, &header).map_err(werr)?;
        let spool = self.spool()?;
        let mut buf = vec![0u8; (1 << 20).min(self.spool_end.max(1) as usize)];
        for e in &self.entries {
            let mut done = 0u64;
            while done < e.len {
                let n = (buf.len() as u64).min(e.len - done) as usize;
                spool
                    .read_exact_at(&mut buf[..n], e.offset + done)
                    .map_err(|err| ConsumeError::Io {
                        context: "reading the spool file".into(),
                        source: err,
                    })?;
                small_writes::write_all(&mut part, &buf[..n]).map_err(werr)?;
                done += n as u64;
            }
        }
        part.sync_all()
            .map_err(|e| self.io(format!("fsync {}", self.part_path.display()), e))?;
        publish(&self.part_path, &self.final_path, self.overwrite)
    }

    fn cleanup(&mut self) {
        self.spool = None;
        self.entries.clear();
        if let Err(e) = std::fs::remove_file(&self.part_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(part = %self.part_path.display(), error = %e, "could not remove part file");
            }
        }
    }
}

impl Consumer for SafetensorsFileConsumer {
    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.tracker.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        false
    }

    fn consume(
        &mut self,
        _ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        if self.finished {
            return Err(ConsumeError::Other(
                "chunk after the download finished".into(),
            ));
        }
        for (index, blob) in self.tracker.accept(state, data)? {
            let mut item = decode_item(index, &blob)?;
            if let Some(m) = item.dict_metadata.take() {
                self.metadata = m;
            }
            for name in &item.names {
                if !self.names.insert(name.clone()) {
                    return Err(ConsumeError::Integrity(format!(
                        "item {index}: tensor name {name:?} already received"
                    )));
                }
            }
            let bytes = blob
                .get(item.data_start..item.data_start + item.data_len)
                .ok_or_else(|| {
                    ConsumeError::Integrity(format!("item {index}: tensor data beyond the blob"))
                })?;
            if let Some(c) = self.check.as_mut() {
                c.add(index, &item.names, item.dtype, &item.shape, bytes)?;
            }
            let offset = self.spool_end;
            small_writes::write_all_at(self.spool()?, bytes, offset).map_err(|e| {
                ConsumeError::Io {
                    context: format!("spooling item {index} for {}", self.final_path.display()),
                    source: e,
                }
            })?;
            self.spool_end += bytes.len() as u64;
            for name in item.names {
                self.entries.push(Entry {
                    name,
                    dtype: item.dtype,
                    shape: item.shape.clone(),
                    offset,
                    len: item.data_len as u64,
                });
            }
        }
        Ok(state.clone())
    }

    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError> {
        if self.finished {
            return Err(ConsumeError::Other("completed called twice".into()));
        }
        self.finished = true;
        let result = self
            .tracker
            .finish()
            .and_then(|count| match &self.check {
                Some(c) => c.finish(count, &self.metadata),
                None => Ok(()),
            })
            .and_then(|()| self.write_part());
        match result {
            Ok(()) => {
                self.spool = None;
                tracing::info!(ref_id, path = %self.final_path.display(), tensors = self.entries.len(), "safetensors file received");
                Ok(())
            }
            Err(e) => {
                self.cleanup();
                Err(e)
            }
        }
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        if self.finished {
            return;
        }
        tracing::warn!(ref_id, path = %self.final_path.display(), reason, "tensor download failed");
        self.finished = true;
        self.cleanup();
    }
}

impl Drop for SafetensorsFileConsumer {
    fn drop(&mut self) {
        if !self.finished {
            self.cleanup();
        }
    }
}
