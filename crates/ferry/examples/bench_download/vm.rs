//! The VM's free-page reporting (Linux `page_reporting`): a guest that hands freed memory back
//! to its host faults it in again at the next write into the page cache, and on the machines
//! these figures were taken on that moved a round's CPU by up to half. The benchmark says how
//! much was handed back during each case and, with `--hold-freed-memory`, holds it back for the
//! run (restoring the settings it found when it ends).

use std::fs;
use std::path::PathBuf;

/// Where the kernel module's knobs and counters are (absent on kernels without it).
const DIR: &str = "/sys/module/page_reporting/parameters";

fn param(name: &str) -> PathBuf {
    PathBuf::from(DIR).join(name)
}

/// KiB reported to the host since boot; `None` without page reporting's counter.
pub fn reported_kib() -> Option<u64> {
    fs::read_to_string(param("reported_kib"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Free-page reporting held back until dropped: freed memory must stay free for a minute,
/// and up to 16 GiB may wait, before it goes to the host. Drop restores the values found.
pub struct Hold {
    /// `(knob, the value it had)`, restored in reverse order.
    saved: Vec<(&'static str, String)>,
}

impl Hold {
    /// Hold reporting back; an error says why not (no such module, not root).
    pub fn new() -> Result<Self, String> {
        let mut hold = Hold { saved: Vec::new() };
        for (knob, value) in [("min_free_ms", "60000"), ("max_waiting_mib", "16384")] {
            let p = param(knob);
            let old =
                fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            fs::write(&p, value).map_err(|e| format!("writing {}: {e}", p.display()))?;
            hold.saved.push((knob, old.trim().to_string()));
        }
        Ok(hold)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        for (knob, old) in self.saved.drain(..).rev() {
            if let Err(e) = fs::write(param(knob), &old) {
                eprintln!("bench_download: could not restore {DIR}/{knob} to {old}: {e}");
            }
        }
    }
}
