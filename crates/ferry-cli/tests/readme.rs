//! README.md promises newcomers two first commands and shows the library example that is the
//! doc test of `crates/ferry/src/lib.rs`. These tests keep those promises true.

use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The lines of the first code block of a `//!` doc comment, and whether any were hidden
/// (rustdoc's `# ` lines, which a reader of the README would not copy).
fn doc_example(src: &str) -> (Vec<String>, bool) {
    let mut hidden = false;
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
        if inside {
            if t.starts_with("# ") || t == "#" {
                hidden = true;
            } else {
                lines.push(t.to_string());
            }
        }
    }
    (lines, hidden)
}

/// The lines of the first ```` ```LANG ```` block of a markdown file.
fn markdown_block(md: &str, lang: &str) -> Vec<String> {
    let fence = format!("```{lang}");
    md.lines()
        .skip_while(|l| l.trim() != fence)
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .map(str::to_string)
        .collect()
}

/// The crates a Rust snippet names: the roots of its paths (`tokio` of `#[tokio::main]`,
/// `ferry` of `use ferry::prelude::*`), lowercase identifiers before a `::` that no `::`
/// precedes. Types (`Duration::from_secs`) start with a capital and are not crates.
fn crates_named(code: &[String]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in code {
        let line = line.split("//").next().unwrap_or("");
        let bytes = line.as_bytes();
        let mut i = 0;
        while let Some(pos) = line[i..].find("::") {
            let end = i + pos;
            let start = line[..end]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |p| p + 1);
            let ident = &line[start..end];
            let after_path = start >= 2 && &bytes[start - 2..start] == b"::";
            if !after_path && ident.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.insert(ident.to_string());
            }
            i = end + 2;
        }
    }
    out
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
    let readme = markdown_block(&repo_file("README.md"), "rust");
    let (doc, hidden) = doc_example(&repo_file("crates/ferry/src/lib.rs"));
    assert!(
        !doc.is_empty(),
        "no doc test found in crates/ferry/src/lib.rs"
    );
    assert!(
        !hidden,
        "the doc test in crates/ferry/src/lib.rs hides lines: what README.md shows must be the whole program that compiles"
    );
    assert_eq!(
        readme, doc,
        "README.md's rust example must be the doc test in crates/ferry/src/lib.rs, whole"
    );
}

/// A reader who copies the README's program into a crate with the README's `[dependencies]`
/// gets a program that compiles: the doc test proves it compiles with `ferry`, and this checks
/// that every other crate it names is in that block (with the tokio features `#[tokio::main]`
/// needs), so nothing is "unsaid".
#[test]
fn readme_library_example_says_its_dependencies() {
    let md = repo_file("README.md");
    let code = markdown_block(&md, "rust");
    let toml = markdown_block(&md, "toml");
    assert!(
        toml.first().map(String::as_str) == Some("[dependencies]"),
        "README.md must give the example's [dependencies] in a ```toml block: {toml:?}"
    );
    let deps: std::collections::BTreeMap<String, String> = toml
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().replace('-', "_"), v.trim().to_string()))
        .collect();
    assert!(deps.contains_key("ferry"), "{deps:?}");
    let named = crates_named(&code);
    assert!(
        named.contains("ferry") && named.contains("tokio"),
        "{named:?}"
    );
    for krate in &named {
        assert!(
            matches!(krate.as_str(), "std" | "core" | "alloc" | "crate" | "self" | "super")
                || deps.contains_key(krate),
            "the README's example uses the crate `{krate}` but its [dependencies] do not list it: add it there, or use what ferry::prelude re-exports"
        );
    }
    if code.iter().any(|l| l.contains("#[tokio::main]")) {
        let tokio = &deps["tokio"];
        for feature in ["macros", "rt-multi-thread"] {
            assert!(
                tokio.contains(&format!("\"{feature}\"")),
                "#[tokio::main] needs tokio's {feature:?} feature: {tokio}"
            );
        }
    }
}

#[test]
fn crate_roots_are_found() {
    let code: Vec<String> = [
        "use ferry::prelude::*;",
        "#[tokio::main]",
        "let d = Duration::from_secs(1); // bytes::Bytes in a comment",
        "let x = std::time::Instant::now();",
        "let b = bytes::Bytes::new();",
    ]
    .map(String::from)
    .to_vec();
    let got: Vec<String> = crates_named(&code).into_iter().collect();
    assert_eq!(got, ["bytes", "ferry", "std", "tokio"]);
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
