//! Explicit limits and tuning knobs of a cell.

use std::time::Duration;

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// NVFlare 2.9's largest legal frame (`2 GiB − 2 MiB`); no limit may exceed it.
pub const NVFLARE_MAX_FRAME_SIZE: usize = 2_145_386_496;

/// Limits that protect a cell from its peers, and the knobs of its protocol timers.
///
/// Every size a peer announces is checked against these limits **before** anything is
/// allocated for it. The defaults suit the DownloadService traffic ferry carries (chunks of
/// 1–8 MiB) while leaving headroom for bigger plain messages; raise `max_frame_size` if an
/// application sends single messages larger than 256 MiB (NVFlare itself allows ~2 GiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted from a peer, prefix included (default 256 MiB). A larger
    /// announced length closes the connection before the body is read.
    pub max_frame_size: usize,
    /// Largest msgpack header map accepted or sent (default 65 535, the u16 field's maximum).
    /// A frame with larger headers is dropped; the connection stays open.
    pub max_header_size: usize,
    /// Largest payload this cell will send in one message (default: what fits in
    /// `max_frame_size` next to the largest header map). Larger sends fail with `msg_too_big`.
    pub max_message_size: usize,
    /// Requests from one connection that may run handlers at the same time (default 1024).
    /// Further requests are answered with `service_unavailable`.
    pub max_in_flight_per_peer: usize,
    /// Largest byte stream (`sm__*`) this cell reassembles (default 1 GiB). A stream that
    /// announces or reaches more is aborted with an `sm__ERROR`.
    pub max_stream_bytes: usize,
    /// Streams one origin may have in reassembly at the same time (default 64).
    pub max_streams_per_peer: usize,
    /// Connections a listener accepts at the same time (default 1024); extra ones are closed
    /// right after accept.
    pub max_connections: usize,
    /// Hops a message may have travelled (`cn__route` length) before it is no longer forwarded
    /// (default 32); guards against routing loops.
    pub max_route_hops: usize,
    /// Time allowed for the TLS handshake plus HELLO/READY (default 10 s).
    pub handshake_timeout: Duration,
    /// When a second connection claims the name of a connected peer, the holder is sent a
    /// PING and keeps its name if anything arrives from it within this time (default 5 s);
    /// otherwise it is taken for dead and replaced. Keep it below the connecting side's
    /// `handshake_timeout` (NVFlare and ferry: 10 s), which covers this wait.
    pub name_probe_timeout: Duration,
    /// A write to a peer that makes no progress for this long closes the connection
    /// (default 30 s, NVFlare's `streaming_send_timeout`).
    pub send_timeout: Duration,
    /// Send a PING on a connection that has received nothing for this long (default 60 s, as
    /// NVFlare). Missing PONGs are not enforced, like NVFlare.
    pub heartbeat_interval: Duration,
    /// A stream in reassembly that receives nothing for this long is dropped (default 60 s).
    pub stream_idle_timeout: Duration,
    /// Chunk size of streams this cell sends (default 1 MiB, NVFlare's `streaming_chunk_size`).
    pub stream_chunk_size: usize,
    /// Unacknowledged bytes a stream sender may have outstanding (default 64 MiB, NVFlare 2.9).
    pub stream_window: usize,
    /// A stream receiver sends an ACK each time this many bytes were consumed since the last
    /// one, and at the end (default 4 MiB).
    pub stream_ack_interval: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let max_frame_size = 256 * MIB;
        Limits {
            max_frame_size,
            max_header_size: 65_535,
            max_message_size: max_frame_size - 16 - 65_535,
            max_in_flight_per_peer: 1024,
            max_stream_bytes: 1024 * MIB,
            max_streams_per_peer: 64,
            max_connections: 1024,
            max_route_hops: 32,
            handshake_timeout: Duration::from_secs(10),
            name_probe_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(60),
            stream_idle_timeout: Duration::from_secs(60),
            stream_chunk_size: MIB,
            stream_window: 64 * MIB,
            stream_ack_interval: 4 * MIB,
        }
    }
}

impl Limits {
    /// Clamp values to what the wire can express (frame ≤ NVFlare's maximum, header map ≤
    /// 65 535 bytes, chunk ≥ 1 byte, ...). Cells call this on the limits they are given.
    pub fn sanitized(mut self) -> Self {
        self.max_frame_size = self.max_frame_size.clamp(16, NVFLARE_MAX_FRAME_SIZE);
        self.max_header_size = self.max_header_size.min(65_535);
        self.max_message_size = self
            .max_message_size
            .min(self.max_frame_size.saturating_sub(16));
        self.max_in_flight_per_peer = self.max_in_flight_per_peer.max(1);
        self.max_streams_per_peer = self.max_streams_per_peer.max(1);
        self.max_connections = self.max_connections.max(1);
        self.max_route_hops = self.max_route_hops.max(1);
        self.stream_chunk_size = self
            .stream_chunk_size
            .clamp(1, self.max_message_size.max(1));
        self.stream_window = self.stream_window.max(self.stream_chunk_size);
        self.stream_ack_interval = self.stream_ack_interval.max(1);
        self
    }
}
