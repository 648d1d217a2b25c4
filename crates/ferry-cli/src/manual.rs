//! `ferry completions SHELL` and `ferry man [COMMAND]`: shell completion scripts and manual
//! pages generated from the clap definitions the parser uses, so they never drift from it.

use std::io::Write;

use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs, ManArgs};
use crate::exit::{CmdResult, Failure};

/// Print the completion script of `args.shell` on stdout.
pub fn completions(args: &CompletionsArgs) -> CmdResult {
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "ferry", &mut buf);
    write_stdout(&buf)
}

/// Print ferry(1), or ferry-COMMAND(1), as roff on stdout.
pub fn man(args: &ManArgs) -> CmdResult {
    let cli = Cli::command();
    let page = match &args.command {
        None => clap_mangen::Man::new(cli),
        Some(name) => {
            let sub = cli
                .get_subcommands()
                .find(|c| c.get_name() == name && !c.is_hide_set())
                .cloned()
                .ok_or_else(|| {
                    let known: Vec<&str> = cli
                        .get_subcommands()
                        .filter(|c| !c.is_hide_set())
                        .map(|c| c.get_name())
                        .collect();
                    Failure::usage(format!(
                        "no command {name:?}; the pages are ferry and ferry-{}",
                        known.join(", ferry-")
                    ))
                })?;
            let title = format!("ferry-{name}");
            clap_mangen::Man::new(sub.name(title.clone()).bin_name(title.clone()))
                .title(title)
                .source(format!("ferry {}", env!("CARGO_PKG_VERSION")))
        }
    };
    let mut buf = Vec::new();
    page.render(&mut buf)
        .map_err(|e| Failure::transfer(format!("rendering the manual page: {e}")))?;
    write_stdout(&buf)
}

/// Write `bytes` to stdout; a reader that closed the pipe early (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::transfer(format!("writing to stdout: {e}"))),
    }
}
