//! A ticket pasted by a user (`Ticket::from_str`): what parses must print and parse to itself.
#![no_main]

use ferry::ticket::Ticket;
use ferry_fuzz::{within, Limit, DECODER_FIXED};
use libfuzzer_sys::fuzz_target;

const LIMIT: Limit = Limit {
    // the decoded fields: a few copies of the text at most
    per_byte: 8,
    fixed: DECODER_FIXED,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // the budget covers the parse of what the user pasted; the round trip is ours
    let Ok(t) = within(LIMIT, data.len(), || s.parse::<Ticket>()) else {
        return;
    };
    let printed = t.to_string();
    let again: Ticket = printed
        .parse()
        .unwrap_or_else(|e| panic!("printed ticket {printed:?} does not parse: {e}"));
    assert_eq!(again, t, "ticket round trip");
    let _ = t.url();
});
