//! NVFlare's FQCN rule is checked in two layers that must not know each other: ferry-core
//! validates the receiver names it is given (`ferry_core::validate_fqcn`, the engine's
//! definition) and ferry-cellnet the names on its wire (`ferry_cellnet::validate_fqcn`). Each
//! keeps its fifteen lines (with its own error type); this crate sees both and proves that they
//! accept exactly the same names.

use ferry::{cellnet, core};
use proptest::prelude::*;

fn agree(s: &str) -> Result<(), TestCaseError> {
    let (in_core, in_cellnet) = (
        core::validate_fqcn(s).is_ok(),
        cellnet::validate_fqcn(s).is_ok(),
    );
    prop_assert_eq!(
        in_core,
        in_cellnet,
        "{:?}: core {}, cellnet {}",
        s,
        in_core,
        in_cellnet
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Strings over the FQCN alphabet: empty segments, leading and trailing dots, repeats.
    #[test]
    fn same_verdict_over_the_fqcn_alphabet(s in "[a-c0-1_.~-]{0,12}") {
        agree(&s)?;
    }

    /// Dotted names built from short segments, so repeated and empty segments are common.
    #[test]
    fn same_verdict_on_dotted_names(parts in proptest::collection::vec("[a-bA_-]{0,2}", 1..6)) {
        agree(&parts.join("."))?;
    }

    /// Any text: other ASCII, control characters, non-ASCII letters.
    #[test]
    fn same_verdict_on_any_text(s in any::<String>()) {
        agree(&s)?;
    }
}

#[test]
fn same_verdict_on_known_names() {
    let valid = [
        "server",
        "site-1",
        "site-1.job7",
        "a_b~c-d.e",
        "server.j1.x",
        "A9",
    ];
    let invalid = [
        "",
        ".",
        "a.",
        ".a",
        "a..b",
        "a.b.a",
        "a b",
        "a/b",
        "sité",
        "a\n",
        "server.server",
    ];
    for s in valid {
        assert!(core::validate_fqcn(s).is_ok(), "{s:?}");
        assert!(cellnet::validate_fqcn(s).is_ok(), "{s:?}");
    }
    for s in invalid {
        assert!(core::validate_fqcn(s).is_err(), "{s:?}");
        assert!(cellnet::validate_fqcn(s).is_err(), "{s:?}");
    }
}
