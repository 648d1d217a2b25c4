//! The command line: the orchestrator's options and each child role's arguments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "bench_download",
    about = "ferry vs NVFlare 2.9 vs plain TCP: files and tensor dicts to many receiver processes",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) role: Option<Role>,
    #[command(flatten)]
    pub(crate) orch: OrchArgs,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Role {
    /// Run the benchmark (the default).
    Orchestrate(OrchArgs),
    /// Child: ferry DownloadService sender.
    FerrySender(SenderArgs),
    /// Child: ferry receiver.
    FerryReceiver(ReceiverArgs),
    /// Child: plain-TCP blast sender.
    TcpSender(SenderArgs),
    /// Child: plain-TCP blast receiver.
    TcpReceiver(ReceiverArgs),
    /// Child: nginx serving the file (the nginx → curl baseline).
    NginxSender(SenderArgs),
    /// Child: curl writing the file, then fsync.
    CurlReceiver(ReceiverArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub(crate) struct OrchArgs {
    /// Small smoke run (64 MiB file, 32 MiB tensors, 256 MiB big file, 50 fetches): about a minute.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Systems to run (comma list of ferry, nvflare, tcp, nginx; default all). nginx → curl
    /// runs in the file-disk scenario only.
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
    /// Systems or scenarios to leave out (ferry, nvflare, tcp, nginx, file-hash, file-disk, tensors, big, small).
    #[arg(long, value_delimiter = ',')]
    pub(crate) skip: Vec<String>,
    /// Size of the file in MiB (default 1024; --quick 64).
    #[arg(long, alias = "size")]
    pub(crate) file_mib: Option<u64>,
    /// Size of the tensor dict in MiB (default 512; --quick 32).
    #[arg(long)]
    pub(crate) tensor_mib: Option<u64>,
    /// Size of the big file in MiB (default 8192; --quick 256; 0 = skip).
    #[arg(long)]
    pub(crate) big_mib: Option<u64>,
    /// Receiver counts of the file scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 4, 8])]
    pub(crate) receivers: Vec<usize>,
    /// Receiver counts of the tensor scenario.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 4])]
    pub(crate) tensor_receivers: Vec<usize>,
    /// Fetches of the 4 KiB object (default 200; --quick 50).
    #[arg(long)]
    pub(crate) small_count: Option<usize>,
    /// Chunk size of the ferry sender in KiB (default: ferry's default, 1 MiB).
    #[arg(long)]
    pub(crate) ferry_chunk_kib: Option<u64>,
    /// Make the ferry sender read file chunks into buffers instead of sending them from the
    /// file with sendfile (what it did before file chunks; for before/after comparisons).
    #[arg(long)]
    pub(crate) ferry_read_chunks: bool,
    /// Byte budget of the ferry sender in KiB (default: ferry's default).
    #[arg(long)]
    pub(crate) ferry_budget_kib: Option<u64>,
    /// Requests in flight per ferry receiver (default: ferry's default).
    #[arg(long)]
    pub(crate) ferry_window: Option<usize>,
    /// Write the table into docs/benchmarks.md (between the bench:download markers).
    #[arg(long)]
    pub(crate) write_docs: bool,
    /// Keep the generated source files (under <target>/bench-download/data) for the next run.
    #[arg(long)]
    pub(crate) keep_data: bool,
    /// Measure every case this many times, in rounds (round 1 runs every case, then round 2
    /// ...: the systems compared stay interleaved; even rounds run the cases in reverse
    /// order), and report each figure's median.
    #[arg(long, alias = "repeat", default_value_t = 1)]
    pub(crate) rounds: usize,
    /// Run the Rust roles (ferry, plain TCP, the nginx and curl wrappers with their children)
    /// under `perf record -g` and keep the profiles in this directory (for finding where the
    /// time goes; the figures of such a run are not clean).
    #[arg(long)]
    pub(crate) perf_dir: Option<PathBuf>,
    /// Hold the VM's free-page reporting back for the run (Linux `page_reporting`, as root):
    /// freed page cache then stays in the guest instead of being handed to the host and
    /// faulted back in by the next case's writes. The settings found are restored at the end.
    #[arg(long)]
    pub(crate) hold_freed_memory: bool,
    /// Write the raw measurements as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct SenderArgs {
    /// file | tensors | small
    #[arg(long)]
    pub(crate) kind: String,
    /// Source file (file and small: the object; tensors and TCP: the bytes are read from it).
    #[arg(long)]
    pub(crate) file: PathBuf,
    /// Bytes to send (tensors: size of the dict; TCP: bytes per receiver).
    #[arg(long, default_value_t = 0)]
    pub(crate) len: u64,
    /// Refs to offer (small).
    #[arg(long, default_value_t = 1)]
    pub(crate) count: usize,
    /// Expected receivers.
    #[arg(long)]
    pub(crate) receivers: usize,
    /// Chunk size in bytes (ferry file objects; 0 = ferry's default).
    #[arg(long, default_value_t = 0)]
    pub(crate) chunk: u64,
    /// Byte budget on produced-but-unsent chunks (ferry; 0 = ferry's default).
    #[arg(long, default_value_t = 0)]
    pub(crate) budget: u64,
    /// Read file chunks into buffers instead of sending them from the file (ferry).
    #[arg(long)]
    pub(crate) read_chunks: bool,
    /// Deadline of the process, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) timeout: f64,
    /// The nginx binary (nginx-sender).
    #[arg(long)]
    pub(crate) nginx: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ReceiverArgs {
    /// Sender URL (`tcp://127.0.0.1:PORT`).
    #[arg(long)]
    pub(crate) url: String,
    /// FQCN of this receiver's cell.
    #[arg(long)]
    pub(crate) fqcn: String,
    /// hash | file | memory | memory-pinned (memory, verified against the GO's ticket) | small
    #[arg(long)]
    pub(crate) mode: String,
    /// Directory for received files (mode file).
    #[arg(long)]
    pub(crate) out_dir: Option<PathBuf>,
    /// Expected bytes (TCP).
    #[arg(long, default_value_t = 0)]
    pub(crate) len: u64,
    /// Requests in flight (ferry; 0 = ferry's default).
    #[arg(long, default_value_t = 0)]
    pub(crate) window: usize,
    /// Deadline of the process, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub(crate) timeout: f64,
}
