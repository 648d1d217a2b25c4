//! Per-chunk verification for relays: the BLAKE3 chaining values of an object's 1 MiB groups.
//!
//! BLAKE3 is a tree: an aligned, power-of-two range of the input that does not hold the whole
//! input is a subtree, whose chaining value can be computed alone (`blake3::hazmat`). The
//! *outboard* of an object is the chaining value of each [`GROUP`]-byte group (the last may be
//! shorter). Merging them the way BLAKE3 builds its tree gives the root — the digest a ticket
//! pins — so an outboard is checked against the ticket in microseconds, and from then on each
//! group is checked alone as soon as its bytes arrived: a relay serves a group only after that.
//! 32 bytes per MiB: 4.5 MiB for a 140 GiB object.
//!
//! A sender answers requests for outboards on [`CHANNEL`]/[`TOPIC`] (`{"ref_id"}` →
//! `{"size", "group", "cvs"}`) when it registered an [`OutboardIndex`] on its cell; `ferry serve`
//! and `ferry relay` do. A sender that does not (an NVFlare cell, an older ferry) leaves the
//! relay with the whole-object check only.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use ferry_cellnet::rmpv::Value;
use ferry_cellnet::{Cell, Message, ReturnCode};

/// Bytes per group (a power of two, a multiple of BLAKE3's 1 KiB leaf).
pub const GROUP: u64 = 1 << 20;
/// The channel of outboard requests.
pub const CHANNEL: &str = "ferry_relay";
/// The topic of outboard requests.
pub const TOPIC: &str = "outboard";

/// The chaining values of an object's groups (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outboard {
    size: u64,
    cvs: Vec<ChainingValue>,
}

/// Number of groups of an object of `size` bytes (at least one).
fn groups(size: u64) -> u64 {
    size.div_ceil(GROUP).max(1)
}

impl Outboard {
    /// Compute the outboard of the first `size` bytes of `file` (reads them once).
    pub fn compute(file: &File, size: u64) -> std::io::Result<Self> {
        let mut buf = vec![0u8; GROUP.min(size.max(1)) as usize];
        let mut cvs = Vec::with_capacity(groups(size) as usize);
        for i in 0..groups(size) {
            let start = i * GROUP;
            let len = (size - start).min(GROUP) as usize;
            file.read_exact_at(&mut buf[..len], start)?;
            cvs.push(group_cv_sized(i, &buf[..len], size));
        }
        Ok(Self { size, cvs })
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root: the object's BLAKE3 digest.
    pub fn root(&self) -> blake3::Hash {
        if self.size <= GROUP {
            // One group is the whole input: its CV here is the root hash's bytes.
            return blake3::Hash::from_bytes(self.cvs[0]);
        }
        match merge(&self.cvs, 0, self.size, true) {
            Merged::Root(h) => h,
            Merged::Cv(_) => unreachable!("a merge of more than one group at the top is a root"),
        }
    }

    /// Whether `data`, the whole of group `i`, is what the outboard says (never for a group
    /// beyond the object).
    pub fn check(&self, i: u64, data: &[u8]) -> bool {
        if i >= groups(self.size) {
            return false;
        }
        let (start, end) = self.range(i);
        data.len() as u64 == end - start
            && self.cvs.get(i as usize) == Some(&group_cv_sized(i, data, self.size))
    }

    /// The group range `[start, end)` of group `i` (empty at the object's end for a group
    /// beyond it).
    pub fn range(&self, i: u64) -> (u64, u64) {
        let start = i.saturating_mul(GROUP).min(self.size);
        (start, start.saturating_add(GROUP).min(self.size))
    }

    /// The groups that `[start, end)` touches.
    pub fn groups_of(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        if start >= end {
            return 0..0;
        }
        start / GROUP..end.div_ceil(GROUP)
    }

    /// The message value of a reply.
    pub fn to_value(&self) -> Value {
        let cvs: Vec<u8> = self.cvs.iter().flatten().copied().collect();
        Value::Map(vec![
            (Value::from("size"), Value::from(self.size)),
            (Value::from("group"), Value::from(GROUP)),
            (Value::from("cvs"), Value::Binary(cvs)),
        ])
    }

    /// Read a reply for an object pinned at `size` bytes: the group size must be this
    /// version's, the size the pinned one, and the values exactly one per group (the reply is
    /// checked against the pin by the caller, with [`root`](Self::root)).
    pub fn from_value(v: &Value, size: u64) -> Result<Self, String> {
        let Value::Map(map) = v else {
            return Err("an outboard reply is not a map".into());
        };
        let get = |k: &str| {
            map.iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .map(|(_, v)| v)
        };
        if get("size").and_then(Value::as_u64) != Some(size) {
            return Err(format!("the outboard is not for {size} bytes"));
        }
        if get("group").and_then(Value::as_u64) != Some(GROUP) {
            return Err(format!("the outboard's group size is not {GROUP}"));
        }
        let bytes = get("cvs")
            .and_then(Value::as_slice)
            .ok_or("the outboard has no chaining values")?;
        if bytes.len() as u64 != groups(size) * 32 {
            return Err(format!(
                "the outboard has {} bytes of chaining values, not {}",
                bytes.len(),
                groups(size) * 32
            ));
        }
        let cvs = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut cv = [0u8; 32];
                cv.copy_from_slice(c);
                cv
            })
            .collect();
        Ok(Self { size, cvs })
    }
}

impl Outboard {
    /// Read the outboard reply `v` (the reply message's value) for the object a ticket pins at
    /// `size` bytes and BLAKE3 `root`: [`from_value`](Self::from_value), then the chaining
    /// values merged and compared with the pinned root. This is what a relay accepts from an
    /// upstream before it serves any group; the error says what did not match.
    pub fn verified(v: &Value, size: u64, root: &blake3::Hash) -> Result<Self, String> {
        let o = Self::from_value(v, size)?;
        let got = o.root();
        if got != *root {
            return Err(format!(
                "its chaining values give BLAKE3 {}, the ticket pins {}",
                got.to_hex(),
                root.to_hex()
            ));
        }
        Ok(o)
    }
}

/// The chaining value of group `i` of an object of more than one group.
fn group_cv(i: u64, data: &[u8]) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(i * GROUP)
        .update(data)
        .finalize_non_root()
}

/// [`group_cv`] knowing the object's size: the one group of an object of at most one group is
/// the whole input, whose value is the root hash.
fn group_cv_sized(i: u64, data: &[u8], size: u64) -> ChainingValue {
    if size <= GROUP {
        return *blake3::hash(data).as_bytes();
    }
    group_cv(i, data)
}

enum Merged {
    Cv(ChainingValue),
    Root(blake3::Hash),
}

/// Merge the subtree `[start, start + len)` (aligned, whole groups but the last) the way
/// BLAKE3's tree is built: the left part holds the largest power of two of 1 KiB leaves that
/// leaves at least one for the right.
fn merge(cvs: &[ChainingValue], start: u64, len: u64, root: bool) -> Merged {
    if len <= GROUP {
        return Merged::Cv(cvs[(start / GROUP) as usize]);
    }
    let leaves = len.div_ceil(1024);
    let left = (1u64 << (63 - (leaves - 1).leading_zeros())) * 1024;
    let cv = |m| match m {
        Merged::Cv(cv) => cv,
        Merged::Root(h) => *h.as_bytes(),
    };
    let l = cv(merge(cvs, start, left, false));
    let r = cv(merge(cvs, start + left, len - left, false));
    if root {
        Merged::Root(merge_subtrees_root(&l, &r, Mode::Hash))
    } else {
        Merged::Cv(merge_subtrees_non_root(&l, &r, Mode::Hash))
    }
}

/// Where an outboard comes from.
enum Entry {
    /// A file a sender serves: computed at the first request (one read), then kept.
    File {
        path: PathBuf,
        size: u64,
        /// Requests that arrive while it is computed wait for that computation rather than
        /// start their own: relays of a fan-out ask together, and each computation reads the
        /// whole file. A failed computation leaves it empty for the next request to retry.
        done: tokio::sync::OnceCell<Arc<Outboard>>,
        /// Computations started (for the tests).
        computed: AtomicUsize,
    },
    /// What a relay holds once it has one (verified against its ticket).
    Relay(Arc<OnceLock<Arc<Outboard>>>),
}

/// The outboards a sender answers for, by ref id; [`serve_on`](Self::serve_on) a cell.
#[derive(Default, Clone)]
pub struct OutboardIndex {
    entries: Arc<Mutex<HashMap<String, Arc<Entry>>>>,
}

impl std::fmt::Debug for OutboardIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboardIndex").finish_non_exhaustive()
    }
}

impl OutboardIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answer for the file at `path` (`size` bytes), served as `ref_id`.
    pub fn add_file(&self, ref_id: &str, path: PathBuf, size: u64) {
        self.insert(
            ref_id,
            Entry::File {
                path,
                size,
                done: tokio::sync::OnceCell::new(),
                computed: AtomicUsize::new(0),
            },
        );
    }

    /// Answer for a relay's object, served as `ref_id`, once the relay has an outboard.
    pub fn add_relay(&self, ref_id: &str, relay: &super::Relay) {
        self.insert(ref_id, Entry::Relay(relay.outboard_slot()));
    }

    fn insert(&self, ref_id: &str, e: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ref_id.to_string(), Arc::new(e));
    }

    /// Register the request handler on `cell`.
    pub fn serve_on(&self, cell: &Cell) {
        let index = self.clone();
        cell.register_request_handler(CHANNEL, TOPIC, move |req: Message| {
            let index = index.clone();
            async move { index.answer(req).await }
        });
    }

    async fn answer(&self, req: Message) -> Message {
        let refuse = |why: String| {
            Message::new()
                .with_return_code(ReturnCode::InvalidRequest)
                .with_header(ferry_cellnet::headers::keys::ERROR, why)
        };
        let rid = match req.value() {
            Ok(Value::Map(m)) => m
                .iter()
                .find(|(k, _)| k.as_str() == Some("ref_id"))
                .and_then(|(_, v)| v.as_str().map(str::to_string)),
            _ => None,
        };
        let Some(rid) = rid else {
            return refuse("an outboard request needs a ref_id".into());
        };
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rid)
            .cloned();
        let Some(entry) = entry else {
            return refuse(format!("no outboard for {rid}"));
        };
        let got = match &*entry {
            Entry::File {
                path,
                size,
                done,
                computed,
            } => done
                .get_or_try_init(|| async {
                    computed.fetch_add(1, Ordering::Relaxed);
                    let (path, size) = (path.clone(), *size);
                    tokio::task::spawn_blocking(move || {
                        let f =
                            File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                        Outboard::compute(&f, size)
                            .map(Arc::new)
                            .map_err(|e| format!("{}: {e}", path.display()))
                    })
                    .await
                    .map_err(|e| format!("computing the outboard failed: {e}"))?
                })
                .await
                .cloned(),
            Entry::Relay(slot) => slot
                .get()
                .cloned()
                .ok_or_else(|| "this relay has no outboard of the object".to_string()),
        };
        // A large object's value tree is built off the runtime (32 bytes per MiB of object).
        let got = match got {
            Ok(o) => tokio::task::spawn_blocking(move || o.to_value())
                .await
                .map_err(|e| format!("encoding the outboard failed: {e}")),
            Err(why) => Err(why),
        };
        match got {
            Ok(v) => Message::from_value(v),
            Err(why) => refuse(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 + i / 4099) as u8).collect()
    }

    #[test]
    fn the_root_of_the_groups_is_the_blake3_of_the_object() {
        let g = GROUP as usize;
        for n in [
            0,
            1,
            1024,
            g - 1,
            g,
            g + 1,
            2 * g,
            3 * g + 5,
            5 * g,
            8 * g + 1023,
        ] {
            let d = data(n);
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("f");
            std::fs::write(&p, &d).unwrap();
            let o = Outboard::compute(&File::open(&p).unwrap(), n as u64).unwrap();
            assert_eq!(o.root(), blake3::hash(&d), "size {n}");
            for i in 0..groups(n as u64) {
                let (s, e) = o.range(i);
                assert!(o.check(i, &d[s as usize..e as usize]), "size {n} group {i}");
                if e > s {
                    let mut bad = d[s as usize..e as usize].to_vec();
                    bad[0] ^= 1;
                    assert!(!o.check(i, &bad), "size {n} group {i} corrupted");
                }
            }
            let beyond = groups(n as u64);
            assert_eq!(o.range(beyond), (n as u64, n as u64), "size {n}");
            assert!(!o.check(beyond, &[]), "size {n}");
            let back = Outboard::from_value(&o.to_value(), n as u64).unwrap();
            assert_eq!(back, o);
            assert!(Outboard::from_value(&o.to_value(), n as u64 + 1).is_err());
        }
    }

    /// Found by the `outboard_reply` fuzz target: asking about a group index past 2^44
    /// overflowed `i * GROUP` (a panic with overflow checks; a wrapped range without).
    #[test]
    fn a_group_beyond_the_object_is_refused_whatever_its_index() {
        let d = data(3 * GROUP as usize + 5);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &d).unwrap();
        let o = Outboard::compute(&File::open(&p).unwrap(), d.len() as u64).unwrap();
        let end = d.len() as u64;
        for i in [4, 1 << 44, u64::MAX / GROUP + 1, u64::MAX] {
            assert!(!o.check(i, &d[..GROUP as usize]), "group {i}");
            assert!(!o.check(i, &[]), "group {i}");
            assert_eq!(o.range(i), (end, end), "group {i}");
        }
    }

    #[test]
    fn an_outboard_is_verified_against_the_pinned_root() {
        let d = data(2 * GROUP as usize + 7);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &d).unwrap();
        let size = d.len() as u64;
        let v = Outboard::compute(&File::open(&p).unwrap(), size)
            .unwrap()
            .to_value();
        let o = Outboard::verified(&v, size, &blake3::hash(&d)).unwrap();
        assert_eq!(o.root(), blake3::hash(&d));
        let other = blake3::hash(b"other");
        let err = Outboard::verified(&v, size, &other).unwrap_err();
        assert!(err.contains(&other.to_hex().to_string()), "{err}");
        assert!(Outboard::verified(&v, size - 1, &blake3::hash(&d[1..])).is_err());
    }

    fn request(rid: &str) -> Message {
        Message::from_value(Value::Map(vec![(Value::from("ref_id"), Value::from(rid))]))
    }

    fn computations(index: &OutboardIndex, rid: &str) -> usize {
        let entries = index.entries.lock().unwrap();
        match &*entries[rid] {
            Entry::File { computed, .. } => computed.load(Ordering::Relaxed),
            Entry::Relay(_) => unreachable!("a file entry"),
        }
    }

    /// Relays of a fan-out ask for the outboard together: each computation reads the whole
    /// file, so the requests that arrive during one wait for it instead of starting their own.
    /// (Before, sixteen requests for this 64 MiB file read and hashed it sixteen times.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_compute_a_file_outboard_once() {
        let d = data(64 * GROUP as usize + 3);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &d).unwrap();
        let index = OutboardIndex::new();
        index.add_file("r", p, d.len() as u64);
        let replies = futures::future::join_all((0..16).map(|_| {
            let index = index.clone();
            tokio::spawn(async move { index.answer(request("r")).await })
        }))
        .await;
        for r in replies {
            let v = r.unwrap().value().unwrap();
            let o = Outboard::verified(&v, d.len() as u64, &blake3::hash(&d)).unwrap();
            assert_eq!(o.root(), blake3::hash(&d));
        }
        assert_eq!(computations(&index, "r"), 1);
        // Later requests are answered from the kept outboard.
        index.answer(request("r")).await.value().unwrap();
        assert_eq!(computations(&index, "r"), 1);
    }

    /// A computation that failed (the file was not there) is refused with the reason, and
    /// the next request computes again rather than repeat the failure forever.
    #[tokio::test]
    async fn a_failed_computation_is_refused_and_retried_by_the_next_request() {
        let d = data(GROUP as usize + 1);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("late");
        let index = OutboardIndex::new();
        index.add_file("r", p.clone(), d.len() as u64);
        let refused = index.answer(request("r")).await;
        assert_eq!(refused.return_code(), ReturnCode::InvalidRequest);
        let why = refused.error_text().unwrap();
        assert!(why.contains("late"), "{why}");
        std::fs::write(&p, &d).unwrap();
        let v = index.answer(request("r")).await.value().unwrap();
        Outboard::verified(&v, d.len() as u64, &blake3::hash(&d)).unwrap();
        assert_eq!(computations(&index, "r"), 2);
        let unknown = index.answer(request("other")).await;
        assert_eq!(unknown.return_code(), ReturnCode::InvalidRequest);
    }
}
