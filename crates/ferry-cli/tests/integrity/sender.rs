//! A ferry sender in the test process whose objects send whatever the test wants: other bytes
//! than the ticket pins, no plan, a lying plan, more bytes, or one chunk held back until the
//! test releases it.

use bytes::Bytes;
use ferry::cellnet::Cell;
use ferry::core::{
    ChunkData, Downloadable, PlanLayout, ProduceError, Produced, RefId, State, TransferPlan,
    TxConfig,
};
use ferry::objects::Pin;
use ferry::ticket::{Kind, Ticket};
use ferry::{DownloadService, ObjectDownloader, ServiceOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The sender: a cell listening on loopback with one open transaction.
pub struct Sender {
    rt: tokio::runtime::Runtime,
    cell: Cell,
    service: DownloadService,
    tx: ObjectDownloader,
    addr: String,
}

impl Sender {
    /// Listen on a free loopback port; the transaction accepts `receivers` receivers.
    pub fn start(receivers: usize) -> Sender {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (cell, service, tx, url) = rt.block_on(async {
            let cell = Cell::new("ferry-sender").unwrap();
            let url = cell.listen("tcp://127.0.0.1:0").await.unwrap();
            let service = DownloadService::new(&cell, ServiceOptions::default());
            let tx = ObjectDownloader::new(
                &service,
                TxConfig::new(Duration::from_secs(600)).with_num_receivers(receivers),
            )
            .unwrap();
            (cell, service, tx, url)
        });
        let addr = url.strip_prefix("tcp://").unwrap().to_string();
        Sender {
            rt,
            cell,
            service,
            tx,
            addr,
        }
    }

    /// Offer `obj`; returns its ref id.
    pub fn offer(&self, obj: Arc<dyn Downloadable>) -> RefId {
        let _g = self.rt.enter();
        self.tx.add_object(obj).unwrap()
    }

    /// A ticket for `rid` that pins `pin` under `name`.
    pub fn ticket(&self, rid: &RefId, kind: Kind, name: &str, pin: Pin) -> String {
        Ticket {
            tls: false,
            addr: self.addr.clone(),
            source: "ferry-sender".into(),
            ref_id: rid.to_string(),
            kind,
            name: name.into(),
            size: pin.size,
            blake3: pin.hex(),
        }
        .to_string()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.rt.block_on(async {
            self.service.shutdown().await;
            self.cell.shutdown().await;
        });
    }
}

/// One chunk the stream holds back until [`Gate::open`].
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
}

/// A byte stream in NVFlare's file states (`received_bytes`).
pub struct Stream {
    data: Bytes,
    chunk: usize,
    plan: Option<TransferPlan>,
    /// (offset, gate): the chunk at `offset` waits for the gate.
    gate: Option<(usize, Arc<Gate>)>,
    /// Bytes produced so far.
    pub produced: Arc<AtomicU64>,
}

impl Stream {
    /// `data` in `chunk`-byte chunks, no plan (as an NVFlare sender).
    pub fn new(data: Vec<u8>, chunk: usize) -> Stream {
        Stream {
            data: data.into(),
            chunk,
            plan: None,
            gate: None,
            produced: Arc::default(),
        }
    }

    /// Advertise a plan of `size` bytes with `digest` (true or not).
    pub fn with_plan(mut self, size: u64, digest: Option<String>) -> Stream {
        self.plan = Some(TransferPlan {
            layout: PlanLayout::Bytes {
                total: size,
                chunk: self.chunk as u64,
            },
            total_bytes: Some(size),
            blake3: digest,
        });
        self
    }

    /// Hold the chunk at `offset` back until `gate` opens.
    pub fn with_gate(mut self, offset: usize, gate: Arc<Gate>) -> Stream {
        self.gate = Some((offset, gate));
        self
    }
}

impl Downloadable for Stream {
    fn produce(&self, state: Option<&State>, _requester: &str) -> Result<Produced, ProduceError> {
        let n = state
            .and_then(|s| s.get_u64("received_bytes").ok().flatten())
            .unwrap_or(0) as usize;
        if n >= self.data.len() {
            return Ok(Produced::Eof);
        }
        if let Some((at, gate)) = &self.gate {
            if *at == n {
                gate.wait();
            }
        }
        let end = (n + self.chunk).min(self.data.len());
        self.produced.fetch_add((end - n) as u64, Ordering::Relaxed);
        Ok(Produced::Data {
            data: ChunkData::Bytes(self.data.slice(n..end)),
            state: State::new().with("received_bytes", end as u64),
        })
    }

    fn plan(&self) -> Option<TransferPlan> {
        self.plan.clone()
    }
}

/// BLAKE3 pin of `data`.
pub fn pin_of(data: &[u8]) -> Pin {
    Pin::new(data.len() as u64, blake3::hash(data))
}
