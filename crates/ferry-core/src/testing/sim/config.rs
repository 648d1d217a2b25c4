//! The parameters of a [`Sim`](super::Sim) and the handles and counters it hands out.

use std::time::Duration;

/// Network and timing parameters of a [`Sim`](super::Sim).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// The producer's FQCN.
    pub sender: String,
    /// One-way latency, uniform in `[min, max]` (times the receiver's slowness).
    pub latency: (Duration, Duration),
    /// Probability that a pull request or its reply is lost.
    pub loss: f64,
    /// Probability that a reply, confirm or cancel is delivered twice. Pull requests are not
    /// duplicated: a duplicated terminal pull makes the producer issue two provisional serves,
    /// and R6 accepts only the latest nonce, so the receiver's confirm could be stale (NVFlare
    /// semantics; cellnet over TCP never duplicates a request).
    pub duplicate: f64,
    /// Whether confirms and cancels can be lost too (fire-and-forget over a lossy link:
    /// the producer then ends by budget or timeout, fail-closed).
    pub lossy_fire_and_forget: bool,
    /// How long `produce` takes, uniform in `[min, max]` (the pull ticket is held meanwhile).
    pub produce_time: (Duration, Duration),
    /// The producer's link capped at this many chunk bytes per second, for all receivers
    /// together, shared as `ferry serve --limit-rate` shares it: data replies wait for the
    /// link and it serves the receivers with waiting replies in turn (round robin), one
    /// chunk at a time, each leaving when its bytes have gone. `None`: no cap.
    pub pace: Option<u64>,
    /// Safety bound on simulation steps per run call.
    pub max_steps: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            sender: "server".into(),
            latency: (Duration::from_millis(1), Duration::from_millis(5)),
            loss: 0.0,
            duplicate: 0.0,
            lossy_fire_and_forget: false,
            produce_time: (Duration::ZERO, Duration::ZERO),
            pace: None,
            max_steps: 10_000_000,
        }
    }
}

/// Index of a receiver in a [`Sim`](super::Sim).
pub type ReceiverId = usize;

/// Identifies one download started with [`Sim::start_download`](super::Sim::start_download).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DownloadHandle {
    /// The receiver.
    pub receiver: ReceiverId,
    /// Index among that receiver's downloads.
    pub index: usize,
}

/// Message counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages dropped by loss.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Messages dropped because their receiver had crashed.
    pub dropped_by_crash: u64,
    /// `produce` calls run.
    pub produced: u64,
}
