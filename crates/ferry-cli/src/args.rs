//! Command-line arguments (clap derive). Sizes accept `4MiB`-style units and durations
//! `90s`-style ones (see [`crate::units`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::units::{parse_duration, parse_size};

/// Move large files and tensor dicts from one sender to many receivers, by pull, over
/// NVFlare-compatible cells.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok, 1 transfer failed, 2 usage or input error, 130 interrupted.\n\
Sizes: 4MiB, 1.5GiB, 1GB, 65536. Durations: 90s, 5m, 1h30m.\n\
Logs: -v (info), -vv (debug), or RUST_LOG=ferry=debug,ferry_cellnet=trace,... to stderr.\n\
Environment: FERRY_LISTEN, FERRY_ADVERTISE, FERRY_NAME, FERRY_OUTPUT, FERRY_TLS_CERT, FERRY_TLS_KEY,\n\
FERRY_TLS_CA, FERRY_TICKET_FORMAT, FERRY_REQUEST_TIMEOUT stand for their options (the option wins).\n\
Guide: docs/user-guide.md; also `ferry man`, `ferry completions SHELL`."
)]
pub struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors, warnings and results (tickets, paths, tables): no progress bars, no
    /// progress lines (no `progress` events with --json).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more to stderr: -v info, -vv debug (when RUST_LOG is not set; RUST_LOG wins).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one sender and several receivers on loopback and show how fast they go.
    Demo(DemoArgs),
    /// Serve files (or .safetensors tensor dicts) until every receiver has them.
    Serve(ServeArgs),
    /// Download objects from the tickets `ferry serve` printed.
    Get(GetArgs),
    /// Pull an object from upstream and serve it to receivers while it arrives.
    Relay(RelayArgs),
    /// Make a project CA and cell certificates for mutual TLS (`init`, then `issue NAME...`).
    Certs(CertsArgs),
    /// Print a shell completion script (e.g. `ferry completions bash > /etc/bash_completion.d/ferry`).
    Completions(CompletionsArgs),
    /// Print the manual page (roff; e.g. `ferry man | man -l -`, or `ferry man serve`).
    Man(ManArgs),
    /// Internal: one receiver process of `ferry demo` (progress as JSON lines on stdout).
    #[command(name = "__demo-receiver", hide = true)]
    DemoReceiver(DemoReceiverArgs),
}

/// TLS options shared by `serve` and `get`: all three or none.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate of this cell (its CN must be the first segment of --name).
    #[arg(long, value_name = "PEM", env = "FERRY_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of this cell.
    #[arg(long, value_name = "PEM", env = "FERRY_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// PEM root CA that signed the peer's certificate.
    #[arg(long, value_name = "PEM", env = "FERRY_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
}

/// `ferry demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of receiver processes (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub receivers: u32,
    /// Size of the generated file (1 byte to 64GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_demo_size, value_name = "SIZE")]
    pub size: u64,
    /// Also distribute a generated tensor dict (float32 tensors, a quarter of --size).
    #[arg(long)]
    pub tensors: bool,
    /// Chunk size of the file (64KiB to 64MiB); the tensor dict goes one tensor per chunk.
    #[arg(long, default_value = "1MiB", value_parser = parse_chunk, value_name = "SIZE")]
    pub chunk: u64,
    /// Keep the generated and received files in this directory (default: a temp dir, removed).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

/// `ferry serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Files or directories to serve (directories: every regular file below them).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Listen URL.
    #[arg(
        long,
        default_value = "tcp://0.0.0.0:7051",
        value_name = "URL",
        env = "FERRY_LISTEN"
    )]
    pub listen: String,
    /// Host to put in the tickets (default: the listen host, or this host's routable address when listening on 0.0.0.0).
    #[arg(long, value_name = "HOST", env = "FERRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// This cell's name (FQCN).
    #[arg(
        long,
        default_value = "ferry-sender",
        value_name = "FQCN",
        env = "FERRY_NAME"
    )]
    pub name: String,
    /// Number of receivers expected (count mode): the first N to pull are served, others are
    /// refused; exit when these N have every object.
    #[arg(long, value_name = "N", conflicts_with = "allow", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub receivers: u32,
    /// Expected receivers by name (identity mode); others are refused. With TLS a receiver
    /// proves its name with its certificate; without TLS the name is only what the receiver
    /// types in --name, so anyone who can reach the port can use it (a warning says so).
    #[arg(long, value_name = "FQCN")]
    pub allow: Vec<String>,
    /// Serve anyone with the ticket, any number of times, until Ctrl-C (then exit 0 with a
    /// summary).
    #[arg(long, conflicts_with_all = ["allow", "receivers", "timeout"])]
    pub keep_serving: bool,
    /// Give up (exit 1) when no receiver pulled anything for this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DUR")]
    pub timeout: Duration,
    /// Fail a receiver whose connection closed and that did not come back within this long
    /// (it may resume under the same --name until then).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub reconnect_timeout: Duration,
    /// Cap the bytes per second sent to all receivers together (e.g. 50MiB; at least 1KiB); default: no cap.
    #[arg(long, value_parser = parse_rate, value_name = "SIZE")]
    pub limit_rate: Option<u64>,
    /// Chunk size of plain files (64KiB to 64MiB; default 1MiB). A tensor dict (--tensors)
    /// travels one whole tensor per chunk, so --chunk is refused when a file is served as one.
    #[arg(long, value_parser = parse_chunk, value_name = "SIZE")]
    pub chunk: Option<u64>,
    /// Serve `.safetensors` files as tensor dicts (item by item) instead of as plain files.
    #[arg(long)]
    pub tensors: bool,
    /// Print one ticket per object instead of one ticket for the whole serve (a directory or
    /// several paths are otherwise one set, fetched by one `ferry get`).
    #[arg(long)]
    pub ticket_per_object: bool,
    /// How tickets are written: `compact` (ferry1..., safe unquoted in a shell) or `url`
    /// (ferry+tcp://HOST:PORT/SENDER/REF?..., must be quoted). `get` reads both.
    #[arg(long, value_enum, default_value_t = TicketFormat::Compact, value_name = "FORMAT", env = "FERRY_TICKET_FORMAT")]
    pub ticket_format: TicketFormat,
    /// Peer-assisted mode.
    #[command(flatten)]
    pub peers: crate::peers::ServePeerArgs,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// The written form of the tickets `serve` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TicketFormat {
    /// `ferry1...`: letters and digits only, with a checksum.
    Compact,
    /// `ferry+tcp://HOST:PORT/SENDER/REF?kind=..&name=..&size=..&b3=..`.
    Url,
}

impl TicketFormat {
    /// `t` written in this form.
    pub fn write(self, t: &ferry::ticket::Ticket) -> String {
        match self {
            TicketFormat::Compact => t.to_compact(),
            TicketFormat::Url => t.to_url(),
        }
    }
}

/// `ferry get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// Tickets printed by `ferry serve`.
    #[arg(required = true, value_name = "TICKET")]
    pub tickets: Vec<String>,
    /// Output directory (created if missing).
    #[arg(
        short = 'o',
        long,
        default_value = ".",
        value_name = "DIR",
        env = "FERRY_OUTPUT"
    )]
    pub output: PathBuf,
    /// This cell's name (FQCN); default: the CN of --tls-cert, else `ferry-get-<pid>`.
    #[arg(long, value_name = "FQCN", env = "FERRY_NAME")]
    pub name: Option<String>,
    /// Keep `NAME.part` on failure and continue from it next time (after verifying it belongs
    /// to the ticket's content).
    #[arg(long)]
    pub resume: bool,
    /// With --resume: make the received data durable every SIZE (fdatasync + NAME.part.ferry);
    /// a crash loses at most this much.
    #[arg(long, default_value = "64MiB", value_parser = parse_sync_every, value_name = "SIZE")]
    pub sync_every: u64,
    /// Overwrite files that already exist; with --resume, also discard a `NAME.part` of other
    /// content instead of refusing it.
    #[arg(long)]
    pub force: bool,
    /// Retry a chunk when the sender has been silent this long (no answer to anything since the request; 3 retries).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DUR", env = "FERRY_REQUEST_TIMEOUT")]
    pub request_timeout: Duration,
    /// Peer-assisted mode.
    #[command(flatten)]
    pub peers: crate::peers::GetPeerArgs,
    /// TLS.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `ferry relay`: the upstream tickets, and the options of `serve` for its downstream.
#[derive(Args, Debug)]
pub struct RelayArgs {
    /// Tickets of the object to relay (a file or a tensor dict: `ferry serve`'s, Python's, or
    /// another relay's). Several tickets of the same object are sources tried in order: when
    /// one fails the relay continues from the bytes (or tensors) it has at the next.
    #[arg(required = true, value_name = "TICKET")]
    pub tickets: Vec<String>,
    /// Listen URL for the downstream receivers.
    #[arg(
        long,
        default_value = "tcp://0.0.0.0:7052",
        value_name = "URL",
        env = "FERRY_LISTEN"
    )]
    pub listen: String,
    /// Host to put in the downstream tickets (default: the listen host, or this host's routable address when listening on 0.0.0.0).
    #[arg(long, value_name = "HOST", env = "FERRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// This cell's name (FQCN): the upstream sees a receiver of this name, the downstream a
    /// sender of this name.
    #[arg(
        long,
        default_value = "ferry-relay",
        value_name = "FQCN",
        env = "FERRY_NAME"
    )]
    pub name: String,
    /// Number of downstream receivers expected (count mode): the first N to pull are served,
    /// others are refused; exit when these N have the object.
    #[arg(long, value_name = "N", conflicts_with = "allow", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub receivers: u32,
    /// Expected downstream receivers by name (identity mode); others are refused. Use TLS to
    /// make names proven.
    #[arg(long, value_name = "FQCN")]
    pub allow: Vec<String>,
    /// Give up (exit 1) when no downstream receiver pulled anything for this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DUR")]
    pub timeout: Duration,
    /// Fail a downstream receiver whose connection closed and that did not come back within
    /// this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DUR")]
    pub reconnect_timeout: Duration,
    /// Cap the bytes per second sent to all downstream receivers together (at least 1KiB).
    #[arg(long, value_parser = parse_rate, value_name = "SIZE")]
    pub limit_rate: Option<u64>,
    /// Chunk size served downstream (64KiB to 64MiB; default 1MiB); a tensor dict goes one
    /// tensor per chunk, as from its origin.
    #[arg(long, value_parser = parse_chunk, value_name = "SIZE")]
    pub chunk: Option<u64>,
    /// Retry an upstream chunk when the upstream has been silent this long (3 retries; then
    /// the next source, or the relay fails).
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DUR", env = "FERRY_REQUEST_TIMEOUT")]
    pub request_timeout: Duration,
    /// Directory for the relay's copy of the object (it needs the object's size free; the copy
    /// is removed at exit). Default: the system's temp dir.
    #[arg(long, value_name = "DIR")]
    pub spill_dir: Option<PathBuf>,
    /// How the downstream tickets are written: `compact` or `url`.
    #[arg(long, value_enum, default_value_t = TicketFormat::Compact, value_name = "FORMAT", env = "FERRY_TICKET_FORMAT")]
    pub ticket_format: TicketFormat,
    /// TLS (both upstream and downstream: one cell, one certificate).
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// `ferry completions`.
#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `ferry man`.
#[derive(Args, Debug)]
pub struct ManArgs {
    /// A subcommand's page instead of ferry(1): `serve`, `get`, `demo`, `certs`, ...
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// `ferry certs`.
#[derive(Args, Debug)]
pub struct CertsArgs {
    /// What to make.
    #[command(subcommand)]
    pub command: CertsCommand,
}

/// The subcommands of `ferry certs`.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create the project CA: DIR/rootCA.pem (give it to every cell as --tls-ca) and
    /// DIR/rootCA.key (keep it private).
    Init(CertsInitArgs),
    /// Issue a certificate for each NAME, signed by the CA in DIR: DIR/NAME.crt and
    /// DIR/NAME.key. A cell named NAME (or NAME.anything) runs with them.
    Issue(CertsIssueArgs),
}

/// `ferry certs init`.
#[derive(Args, Debug)]
pub struct CertsInitArgs {
    /// Directory for the CA files (created if missing).
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Common name of the CA.
    #[arg(long, default_value = "ferry-project-ca", value_name = "NAME")]
    pub ca_name: String,
    /// Validity in days.
    #[arg(long, default_value_t = 3650, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Replace existing CA files.
    #[arg(long)]
    pub force: bool,
}

/// `ferry certs issue`.
#[derive(Args, Debug)]
pub struct CertsIssueArgs {
    /// Cell names to issue certificates for (the CN; e.g. server site-1 site-2).
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
    /// Directory holding rootCA.pem and rootCA.key; the certificates are written there too.
    #[arg(long, default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Validity in days.
    #[arg(long, default_value_t = 365, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Replace existing certificate files.
    #[arg(long)]
    pub force: bool,
}

/// `ferry __demo-receiver` (spawned by `ferry demo`, not for people).
#[derive(Args, Debug)]
pub struct DemoReceiverArgs {
    /// The sender's cellnet URL.
    #[arg(long)]
    pub url: String,
    /// The sender's FQCN.
    #[arg(long)]
    pub source: String,
    /// This receiver's FQCN.
    #[arg(long)]
    pub name: String,
    /// Directory to write into.
    #[arg(long)]
    pub dir: PathBuf,
    /// Ref id of the file.
    #[arg(long)]
    pub file_ref: String,
    /// BLAKE3 of the file (pinned together with --file-size).
    #[arg(long, requires = "file_size")]
    pub file_b3: Option<String>,
    /// Size of the file.
    #[arg(long)]
    pub file_size: Option<u64>,
    /// Ref id of the tensor dict, if any.
    #[arg(long)]
    pub tensors_ref: Option<String>,
}

/// A chunk size worth using: ferry-objects' check for sizes a person chooses.
fn parse_chunk(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    ferry::objects::check_useful_chunk_size(n).map_err(|e| match e {
        ferry::objects::ObjectsError::InvalidOption(why) => why,
        other => other.to_string(),
    })?;
    Ok(n)
}

/// How often `get --resume` syncs: at least 64 KiB.
fn parse_sync_every(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < 64 << 10 {
        return Err(format!("--sync-every {s} is below 64KiB"));
    }
    Ok(n)
}

/// Slowest `--limit-rate`: below it a single small chunk would take longer than receivers wait.
pub const MIN_RATE: u64 = 1 << 10;

/// A `--limit-rate`: bytes per second, at least [`MIN_RATE`] (0 would send nothing, ever).
fn parse_rate(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n == 0 {
        return Err(format!(
            "a rate of {s} would never send anything; give at least 1KiB (e.g. 50MiB), or leave --limit-rate out for no cap"
        ));
    }
    if n < MIN_RATE {
        return Err(format!(
            "{s} per second is below the slowest cap ferry keeps receivers waiting for (1KiB); give at least 1KiB"
        ));
    }
    Ok(n)
}

/// A demo file size: at least a byte, at most 64 GiB.
fn parse_demo_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if !(1..=64 << 30).contains(&n) {
        return Err(format!("demo size {s} is outside 1B..=64GiB"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_units_and_conflicts() {
        let cli =
            Cli::try_parse_from(["ferry", "serve", "a", "--chunk", "4MiB", "--timeout", "90s"])
                .unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.chunk, Some(4 << 20));
        assert_eq!(s.timeout, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["ferry", "serve", "a", "--chunk", "1k"]).is_err());
        assert!(
            Cli::try_parse_from(["ferry", "serve", "a", "--receivers", "2", "--allow", "x"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["ferry", "serve", "a", "--tls-cert", "c"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "get"]).is_err());
        for bad in ["0", "0MiB", "100"] {
            let e = Cli::try_parse_from(["ferry", "serve", "a", "--limit-rate", bad]).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
        }
        let cli = Cli::try_parse_from(["ferry", "serve", "a", "--limit-rate", "1KiB"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.limit_rate, Some(1024));
        let cli = Cli::try_parse_from(["ferry", "--json", "demo"]).unwrap();
        assert!(cli.json);
        let Command::Demo(d) = cli.command else {
            panic!("not demo")
        };
        assert_eq!((d.receivers, d.size), (4, 256 << 20));
    }
}
