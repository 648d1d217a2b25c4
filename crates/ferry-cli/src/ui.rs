//! Terminal output: progress bars on stderr (indicatif), JSON lines on stdout, and a tracing
//! writer that hides the bars while a log line is printed so logs never tear them.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// The one set of progress bars of this process (stderr; hidden when stderr is not a
/// terminal, or with `--json`).
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)))
}

/// Hide every bar (for `--json`, `-q` and child processes).
pub fn hide_bars() {
    bars().set_draw_target(ProgressDrawTarget::hidden());
}

/// `-q`: only errors, warnings and results are printed.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Turn on `-q`: bars hidden, [`info_line`]s and JSON `progress` events dropped.
pub fn set_quiet() {
    QUIET.store(true, Ordering::Relaxed);
    hide_bars();
}

fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A byte progress bar: `name [=====>    ] 1.2 GiB/4.0 GiB 812 MiB/s ETA 3s`.
pub fn byte_bar(label: &str, total: Option<u64>) -> ProgressBar {
    let bar = bars().add(ProgressBar::new(total.unwrap_or(0)));
    let template = if total.is_some() {
        "{prefix:>14.bold} [{bar:32.cyan/blue}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta:<4} {msg}"
    } else {
        "{prefix:>14.bold} {spinner} {bytes:>10} {binary_bytes_per_sec:>12} {msg}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(shorten(label, 14));
    bar
}

/// `s` cut to at most `max` characters, with an ellipsis in front when cut.
pub fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (max - 1)).collect();
    format!("…{tail}")
}

/// Print one JSON value as a line on stdout (flushed, so a reader sees it at once); with `-q`,
/// `progress` events are dropped.
pub fn json_line(v: &serde_json::Value) {
    if quiet() && v["event"] == "progress" {
        return;
    }
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Print a line on stdout, suspending the bars meanwhile.
pub fn out_line(s: &str) {
    bars().suspend(|| {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    });
}

/// Print a line on stderr, suspending the bars meanwhile (errors, warnings, advice: printed
/// even with `-q`).
pub fn err_line(s: &str) {
    bars().suspend(|| eprintln!("{s}"));
}

/// Print an informational line on stderr (what is served, what arrived, a summary), unless `-q`.
pub fn info_line(s: &str) {
    if !quiet() {
        err_line(s);
    }
}

/// Install the log subscriber: `RUST_LOG` (EnvFilter syntax) to stderr. Without `RUST_LOG` the
/// level follows `-v`: `info` for one, `debug` for more, and only `error` events by default:
/// every failure the user must know about is reported by the command itself in one line, and
/// the libraries' warnings about the same failure would only repeat it.
pub fn init_logging(verbose: u8) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(match verbose {
            0 => "error",
            1 => "info",
            _ => "debug",
        })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(BarSafeStderr)
        .with_target(true)
        .try_init();
}

/// Makes writers that print to stderr with the bars suspended.
struct BarSafeStderr;

/// One log event's bytes, written when dropped (tracing-subscriber writes an event in pieces).
struct BufferedLine(Vec<u8>);

impl Write for BufferedLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BufferedLine {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        bars().suspend(|| {
            let _ = io::stderr().lock().write_all(&bytes);
        });
    }
}

impl<'a> MakeWriter<'a> for BarSafeStderr {
    type Writer = BufferedLine;

    fn make_writer(&'a self) -> Self::Writer {
        BufferedLine(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_keeps_the_tail() {
        assert_eq!(shorten("model.bin", 14), "model.bin");
        assert_eq!(shorten("a-very-long-file-name.bin", 10), "…-name.bin");
        assert_eq!(shorten("a-very-long-file-name.bin", 10).chars().count(), 10);
    }
}
