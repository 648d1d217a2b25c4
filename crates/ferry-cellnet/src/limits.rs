//! Explicit limits and tuning knobs of a cell.

use std::time::Duration;

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

/// NVFlare 2.9's largest legal frame (`2 GiB − 2 MiB`); no limit may exceed it.
pub const NVFLARE_MAX_FRAME_SIZE: usize = 2_145_386_496;

/// Limits that protect a cell from its peers, and the knobs of its protocol timers.
///
/// Every size a peer announces is checked against these limits **before** anything is
/// allocated for it, and nothing is allocated for a frame or a stream beyond what has arrived
/// of it (buffers grow as bytes come in). The defaults suit the DownloadService traffic ferry
/// carries (chunks of 1–64 MiB) while leaving headroom for bigger plain messages; raise
/// `max_frame_size` if an application sends single messages larger than 256 MiB (NVFlare
/// itself allows ~2 GiB).
///
/// What a peer can make a cell hold is bounded three ways:
///
/// - **Connections**: `max_connections` in all and `max_connections_per_address` from one IP
///   address; a connection over either is answered with a READY that says the cell is busy
///   (a ferry peer reports [`crate::CellnetError::Busy`]) and closed, before a task reads
///   from it.
/// - **Unfinished data**: frames in progress, `sm__` streams in reassembly and idle frame
///   buffers kept for reuse share one budget, `max_held_bytes`. When a new byte does not fit,
///   the connection whose unfinished data saw no progress for the longest time is closed to
///   make room; a connection that alone exceeds the budget is closed itself. Until HELLO/READY
///   a frame may not exceed `max_handshake_frame_size`; a frame in progress that receives no
///   byte for `frame_stall_timeout` closes its connection.
/// - **Work and writes**: `max_in_flight_per_peer` handlers per connection, `send_timeout`
///   without write progress closes a connection that stopped reading (dropping what was queued
///   for it).
///
/// ```
/// use std::time::Duration;
/// use ferry_cellnet::{Cell, Limits, MIB};
///
/// // a cell on a small machine: less unfinished data, fewer connections per host
/// let limits = Limits {
///     max_held_bytes: 128 * MIB,
///     max_connections_per_address: 16,
///     frame_stall_timeout: Duration::from_secs(60),
///     ..Limits::default()
/// };
/// let cell = Cell::builder("server").unwrap().limits(limits).build();
/// assert_eq!(cell.limits().max_connections_per_address, 16);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted from a peer, prefix included (default 256 MiB). A larger
    /// announced length closes the connection before the body is read.
    pub max_frame_size: usize,
    /// Largest frame accepted before the HELLO/READY handshake is done (default 64 KiB; a
    /// HELLO is ~100 bytes). A larger one closes the connection.
    pub max_handshake_frame_size: usize,
    /// Largest msgpack header map accepted or sent (default 65 535, the u16 field's maximum).
    /// A frame with larger headers is dropped; the connection stays open.
    pub max_header_size: usize,
    /// Largest payload this cell will send in one message (default: what fits in
    /// `max_frame_size` next to the largest header map). Larger sends fail with `msg_too_big`.
    pub max_message_size: usize,
    /// Requests from one connection that may run handlers at the same time (default 1024).
    /// Further requests are answered with `service_unavailable`.
    pub max_in_flight_per_peer: usize,
    /// Largest byte stream (`sm__*`) this cell reassembles or sends (default 512 MiB, and at
    /// most `max_held_bytes`). A stream that announces or reaches more is aborted with an
    /// `sm__ERROR`.
    pub max_stream_bytes: usize,
    /// Streams one connection may have in reassembly at the same time, whatever origins they
    /// claim (default 64). Further ones are refused with an `sm__ERROR`.
    pub max_streams_per_peer: usize,
    /// Bytes of unfinished data this cell holds for all its peers together: frames in
    /// progress, streams in reassembly and idle frame buffers kept for reuse (default 512 MiB,
    /// at least `max_frame_size`). See the type's documentation for what happens when it is
    /// full.
    pub max_held_bytes: usize,
    /// A frame in progress that receives no byte for this long is dropped and its connection
    /// closed (default 30 s: a slow link still delivers bytes, a peer that stopped half-way
    /// does not).
    pub frame_stall_timeout: Duration,
    /// Connections the listeners accept at the same time, in all (default 1024).
    pub max_connections: usize,
    /// Connections the listeners accept from one IP address at the same time (default 256).
    pub max_connections_per_address: usize,
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
    /// A write to a peer that makes no progress for this long closes the connection, and
    /// what was queued for it (chunks holding a sender's byte budget) is dropped (default
    /// 10 s: far below the 60 s a ferry receiver waits for a reply, so the budget comes back
    /// long before anyone times out). A slow peer that keeps reading is never cut off.
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
            max_handshake_frame_size: 64 * 1024,
            max_header_size: 65_535,
            max_message_size: max_frame_size - 16 - 65_535,
            max_in_flight_per_peer: 1024,
            max_stream_bytes: 512 * MIB,
            max_streams_per_peer: 64,
            max_held_bytes: 512 * MIB,
            frame_stall_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_address: 256,
            max_route_hops: 32,
            handshake_timeout: Duration::from_secs(10),
            name_probe_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
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
    /// 65 535 bytes, chunk ≥ 1 byte, ...) and to each other (the held-memory budget fits one
    /// largest frame, a stream fits the budget). Cells call this on the limits they are given.
    pub fn sanitized(mut self) -> Self {
        self.max_frame_size = self.max_frame_size.clamp(16, NVFLARE_MAX_FRAME_SIZE);
        // a HELLO needs about a hundred bytes
        self.max_handshake_frame_size = self
            .max_handshake_frame_size
            .clamp(1024, self.max_frame_size.max(1024));
        self.max_header_size = self.max_header_size.min(65_535);
        self.max_message_size = self
            .max_message_size
            .min(self.max_frame_size.saturating_sub(16));
        self.max_in_flight_per_peer = self.max_in_flight_per_peer.max(1);
        self.max_streams_per_peer = self.max_streams_per_peer.max(1);
        self.max_held_bytes = self.max_held_bytes.max(self.max_frame_size);
        self.max_stream_bytes = self.max_stream_bytes.min(self.max_held_bytes);
        self.max_connections = self.max_connections.max(1);
        self.max_connections_per_address = self
            .max_connections_per_address
            .clamp(1, self.max_connections);
        self.max_route_hops = self.max_route_hops.max(1);
        self.frame_stall_timeout = self.frame_stall_timeout.max(Duration::from_millis(1));
        self.send_timeout = self.send_timeout.max(Duration::from_millis(1));
        self.stream_chunk_size = self
            .stream_chunk_size
            .clamp(1, self.max_message_size.max(1));
        self.stream_window = self.stream_window.max(self.stream_chunk_size);
        self.stream_ack_interval = self.stream_ack_interval.max(1);
        self
    }
}
