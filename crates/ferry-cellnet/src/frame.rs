//! SFM frames on a byte stream: the 16-byte prefix and a decoder that enforces limits
//! (f3-wire.md §1.1, §1.2, §1.5). Sans-IO: it works on a `BytesMut` the caller fills.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::segment::Segment;

/// Length of the frame prefix.
pub const PREFIX_LEN: usize = 16;

/// `app_id` of every CellNet DATA frame (`CoreCell.APP_ID`).
pub const APP_ID_CELLNET: u16 = 1;

/// Frame types of the prefix's `type` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// A CellNet message.
    Data = 1,
    /// Defined by NVFlare but never used.
    Frag = 2,
    /// Defined by NVFlare but never used.
    Ack = 3,
    /// Sent by the connecting side after connect.
    Hello = 4,
    /// The listening side's answer to HELLO.
    Ready = 5,
    /// Heartbeat request.
    Ping = 6,
    /// Heartbeat answer.
    Pong = 7,
}

impl FrameType {
    /// Map the wire byte, `None` for unknown types.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Some(match b {
            1 => FrameType::Data,
            2 => FrameType::Frag,
            3 => FrameType::Ack,
            4 => FrameType::Hello,
            5 => FrameType::Ready,
            6 => FrameType::Ping,
            7 => FrameType::Pong,
            _ => return None,
        })
    }
}

/// The decoded 16-byte prefix (all fields big-endian on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Total frame length including the prefix.
    pub length: u32,
    /// Length of the msgpack header map.
    pub header_len: u16,
    /// Frame type byte (see [`FrameType`]).
    pub frame_type: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Flags, always 0 in NVFlare 2.9.
    pub flags: u16,
    /// 0 for control frames, 1 for CellNet DATA.
    pub app_id: u16,
    /// Per-endpoint counter; ignored by receivers.
    pub stream_id: u16,
    /// Per-connection counter; ignored by receivers.
    pub sequence: u16,
}

impl Prefix {
    /// Parse the first 16 bytes of `b` (which must hold at least 16 bytes).
    pub fn parse(b: &[u8; PREFIX_LEN]) -> Prefix {
        Prefix {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            header_len: u16::from_be_bytes([b[4], b[5]]),
            frame_type: b[6],
            reserved: b[7],
            flags: u16::from_be_bytes([b[8], b[9]]),
            app_id: u16::from_be_bytes([b[10], b[11]]),
            stream_id: u16::from_be_bytes([b[12], b[13]]),
            sequence: u16::from_be_bytes([b[14], b[15]]),
        }
    }

    /// The 16 wire bytes.
    pub fn to_bytes(&self) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        let mut w = &mut out[..];
        w.put_u32(self.length);
        w.put_u16(self.header_len);
        w.put_u8(self.frame_type);
        w.put_u8(self.reserved);
        w.put_u16(self.flags);
        w.put_u16(self.app_id);
        w.put_u16(self.stream_id);
        w.put_u16(self.sequence);
        out
    }
}

/// One received frame; `headers` and `payload` are zero-copy slices of the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The prefix as received.
    pub prefix: Prefix,
    /// The msgpack header map bytes (may be empty).
    pub headers: Bytes,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// The frame type, `None` if unknown.
    pub fn frame_type(&self) -> Option<FrameType> {
        FrameType::from_u8(self.prefix.frame_type)
    }
}

/// Framing errors. [`FrameError::is_fatal`] tells whether the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length is below 16 (fatal, as NVFlare).
    #[error("frame length {0} is shorter than the 16-byte prefix")]
    TooShort(u32),
    /// The announced length exceeds the configured maximum (fatal, checked before reading).
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLong {
        /// Announced length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// `header_len` exceeds what the frame holds (the frame was consumed and dropped).
    #[error("header length {header_len} exceeds the frame body of {body} bytes")]
    HeaderOverrun {
        /// Announced header length.
        header_len: u16,
        /// Body bytes after the prefix.
        body: usize,
    },
    /// `header_len` exceeds the configured header limit (the frame was consumed and dropped).
    #[error("header length {header_len} exceeds the limit of {max} bytes")]
    HeaderTooLong {
        /// Announced header length.
        header_len: u16,
        /// Configured limit.
        max: usize,
    },
    /// A file region of an outgoing frame could not be read (the file shrank or failed).
    #[error("a file region of the frame could not be read: {0}")]
    Unreadable(String),
}

impl FrameError {
    /// True if the connection has to be closed (the byte stream can no longer be trusted).
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::TooShort(_) | FrameError::TooLong { .. })
    }
}

/// Splits frames off a read buffer, enforcing the size limits before any allocation.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    max_frame_size: usize,
    max_header_size: usize,
}

impl FrameDecoder {
    /// A decoder with the given limits (frame length includes the prefix).
    pub fn new(max_frame_size: usize, max_header_size: usize) -> Self {
        FrameDecoder {
            max_frame_size,
            max_header_size,
        }
    }

    /// Look at the prefix at the start of `buf` (if complete) and return the frame's total
    /// length, validated against the limits. The caller uses it to reserve buffer space.
    pub fn peek_length(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if (len as usize) < PREFIX_LEN {
            return Err(FrameError::TooShort(len));
        }
        if len as usize > self.max_frame_size {
            return Err(FrameError::TooLong {
                len: len as u64,
                max: self.max_frame_size,
            });
        }
        Ok(Some(len as usize))
    }

    /// Take one complete frame off the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (reserve [`FrameDecoder::peek_length`] bytes). A
    /// non-fatal `Err` means the frame was consumed and must be dropped; a fatal one leaves the
    /// buffer as it was and the connection must be closed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(len) = self.peek_length(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        let frame = buf.split_to(len).freeze();
        self.split(frame).map(Some)
    }

    /// Split one whole frame (exactly `length` bytes, prefix included, as validated by
    /// [`FrameDecoder::peek_length`]) into prefix, headers and payload, zero-copy.
    pub fn split(&self, mut frame: Bytes) -> Result<Frame, FrameError> {
        let mut raw = [0u8; PREFIX_LEN];
        raw.copy_from_slice(&frame[..PREFIX_LEN]);
        let prefix = Prefix::parse(&raw);
        frame.advance(PREFIX_LEN);
        let body = frame.len();
        let hl = prefix.header_len as usize;
        if hl > body {
            return Err(FrameError::HeaderOverrun {
                header_len: prefix.header_len,
                body,
            });
        }
        if hl > self.max_header_size {
            return Err(FrameError::HeaderTooLong {
                header_len: prefix.header_len,
                max: self.max_header_size,
            });
        }
        let headers = frame.split_to(hl);
        Ok(Frame {
            prefix,
            headers,
            payload: frame,
        })
    }
}

/// A frame to send: the prefix fields except the counters, which the connection's writer
/// assigns, plus headers and payload as segments written with vectored I/O (no copy); a
/// payload segment may be a region of a file, sent from the file when the frame is written.
#[derive(Clone, Debug)]
pub struct OutFrame {
    /// Frame type.
    pub frame_type: FrameType,
    /// 0 for control frames, [`APP_ID_CELLNET`] for DATA.
    pub app_id: u16,
    /// Encoded msgpack header map (may be empty).
    pub headers: Bytes,
    /// Payload segments, concatenated on the wire.
    pub payload: Vec<Segment>,
}

impl OutFrame {
    /// Total length on the wire, prefix included.
    pub fn wire_len(&self) -> usize {
        PREFIX_LEN + self.headers.len() + self.payload.iter().map(Segment::len).sum::<usize>()
    }

    /// The prefix for this frame with the given counters. Fails if the frame cannot be
    /// expressed (length over u32, headers over u16).
    pub fn prefix(&self, stream_id: u16, sequence: u16) -> Result<Prefix, FrameError> {
        let len = self.wire_len();
        let length = u32::try_from(len).map_err(|_| FrameError::TooLong {
            len: len as u64,
            max: u32::MAX as usize,
        })?;
        let header_len =
            u16::try_from(self.headers.len()).map_err(|_| FrameError::HeaderTooLong {
                header_len: u16::MAX,
                max: u16::MAX as usize,
            })?;
        Ok(Prefix {
            length,
            header_len,
            frame_type: self.frame_type as u8,
            reserved: 0,
            flags: 0,
            app_id: self.app_id,
            stream_id,
            sequence,
        })
    }

    /// True if a payload segment is a file region (written by the writer task, never by a
    /// sender directly: a region may take many writes).
    pub fn has_file(&self) -> bool {
        self.payload.iter().any(|s| matches!(s, Segment::File(_)))
    }

    /// The whole frame in one buffer (tests and small control frames); file regions are read.
    pub fn to_bytes(&self, stream_id: u16, sequence: u16) -> Result<Bytes, FrameError> {
        let p = self.prefix(stream_id, sequence)?;
        let mut out = BytesMut::with_capacity(self.wire_len());
        out.put_slice(&p.to_bytes());
        out.put_slice(&self.headers);
        for s in &self.payload {
            match s {
                Segment::Bytes(b) => out.put_slice(b),
                Segment::File(r) => {
                    let b = r
                        .read()
                        .map_err(|e| FrameError::Unreadable(e.to_string()))?;
                    out.put_slice(&b);
                }
            }
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::hex;

    #[test]
    fn ping_capture_decodes() {
        // f3-wire.md §1.4: PING, stream_id 44, seq 29, payload msgpack nil.
        let wire = hex("00 00 00 11 00 00 06 00 00 00 00 00 00 2c 00 1d c0");
        let mut buf = BytesMut::from(&wire[..]);
        let d = FrameDecoder::new(1 << 20, 65535);
        let f = d.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(f.frame_type(), Some(FrameType::Ping));
        assert_eq!(f.prefix.length, 17);
        assert_eq!(f.prefix.stream_id, 44);
        assert_eq!(f.prefix.sequence, 29);
        assert!(f.headers.is_empty());
        assert_eq!(&f.payload[..], &[0xc0]);
        // and the encoder produces the same bytes
        let out = OutFrame {
            frame_type: FrameType::Ping,
            app_id: 0,
            headers: Bytes::new(),
            payload: vec![Bytes::from_static(&[0xc0]).into()],
        };
        assert_eq!(&out.to_bytes(44, 29).unwrap()[..], &wire[..]);
    }

    #[test]
    fn data_prefix_capture() {
        // f3-wire.md §7: REQ task/echo prefix, len=364 hlen=322 DATA app=1 sid=17 seq=2.
        let p = Prefix::parse(
            &hex("00 00 01 6c 01 42 01 00 00 00 00 01 00 11 00 02")
                .try_into()
                .unwrap(),
        );
        assert_eq!(p.length, 364);
        assert_eq!(p.header_len, 322);
        assert_eq!(p.frame_type, 1);
        assert_eq!(p.app_id, 1);
        assert_eq!(p.stream_id, 17);
        assert_eq!(p.sequence, 2);
        assert_eq!(
            p.to_bytes().to_vec(),
            hex("00 00 01 6c 01 42 01 00 00 00 00 01 00 11 00 02")
        );
    }

    #[test]
    fn partial_and_limits() {
        let d = FrameDecoder::new(100, 10);
        let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(d.decode(&mut buf), Ok(None));
        let mut short = BytesMut::from(&hex("00 00 00 0f 00 00 01 00 00 00 00 00 00 00 00 00")[..]);
        assert_eq!(d.decode(&mut short), Err(FrameError::TooShort(15)));
        assert!(FrameError::TooShort(15).is_fatal());
        let mut long = BytesMut::from(&hex("00 00 00 65 00 00 01 00 00 00 00 00 00 00 00 00")[..]);
        assert!(matches!(
            d.decode(&mut long),
            Err(FrameError::TooLong { len: 101, .. })
        ));
        // exactly 16: legal, empty
        let mut empty = BytesMut::from(&hex("00 00 00 10 00 00 01 00 00 00 00 00 00 00 00 00")[..]);
        let f = d.decode(&mut empty).unwrap().unwrap();
        assert!(f.headers.is_empty() && f.payload.is_empty());
        // header overrun: consumed, non-fatal
        let mut over =
            BytesMut::from(&hex("00 00 00 11 00 05 01 00 00 00 00 00 00 00 00 00 c0")[..]);
        let e = d.decode(&mut over).unwrap_err();
        assert!(!e.is_fatal());
        assert!(over.is_empty());
        // header over the configured limit: consumed, non-fatal
        let mut big = BytesMut::from(
            &hex(
                "00 00 00 1b 00 0b 01 00 00 00 00 00 00 00 00 00 80 80 80 80 80 80 80 80 80 80 80",
            )[..],
        );
        let e = d.decode(&mut big).unwrap_err();
        assert!(matches!(e, FrameError::HeaderTooLong { .. }) && !e.is_fatal());
        assert!(big.is_empty());
    }
}
