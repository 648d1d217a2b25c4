//! What the simulated-network tests share: the receivers, a lossy network, the download
//! configuration, and a temporary source directory with one destination per receiver.

use ferry_core::testing::SimConfig;
use ferry_core::{DownloadConfig, State};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Receivers in a test's transaction.
pub const RECEIVERS: usize = 8;

pub fn names() -> Vec<String> {
    (1..=RECEIVERS).map(|i| format!("site-{i}")).collect()
}

pub fn lossy(seed: u64) -> SimConfig {
    SimConfig {
        seed,
        latency: (Duration::from_millis(1), Duration::from_millis(40)),
        loss: 0.01,
        duplicate: 0.05,
        ..SimConfig::default()
    }
}

pub fn download_cfg() -> DownloadConfig {
    DownloadConfig {
        per_request_timeout: Duration::from_secs(5),
        max_retries: 50,
        ..DownloadConfig::default()
    }
}

pub fn hash_file(p: &Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A temporary tree: `src` for the sender, `dst[i]` for receiver `i`.
pub struct Dirs {
    pub _root: tempfile::TempDir,
    pub src: PathBuf,
    pub dst: Vec<PathBuf>,
}

pub fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let src = root.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let dst = (0..RECEIVERS)
        .map(|i| {
            let d = root.path().join(format!("r{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    Dirs {
        _root: root,
        src,
        dst,
    }
}

/// Picks the requests (by their state) a test link treats specially.
pub type StateMatcher = Box<dyn Fn(&State) -> bool + Send + Sync>;
