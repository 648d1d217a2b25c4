//! What `ferry get` fetches and where: every ticket parsed, and every destination checked,
//! before anything is downloaded.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry::ticket::{Kind, Ticket};

use super::explain::exists;
use crate::exit::{io_reason, CmdResult, Failure};

/// Parse every ticket first: a typo in the third must not cost the first two downloads.
pub fn parse_tickets(raw: &[String]) -> CmdResult<Vec<Ticket>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut names = BTreeSet::new();
    for (i, s) in raw.iter().enumerate() {
        let t: Ticket = s.parse().map_err(|e| {
            let which = if raw.len() > 1 {
                format!("ticket {}: ", i + 1)
            } else {
                String::new()
            };
            Failure::usage(format!("{which}{e}"))
        })?;
        // a set's name is a label; its members' names are checked when its manifest arrives
        if t.kind != Kind::Set && !names.insert(t.name.clone()) {
            return Err(Failure::usage(format!(
                "two tickets write {:?}; get them into different directories with -o",
                t.name
            )));
        }
        out.push(t);
    }
    Ok(out)
}

/// Where each ticket lands; existing destinations are refused unless `force`. Checked for all
/// tickets before anything is downloaded.
pub(super) fn destinations(tickets: &[Ticket], out: &Path, force: bool) -> CmdResult<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(|e| {
        Failure::usage(format!(
            "cannot create the output directory {}: {}",
            out.display(),
            io_reason(&e)
        ))
    })?;
    let mut dests = Vec::new();
    for t in tickets.iter().filter(|t| t.kind != Kind::Set) {
        let dest = out.join(&t.name);
        if let Ok(meta) = dest.symlink_metadata() {
            if meta.is_dir() {
                return Err(Failure::usage(format!(
                    "{} is a directory; remove it or pick another directory with -o",
                    dest.display()
                )));
            }
            if !force {
                return Err(exists(&dest));
            }
        }
        dests.push(dest);
    }
    Ok(dests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(name: &str) -> String {
        format!(
            "ferry+tcp://127.0.0.1:7001/s/R1?kind=file&name={name}&size=3&b3={}",
            "ab".repeat(32)
        )
    }

    #[test]
    fn tickets_are_all_parsed_first() {
        let ok = parse_tickets(&[ticket("a"), ticket("b")]).unwrap();
        assert_eq!(ok.len(), 2);
        let bad = parse_tickets(&[ticket("a"), "ferry+tcp://x".into()]).unwrap_err();
        assert_eq!(bad.code(), 2);
        assert!(
            bad.to_string().starts_with("ticket 2: malformed ticket"),
            "{bad}"
        );
        let dup = parse_tickets(&[ticket("a"), ticket("a")]).unwrap_err();
        assert!(dup.to_string().contains("two tickets"), "{dup}");
    }

    #[test]
    fn existing_destinations_need_force() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"old").unwrap();
        let t = parse_tickets(&[ticket("a"), ticket("sub%2Fb")]).unwrap();
        let e = destinations(&t, d.path(), false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let dests = destinations(&t, d.path(), true).unwrap();
        assert_eq!(dests[1], d.path().join("sub/b"));
        std::fs::create_dir(d.path().join("b")).unwrap();
        let t = parse_tickets(&[ticket("b")]).unwrap();
        assert!(destinations(&t, d.path(), true).is_err());
    }
}
