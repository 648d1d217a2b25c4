//! What `ferry serve` and `ferry relay` share as senders to their receivers: the cell they
//! listen on, the warning about `--allow` without TLS, and whom they serve, in words.

use ferry::cellnet::{Cell, TlsConfig};

use crate::cells;
use crate::exit::{CmdResult, Failure};
use crate::ui;

/// Build the cell named `name` (with TLS when configured) and listen on `url`; returns the
/// cell and the address it is bound to. A listen failure is a usage error that says how to
/// pick another address.
pub async fn listen(name: &str, tls: Option<TlsConfig>, url: &str) -> CmdResult<(Cell, String)> {
    let cell = cells::build_cell(name, tls)?;
    let bound = cell.listen(url).await.map_err(|e| {
        Failure::usage(format!(
            "cannot listen on {url} ({e}); pick another address or port with --listen tcp://HOST:PORT"
        ))
    })?;
    Ok((cell, bound))
}

/// Warn (on stderr) that the `allow` names are not proven without TLS, when they are given
/// and `tls` is off: anyone who can reach `listen` can use them. `verb` is the command's own
/// (`serve`, `relay`), for the advice to run it with TLS.
pub fn warn_allow_without_tls(allow: &[String], tls: bool, listen: &str, verb: &str) {
    if tls || allow.is_empty() {
        return;
    }
    ui::err_line(&format!(
        "ferry: warning: --allow without TLS: {} is only a name, and anyone who can reach {listen} can use it (the first to connect under it holds it); to prove who a receiver is, {verb} with --tls-cert/--tls-key/--tls-ca (see `ferry certs`)",
        allow.join(", "),
    ));
}

/// Whom a sender serves, in words: `N receiver(s)` in count mode, else the `--allow` names.
pub fn receivers_in_words(receivers: u32, allow: &[String]) -> String {
    if allow.is_empty() {
        format!(
            "{receivers} receiver{}",
            if receivers == 1 { "" } else { "s" }
        )
    } else {
        allow.join(", ")
    }
}
