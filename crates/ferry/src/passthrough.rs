//! Pass-through refs: an application forwards a reference to an object through intermediate
//! cells without downloading it; the final receiver pulls from the origin, its requests routed
//! through the cells between them.
//!
//! This is NVFlare's pass-through (its `LazyDownloadRef`): a hop that relays a message does not
//! materialise the large objects in it, it re-emits the original reference (the origin's FQCN
//! and ref id), and the cell that finally uses the object downloads it directly from its source.
//! In ferry an [`ObjectRef`] is that reference: the origin makes one for each object it adds to
//! a transaction and puts it into any message ([`ObjectRef::to_value`]); an intermediate cell
//! reads it back ([`ObjectRef::from_value`]) and forwards it unchanged — it opens no transaction
//! and pulls nothing; the final receiver resolves it ([`ObjectRef::fetch_bytes`],
//! [`ObjectRef::fetch_file`]) against the origin. The origin's transaction counts the final
//! receivers (declare them with `with_receiver_ids`, or a count), never the hops.
//!
//! The pulls travel the cellnet's routes: a job cell `site-1.job7` connected only to `site-1`,
//! itself connected to `server`, pulls from `server` through `site-1` (a cell forwards for the
//! cells below it, see `docs/security.md`). A ref may carry the object's size and BLAKE3
//! ([`ObjectRef::pinned`]); the final receiver then holds the origin to it as `ferry get` holds
//! a sender to a ticket, whatever the hops in between.
//!
//! ```no_run
//! # async fn f(server: &ferry::DownloadService, job: &ferry::DownloadService, tx: &ferry::ObjectDownloader) -> Result<(), ferry::DownloadError> {
//! use ferry::passthrough::ObjectRef;
//! use ferry::prelude::*;
//! let data = Bytes::from_static(b"weights");
//! let rid = tx.add_bytes(data.clone())?;
//! // origin: into a message
//! let r = ObjectRef::new(server.cell().fqcn().as_str(), &rid).pinned(data.len() as u64, blake3::hash(&data));
//! let msg = Message::from_value(r.to_value());
//! // intermediate: out of the message and on, untouched
//! let fwd = Message::from_value(ObjectRef::from_value(&msg.value().unwrap())?.to_value());
//! // final receiver: pull from the origin, routed through the intermediate
//! let got = ObjectRef::from_value(&fwd.value().unwrap())?
//!     .fetch_bytes(job, DownloadOptions::default())
//!     .await?;
//! assert_eq!(got, data);
//! # Ok(()) }
//! ```

use bytes::Bytes;
use ferry_cellnet::rmpv::Value;
use ferry_core::{ChunkData, ConsumeError, Consumer, RefId, State, TransferPlan};
use ferry_objects::verify::Pin;
use ferry_objects::BytesConsumer;

use crate::client::{download_object, DownloadOptions};
use crate::error::DownloadError;
use crate::fetch::{Fetch, FetchOptions, Fetched};
use crate::service::DownloadService;
use crate::ticket::{Kind, Ticket};

/// Longest ref id a ref may carry (ferry's are `R` + a UUID; NVFlare's are UUIDs).
const MAX_REF_ID: usize = 256;

/// A reference to an object a [`DownloadService`] serves, to carry inside application
/// messages (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// The FQCN of the cell that serves the object (the origin).
    pub source: String,
    /// The object's ref id in the origin's transaction.
    pub ref_id: RefId,
    /// Size and BLAKE3 digest, when the origin pinned them.
    pub pin: Option<Pin>,
}

impl ObjectRef {
    /// A ref to `ref_id` served by the cell `source`.
    pub fn new(source: &str, ref_id: &RefId) -> Self {
        Self {
            source: source.to_string(),
            ref_id: ref_id.clone(),
            pin: None,
        }
    }

    /// This ref, pinning the object's size and BLAKE3 digest (of its bytes).
    pub fn pinned(mut self, size: u64, blake3: blake3::Hash) -> Self {
        self.pin = Some(Pin::new(size, blake3));
        self
    }

    /// The msgpack map a message carries: `{"fqcn", "ref_id"}` and, when pinned, `"size"` and
    /// `"b3"` (hex).
    pub fn to_value(&self) -> Value {
        let mut map = vec![
            (Value::from("fqcn"), Value::from(self.source.as_str())),
            (Value::from("ref_id"), Value::from(self.ref_id.as_str())),
        ];
        if let Some(p) = self.pin {
            map.push((Value::from("size"), Value::from(p.size)));
            map.push((Value::from("b3"), Value::from(p.hex())));
        }
        Value::Map(map)
    }

    /// Read a ref out of a message value, checking every field (a valid FQCN, a ref id of at
    /// most 256 bytes, a size and a 64-hex-digit digest together or neither). Nothing is
    /// downloaded.
    pub fn from_value(v: &Value) -> Result<Self, DownloadError> {
        let bad = |why: String| DownloadError::Protocol(format!("not an object ref: {why}"));
        let Value::Map(map) = v else {
            return Err(bad("not a map".into()));
        };
        let get = |k: &str| {
            map.iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v)
        };
        let source = get("fqcn")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"fqcn\" string".into()))?;
        ferry_core::validate_fqcn(source).map_err(|e| bad(format!("fqcn: {e}")))?;
        let rid = get("ref_id")
            .and_then(Value::as_str)
            .filter(|r| !r.is_empty() && r.len() <= MAX_REF_ID)
            .ok_or_else(|| bad(format!("no \"ref_id\" string of 1 to {MAX_REF_ID} bytes")))?;
        let pin = match (get("size"), get("b3")) {
            (None, None) => None,
            (Some(size), Some(b3)) => {
                let size = size
                    .as_u64()
                    .ok_or_else(|| bad("\"size\" is not an unsigned integer".into()))?;
                let hex = b3
                    .as_str()
                    .filter(|h| h.len() == 64)
                    .ok_or_else(|| bad("\"b3\" is not 64 hex digits".into()))?;
                Some(Pin::from_hex(size, hex).map_err(|e| bad(e.to_string()))?)
            }
            _ => return Err(bad("\"size\" and \"b3\" go together".into())),
        };
        Ok(Self {
            source: source.to_string(),
            ref_id: RefId::new(rid.to_string()),
            pin,
        })
    }

    /// Pull the object into memory from its origin, over whatever route the service's cell has
    /// to it. A pinned ref is held to its pin (size enforced as bytes arrive, digest checked
    /// before success is confirmed); an unpinned one to at most `max_size` bytes
    /// (BytesConsumer's default limit).
    pub async fn fetch_bytes(
        &self,
        service: &DownloadService,
        opts: DownloadOptions,
    ) -> Result<Bytes, DownloadError> {
        let consumer = PinnedBytes {
            inner: match self.pin {
                Some(p) => BytesConsumer::with_max_size(p.size),
                None => BytesConsumer::new(),
            },
            pin: self.pin,
            data: None,
        };
        let mut c = download_object(service, &self.source, &self.ref_id, consumer, opts).await?;
        c.data
            .take()
            .ok_or_else(|| DownloadError::Local("download completed without data".into()))
    }

    /// Pull the object into the file `dir/name` from its origin, routed like
    /// [`fetch_bytes`](Self::fetch_bytes). The ref must be pinned: the file is verified
    /// against it like a ticket's (nothing at the final path otherwise).
    pub async fn fetch_file(
        &self,
        service: &DownloadService,
        dir: &std::path::Path,
        name: &str,
        fetch: FetchOptions,
        opts: DownloadOptions,
    ) -> Result<Fetched, DownloadError> {
        let pin = self.pin.ok_or_else(|| {
            DownloadError::Local(format!(
                "the ref {} of {} has no pin: fetch it with fetch_bytes, or pin it at the origin",
                self.ref_id, self.source
            ))
        })?;
        let ticket = Ticket {
            tls: false,
            // Unused: the pull goes by cell name, over the routes the cell has.
            addr: String::new(),
            source: self.source.clone(),
            ref_id: self.ref_id.to_string(),
            kind: Kind::File,
            name: name.to_string(),
            size: pin.size,
            blake3: pin.hex(),
        };
        Fetch::open(&ticket, dir, fetch)
            .await?
            .run(service, opts)
            .await
    }
}

/// A bytes consumer held to a pin: the digest is checked in `completed`, so a mismatch is
/// confirmed FAILED to the origin.
struct PinnedBytes {
    inner: BytesConsumer,
    pin: Option<Pin>,
    data: Option<Bytes>,
}

impl Consumer for PinnedBytes {
    fn consume(
        &mut self,
        ref_id: &str,
        state: &State,
        data: ChunkData,
    ) -> Result<State, ConsumeError> {
        self.inner.consume(ref_id, state, data)
    }

    fn plan_received(&mut self, plan: &TransferPlan) -> Result<(), ConsumeError> {
        self.inner.plan_received(plan)
    }

    fn needs_order(&self) -> bool {
        self.inner.needs_order()
    }

    fn blocks(&self) -> bool {
        self.inner.blocks()
    }

    fn completed(&mut self, ref_id: &str) -> Result<(), ConsumeError> {
        self.inner.completed(ref_id)?;
        let data = self
            .inner
            .take()
            .ok_or_else(|| ConsumeError::Other("no data".into()))?;
        if let Some(pin) = self.pin {
            let got = blake3::hash(&data);
            if data.len() as u64 != pin.size || got != pin.blake3 {
                return Err(ConsumeError::Integrity(format!(
                    "{} bytes with BLAKE3 {} arrived, the ref pins {pin}",
                    data.len(),
                    got.to_hex()
                )));
            }
        }
        self.data = Some(data);
        Ok(())
    }

    fn failed(&mut self, ref_id: &str, reason: &str) {
        self.inner.failed(ref_id, reason);
    }
}
