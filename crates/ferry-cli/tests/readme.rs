//! README.md promises newcomers two first commands and shows the library example that is the
//! doc test of `crates/ferry/src/lib.rs`. These tests keep those promises true.

use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The visible lines of the first code block of a `//!` doc comment (rustdoc's hidden `# `
/// lines removed).
fn doc_example(src: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for l in src.lines() {
        let Some(t) = l.strip_prefix("//!") else {
            continue;
        };
        let t = t.strip_prefix(' ').unwrap_or(t);
        if t.starts_with("```") {
            if inside {
                break;
            }
            inside = true;
            continue;
        }
        if inside && !(t.starts_with("# ") || t == "#") {
            lines.push(t.to_string());
        }
    }
    lines
}

/// The lines of the first ```` ```rust ```` block of a markdown file.
fn markdown_rust_block(md: &str) -> Vec<String> {
    md.lines()
        .skip_while(|l| l.trim() != "```rust")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_opens_with_the_two_newcomer_commands() {
    let readme = repo_file("README.md");
    let mut lines = readme.lines();
    assert_eq!(lines.next(), Some("# Ferry"));
    assert_eq!(lines.next(), Some(""));
    assert_eq!(lines.next(), Some("```sh"));
    let cmds: Vec<&str> = lines
        .take_while(|l| *l != "```")
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .collect();
    assert_eq!(
        cmds,
        [
            "cargo run --release -p ferry-cli -- demo",
            "cargo xtask test-matrix"
        ]
    );
}

#[test]
fn readme_library_example_is_the_ferry_doc_test() {
    let readme = markdown_rust_block(&repo_file("README.md"));
    let doc = doc_example(&repo_file("crates/ferry/src/lib.rs"));
    assert!(
        !doc.is_empty(),
        "no doc test found in crates/ferry/src/lib.rs"
    );
    assert_eq!(
        readme, doc,
        "README.md's rust example must be the visible part of the doc test in crates/ferry/src/lib.rs"
    );
}

#[test]
fn readme_links_to_docs_that_exist() {
    let readme = repo_file("README.md");
    for doc in [
        "docs/architecture.md",
        "docs/protocol.md",
        "docs/benchmarks.md",
        "docs/user-guide.md",
    ] {
        assert!(
            readme.contains(&format!("]({doc})")),
            "README does not link {doc}"
        );
        let _ = repo_file(doc);
    }
}
