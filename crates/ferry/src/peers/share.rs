//! The receiver's side of peer-assisted mode: [`fetch_with_peers`] asks the sender which
//! source to pull a file ticket from, pulls it there, follows the scheduler's moves and
//! fails over (continuing from its position, the kept part), checks the ticket's pin as every
//! download does, and — when it offers to serve — serves what it has to other receivers while
//! it downloads and afterwards ([`Seeding`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_cellnet::{Cell, Message};
use ferry_core::peers::message::{
    decode, Answer, FailedRequest, JoinRequest, ReportRequest, ScheduleReply, CHANNEL,
    TOPIC_FAILED, TOPIC_JOIN, TOPIC_REPORT,
};
use ferry_core::peers::{Directive, PeerOffer, Source};
use ferry_core::{ChunkData, ConsumeError, Consumer, DownloadFailure, RefId, State, TxConfig};
use ferry_objects::verify::Verified;
use ferry_objects::{FileConsumer, ObjectsError, DEFAULT_CHUNK_SIZE, RECEIVED_BYTES};
use tokio_util::sync::CancellationToken;

use super::have::{Have, Tracked};
use super::part_source::PartSource;
use crate::client::{download_object, DownloadOptions, DownloadProgress, ProgressFn};
use crate::codec;
use crate::error::DownloadError;
use crate::fetch::{FetchOptions, Fetched};
use crate::service::DownloadService;
use crate::ticket::{Kind, Ticket};
use crate::ObjectDownloader;

/// How a receiver takes part in peer-assisted mode.
#[derive(Clone, Debug)]
pub struct ShareOptions {
    /// The URL this receiver's cell listens on, offered to the sender so that other receivers
    /// pull from it; `None` pulls from peers without serving.
    pub offer_url: Option<String>,
    /// How often the sender hears our position (and may move us).
    pub report_interval: Duration,
    /// Timeout of one scheduling request and of connecting to a peer.
    pub request_timeout: Duration,
    /// Once done, stop serving when the sender no longer answers and nobody pulled from us
    /// for this long.
    pub linger_idle: Duration,
    /// Source changes before the rest comes from the sender only.
    pub max_switches: usize,
    /// Make the received prefix durable every this many bytes (a move continues from the last
    /// durable point).
    pub sync_every: u64,
}

impl Default for ShareOptions {
    fn default() -> Self {
        Self {
            offer_url: None,
            report_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            linger_idle: Duration::from_secs(3),
            max_switches: 64,
            sync_every: 4 << 20,
        }
    }
}

/// What a peer-assisted download did, beside the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerReport {
    /// The sources pulled from, in order (`None`: the sender).
    pub sources: Vec<Option<String>>,
    /// Peers whose data failed the ticket's digest.
    pub lying_sources: Vec<String>,
    /// Whether the sender scheduled us (`false`: it does not do peer-assisted mode, or
    /// refused; everything came from it).
    pub scheduled: bool,
}

/// A finished peer-assisted download that keeps serving: see [`Seeding::serve_until_released`].
#[derive(Debug)]
pub struct Seeding {
    cell: Cell,
    ticket: Ticket,
    have: Arc<Have>,
    opts: ShareOptions,
    scheduled: bool,
    /// Keeps the serving transaction alive.
    _tx: Option<ObjectDownloader>,
}

impl Seeding {
    /// Bytes served to other receivers so far.
    pub fn bytes_served(&self) -> u64 {
        self.have.served().1
    }

    /// Keep serving until the sender releases us, or it no longer answers and nobody pulled
    /// from us for [`ShareOptions::linger_idle`], or `cancel`.
    pub async fn serve_until_released(self, cancel: &CancellationToken) -> u64 {
        if !self.scheduled {
            return self.bytes_served();
        }
        loop {
            let req = ReportRequest {
                ref_id: self.ticket.ref_id.clone(),
                position: self.have.size(),
                complete: true,
                served: self.opts.offer_url.is_some().then(|| self.bytes_served()),
            };
            let answer = ask(
                &self.cell,
                &self.ticket.source,
                TOPIC_REPORT,
                &req,
                &self.opts,
            )
            .await;
            match answer {
                Ok(Answer::Directive(Directive::Release)) => break,
                Ok(Answer::Directive(_)) => {}
                Ok(Answer::Pull(_)) | Ok(Answer::Refused(_)) | Err(_) => {
                    let idle = match self.have.served().0 {
                        Some(t) => t.elapsed() >= self.opts.linger_idle,
                        None => true,
                    };
                    if idle {
                        break;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.opts.report_interval) => {}
            }
        }
        self.bytes_served()
    }
}

/// Download the file of `ticket` into `dir` in peer-assisted mode on `service` (whose cell is
/// connected to the sender and, to serve, listens on `share.offer_url`). A sender that does
/// not schedule peers (an older ferry, NVFlare, `--no-peers`) is simply pulled from. Only
/// file tickets: anything else is [`DownloadError::Local`]. `opts.progress` counts bytes from
/// the start of the object (what this receiver has), across moves between sources; the part
/// is always kept between sources, and with `fetch.resume` a kept one is continued.
pub async fn fetch_with_peers(
    service: &DownloadService,
    ticket: &Ticket,
    dir: &Path,
    fetch: FetchOptions,
    opts: DownloadOptions,
    share: ShareOptions,
) -> Result<(Fetched, PeerReport, Seeding), DownloadError> {
    if ticket.kind != Kind::File {
        return Err(DownloadError::Local(format!(
            "{} is not a plain file: peer-assisted mode carries files only",
            ticket.name
        )));
    }
    let cell = service.cell().clone();
    let rid = RefId::new(ticket.ref_id.clone());
    let have = Have::new(ticket.size);
    let user_cancel = opts.cancel.clone().unwrap_or_default();
    let part = PartFile::locate(ticket, dir)?;
    if !fetch.resume {
        part.discard();
    }
    let mut consumer = part.open(ticket, &fetch, &share)?;
    let resumed_from = consumer.resumed_from();
    let tx = match &share.offer_url {
        Some(_) => {
            let tx = ObjectDownloader::new(service, TxConfig::new(Duration::MAX))?;
            let src = PartSource::new(Arc::clone(&have), DEFAULT_CHUNK_SIZE, ticket.pin().hex());
            tx.add_object_with_id(Arc::new(src), rid.clone())?;
            Some(tx)
        }
        None => None,
    };
    let offer = share.offer_url.as_ref().map(|url| PeerOffer {
        fqcn: cell.fqcn().as_str().to_string(),
        url: url.clone(),
    });
    let join = JoinRequest {
        ref_id: ticket.ref_id.clone(),
        position: resumed_from,
        offer,
    };
    let (mut source, mut scheduled) =
        match ask(&cell, &ticket.source, TOPIC_JOIN, &join, &share).await {
            Ok(Answer::Pull(s)) => (s, true),
            Ok(other) => {
                tracing::info!(answer = ?other, "the sender does not schedule peers for this ref");
                (Source::Origin, false)
            }
            Err(why) => {
                tracing::info!(%why, "no peer scheduling at the sender: pulling from it");
                (Source::Origin, false)
            }
        };
    let mut report = PeerReport {
        scheduled,
        ..PeerReport::default()
    };
    let mut connected: HashSet<String> = HashSet::new();
    let mut switches = 0usize;
    let done = loop {
        report.sources.push(source.peer_fqcn().map(str::to_string));
        have.reset();
        let reader = std::fs::File::open(consumer.part_path()).map_err(|e| ObjectsError::Io {
            context: format!("opening {} to serve it", consumer.part_path().display()),
            source: e,
        })?;
        have.set_file(reader, consumer.resumed_from());
        let target = match &source {
            Source::Origin => Ok(ticket.source.clone()),
            Source::Peer(p) => connect_peer(&cell, p, &mut connected, &share).await,
        };
        let outcome = match target {
            Err(why) => Err(Attempt::Unreachable(why)),
            Ok(target) => {
                let moved: Arc<Mutex<Option<Source>>> = Arc::default();
                let stop = user_cancel.child_token();
                let reporter = scheduled.then(|| {
                    tokio::spawn(follow(
                        cell.clone(),
                        ticket.clone(),
                        Arc::clone(&have),
                        share.clone(),
                        Arc::clone(&moved),
                        stop.clone(),
                    ))
                });
                let mut o = opts.clone();
                o.cancel = Some(stop.clone());
                o.resume_state = consumer.resume_state();
                // Progress counts from the start of the object, across sources.
                let base = consumer.resumed_from();
                o.progress = opts.progress.clone().map(|f| {
                    let shifted: ProgressFn = Arc::new(move |p: &DownloadProgress| {
                        let mut p = p.clone();
                        p.bytes_done += base;
                        f(&p)
                    });
                    shifted
                });
                let tracked = Tracked::new(consumer, Arc::clone(&have));
                let r = download_object(service, &target, &rid, tracked, o).await;
                stop.cancel();
                if let Some(t) = reporter {
                    let _ = t.await;
                }
                let moved = crate::runtime::lock(&moved).take();
                match r {
                    Ok(c) => Ok(c.inner),
                    Err(_) if user_cancel.is_cancelled() => {
                        return Err(DownloadError::Cancelled {
                            ref_id: ticket.ref_id.clone(),
                        })
                    }
                    Err(e) => Err(match moved {
                        Some(next) => Attempt::Moved(next),
                        None => Attempt::Failed(e),
                    }),
                }
            }
        };
        let failure = match outcome {
            Ok(c) => break c,
            Err(Attempt::Moved(next)) => {
                source = next;
                switches += 1;
                None
            }
            Err(Attempt::Unreachable(why)) => Some((why, false)),
            Err(Attempt::Failed(e)) => {
                if source == Source::Origin {
                    return Err(e);
                }
                let lied = e.failure().is_some_and(is_bad_data);
                Some((e.to_string(), lied))
            }
        };
        if let Some((why, lied)) = failure {
            let peer = source.peer_fqcn().unwrap_or_default().to_string();
            tracing::warn!(%peer, lied, %why, "peer source failed; moving on");
            if lied {
                report.lying_sources.push(peer);
                // What came from it cannot be told apart from the rest: start over.
                part.discard();
            }
            switches += 1;
            source = Source::Origin;
            if scheduled && switches <= share.max_switches {
                let req = FailedRequest {
                    ref_id: ticket.ref_id.clone(),
                    position: if lied { 0 } else { have.position() },
                    lied,
                    reason: why,
                };
                match ask(&cell, &ticket.source, TOPIC_FAILED, &req, &share).await {
                    Ok(Answer::Pull(s)) => source = s,
                    _ => scheduled = false,
                }
            }
        }
        if switches > share.max_switches {
            source = Source::Origin;
            scheduled = false;
        }
        consumer = part.open(
            ticket,
            &FetchOptions {
                resume: true,
                ..fetch
            },
            &share,
        )?;
    };
    let pulled_last_from_peer = report.sources.last().is_some_and(Option::is_some);
    if pulled_last_from_peer {
        confirm_at_origin(service, ticket, &rid, &opts).await;
    }
    let fetched = Fetched {
        path: done.final_path().to_path_buf(),
        verified: done.verified(),
        resumed_from,
        transferred: ticket.size.saturating_sub(resumed_from),
    };
    debug_assert!(matches!(fetched.verified, Verified::Pinned(_)));
    let seeding = Seeding {
        cell,
        ticket: ticket.clone(),
        have,
        opts: share,
        scheduled,
        _tx: tx,
    };
    Ok((fetched, report, seeding))
}

/// How one attempt at a source ended, short of success.
enum Attempt {
    /// The scheduler moved us.
    Moved(Source),
    /// The peer could not be reached or is not who the sender said.
    Unreachable(String),
    /// The download failed.
    Failed(DownloadError),
}

/// Failures that mean the source sent bad data (rather than none).
fn is_bad_data(f: &DownloadFailure) -> bool {
    matches!(
        f,
        DownloadFailure::CompletionFailed(_)
            | DownloadFailure::ConsumeFailed(_)
            | DownloadFailure::BadReply(_)
            | DownloadFailure::PlanMismatch(_)
            | DownloadFailure::PlanRefused(_)
    )
}

/// The part file of a ticket's download and its resume record.
struct PartFile {
    dir: PathBuf,
    base: String,
}

impl PartFile {
    fn locate(ticket: &Ticket, dir: &Path) -> Result<Self, DownloadError> {
        let (parent, base) = crate::fetch::destination(ticket, dir)?;
        Ok(Self { dir: parent, base })
    }

    /// Remove a kept part and its record (a fresh start).
    fn discard(&self) {
        for name in [
            format!("{}.part", self.base),
            format!("{}.part.ferry", self.base),
        ] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
    }

    /// Open the destination, resuming from a kept part when `fetch.resume`. The part is
    /// always kept on failure: a move to another source continues from it.
    fn open(
        &self,
        ticket: &Ticket,
        fetch: &FetchOptions,
        share: &ShareOptions,
    ) -> Result<FileConsumer, DownloadError> {
        Ok(FileConsumer::builder(&self.dir, &self.base)
            .overwrite(fetch.overwrite)
            .pin(ticket.pin())
            .keep_part_for_resume(true)
            .sync_every(share.sync_every.min(fetch.sync_every))
            .discard_other_part(fetch.discard_other_part)
            .origin(format!("{}/{}", ticket.source, ticket.ref_id))
            .open()?)
    }
}

/// Connect to a peer the sender named and check it is that cell (proven by its certificate
/// under TLS, as the sender is).
async fn connect_peer(
    cell: &Cell,
    peer: &PeerOffer,
    connected: &mut HashSet<String>,
    share: &ShareOptions,
) -> Result<String, String> {
    if connected.contains(&peer.url) && cell.is_connected(&peer.fqcn) {
        return Ok(peer.fqcn.clone());
    }
    let got = tokio::time::timeout(share.request_timeout, cell.connect(&peer.url))
        .await
        .map_err(|_| format!("connecting to {} timed out", peer.url))?
        .map_err(|e| format!("connecting to {}: {e}", peer.url))?;
    if got.as_str() != peer.fqcn {
        return Err(format!(
            "the peer at {} is {:?}, not {:?} as the sender said",
            peer.url,
            got.as_str(),
            peer.fqcn
        ));
    }
    connected.insert(peer.url.clone());
    Ok(peer.fqcn.clone())
}

/// While a download runs: report our position; when the scheduler moves us, record where to
/// and stop the download.
async fn follow(
    cell: Cell,
    ticket: Ticket,
    have: Arc<Have>,
    share: ShareOptions,
    moved: Arc<Mutex<Option<Source>>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(share.report_interval) => {}
        }
        let req = ReportRequest {
            ref_id: ticket.ref_id.clone(),
            position: have.position(),
            complete: false,
            served: share.offer_url.is_some().then(|| have.served().1),
        };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = ask(&cell, &ticket.source, TOPIC_REPORT, &req, &share) => a,
        };
        if let Ok(Answer::Directive(Directive::Switch(next))) = answer {
            tracing::info!(to = ?next.peer_fqcn(), "the sender moves us to another source");
            *crate::runtime::lock(&moved) = Some(next);
            stop.cancel();
            return;
        }
    }
}

/// Send one scheduling request to the sender.
async fn ask<T: serde::Serialize>(
    cell: &Cell,
    sender: &str,
    topic: &str,
    req: &T,
    share: &ShareOptions,
) -> Result<Answer, String> {
    let msg = codec::request(req);
    let reply = cell
        .send_request(CHANNEL, topic, sender, msg, share.request_timeout)
        .await;
    read_reply(&reply)
}

/// What the sender's reply to a scheduling request says: an error reply's code and text, or
/// its decoded [`ScheduleReply`] (refused unread above the request size limit).
pub(crate) fn read_reply(reply: &Message) -> Result<Answer, String> {
    let rc = reply.return_code();
    if !rc.is_ok() {
        return Err(format!(
            "{}{}",
            rc.as_str(),
            reply
                .error_text()
                .map(|t| format!(": {t}"))
                .unwrap_or_default()
        ));
    }
    let body = codec::main_body(reply).map_err(|e| e.to_string())?;
    decode::<ScheduleReply>(&body).map(ScheduleReply::answer)
}

/// Tell the sender we have its object: a pull at the end (answered EOF) and its confirmation,
/// so its transaction counts us as it counts a receiver that pulled everything from it.
async fn confirm_at_origin(
    service: &DownloadService,
    ticket: &Ticket,
    rid: &RefId,
    opts: &DownloadOptions,
) {
    let o = DownloadOptions {
        resume_state: Some(State::new().with(RECEIVED_BYTES, ticket.size)),
        window: 1,
        confirm: true,
        progress: None,
        ..opts.clone()
    };
    if let Err(e) = download_object(service, &ticket.source, rid, AtEnd, o).await {
        tracing::warn!(error = %e, "could not confirm the download to the sender (the file is verified and in place)");
    }
}

/// The consumer of the final pull: it expects EOF and nothing else.
struct AtEnd;

impl Consumer for AtEnd {
    fn consume(&mut self, _: &str, _: &State, _: ChunkData) -> Result<State, ConsumeError> {
        Err(ConsumeError::BadChunk(
            "the sender sent data past the end of the object".into(),
        ))
    }
    fn blocks(&self) -> bool {
        false
    }
    fn completed(&mut self, _: &str) -> Result<(), ConsumeError> {
        Ok(())
    }
    fn failed(&mut self, _: &str, _: &str) {}
}
