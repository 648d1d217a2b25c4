//! The HELLO/READY handshake (f3-wire.md §1.3) and the payloads it exchanges: the peer's
//! name, ferry's extra keys (`ferry_sync`, a refusal and whether it is about load), and the
//! control frames (PING/PONG) a connection answers before and outside the cell.

use bytes::Bytes;
use rmpv::Value;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::CellnetError;
use crate::fqcn::{self, Fqcn};
use crate::frame::{FrameType, OutFrame};
use crate::log_limit::{limited, LogLimiter};
use crate::msgpack;
use crate::reader::FrameReader;
use crate::writer::WriteQueue;

/// Extra HELLO/READY key: "this endpoint registers a peer before it reads the peer's next
/// frame", i.e. DATA may follow READY at once. NVFlare keeps unknown keys as endpoint
/// properties and ignores them.
const SYNC_KEY: &str = "ferry_sync";

/// Extra READY key: the accepting side refuses this connection, and says why (a live cell
/// already has the name, the certificate is for another name, ...). The connection closes
/// right after. NVFlare ignores unknown keys; a ferry cell reports the reason as
/// [`CellnetError::Refused`].
const REFUSED_KEY: &str = "ferry_refused";

/// Extra READY key next to [`REFUSED_KEY`]: the refusal is about load (too many
/// connections), not about who we are; a ferry cell reports it as [`CellnetError::Busy`].
const BUSY_KEY: &str = "ferry_busy";

/// The payload of HELLO and READY (READY with `refused` set says no).
pub(crate) fn hello_payload(own: &Fqcn, refused: Option<&str>) -> Bytes {
    refusal_payload(own, refused, false)
}

fn refusal_payload(own: &Fqcn, refused: Option<&str>, busy: bool) -> Bytes {
    let n = 4 + refused.is_some() as u32 + busy as u32;
    let mut w = msgpack::MsgpackWriter::new();
    w.map_len(n)
        .str("endpoint_name")
        .str(own.as_str())
        .str("timestamp")
        .f64(crate::clock::unix_now())
        .str("fqcn")
        .str(own.as_str())
        .str(SYNC_KEY)
        .bool(true);
    if let Some(why) = refused {
        w.str(REFUSED_KEY).str(why);
    }
    if busy {
        w.str(BUSY_KEY).bool(true);
    }
    w.finish().to_contiguous()
}

/// The wire bytes of a READY that refuses a connection because this cell is busy (sent
/// before the peer's HELLO is read; see [`crate::admission`]).
pub(crate) fn busy_ready(own: &Fqcn, why: &str) -> Bytes {
    control(FrameType::Ready, refusal_payload(own, Some(why), true))
        .to_bytes(1, 1)
        .unwrap_or_default()
}

/// The refusal a READY payload carries, if any, as the error to report.
fn hello_refusal(payload: &[u8]) -> Option<CellnetError> {
    match msgpack::decode_value(payload, payload.len().max(1)) {
        Ok(Value::Map(entries)) => {
            let why = entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(REFUSED_KEY))
                .map(|(_, v)| v.as_str().unwrap_or("refused").to_string())?;
            let busy = entries
                .iter()
                .any(|(k, v)| k.as_str() == Some(BUSY_KEY) && v.as_bool() == Some(true));
            Some(if busy {
                CellnetError::Busy(why)
            } else {
                CellnetError::Refused(why)
            })
        }
        _ => None,
    }
}

/// True if a READY/HELLO payload announces [`SYNC_KEY`].
fn hello_sync(payload: &[u8]) -> bool {
    match msgpack::decode_value(payload, payload.len().max(1)) {
        Ok(Value::Map(entries)) => entries
            .iter()
            .any(|(k, v)| k.as_str() == Some(SYNC_KEY) && v.as_bool() == Some(true)),
        _ => false,
    }
}

/// The `endpoint_name` of a HELLO/READY payload.
fn hello_name(payload: &[u8]) -> Result<String, CellnetError> {
    let v = msgpack::decode_value(payload, payload.len().max(1))
        .map_err(|e| CellnetError::Handshake(format!("undecodable HELLO/READY payload: {e}")))?;
    let Value::Map(entries) = v else {
        return Err(CellnetError::Handshake(
            "HELLO/READY payload is not a map".into(),
        ));
    };
    entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("endpoint_name"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| CellnetError::Handshake("HELLO/READY without endpoint_name".into()))
}

pub(crate) fn control(frame_type: FrameType, payload: Bytes) -> OutFrame {
    OutFrame {
        frame_type,
        app_id: 0,
        headers: Bytes::new(),
        payload: vec![payload.into()],
    }
}

pub(crate) fn nil_payload() -> Bytes {
    Bytes::from_static(&[0xc0])
}

/// What the handshake learnt.
pub(crate) enum Handshake {
    /// The peer's validated FQCN, and whether it may receive DATA right away (always true
    /// on the accepting side; on the connecting side only if READY announced [`SYNC_KEY`]).
    /// On the accepting side READY is not sent yet: admission (`Inbound::admit`) decides
    /// between READY and a refusal.
    Peer(String, bool),
    /// The peer claimed our own name: keep the socket, never register it (NVFlare).
    OwnName,
}

pub(crate) async fn handshake(
    me: &Fqcn,
    reader: &mut FrameReader,
    tx: &WriteQueue,
    active: bool,
    peer_cn: Option<&str>,
    log: &LogLimiter,
) -> Result<Handshake, CellnetError> {
    let closed = || CellnetError::ConnectionClosed("closed during handshake".into());
    if active {
        tx.send(control(FrameType::Hello, hello_payload(me, None)))
            .await
            .map_err(|_| closed())?;
    }
    loop {
        let Some(frame) = reader.next().await? else {
            return Err(closed());
        };
        match (frame.frame_type(), active) {
            (Some(FrameType::Ready), true) => {
                if let Some(refusal) = hello_refusal(&frame.payload) {
                    return Err(refusal);
                }
                let name = hello_name(&frame.payload)?;
                fqcn::validate(&name).map_err(|r| {
                    CellnetError::Handshake(format!("READY with invalid FQCN {name:?}: {r}"))
                })?;
                check_cn(peer_cn, &name)?;
                return Ok(Handshake::Peer(name, hello_sync(&frame.payload)));
            }
            (Some(FrameType::Hello), false) => {
                let checked = hello_name(&frame.payload).and_then(|name| {
                    fqcn::validate(&name).map_err(|r| {
                        CellnetError::Handshake(format!("HELLO with invalid FQCN {name:?}: {r}"))
                    })?;
                    check_cn(peer_cn, &name)?;
                    Ok(name)
                });
                let name = match checked {
                    Ok(name) => name,
                    Err(e) => {
                        // tell the peer why before closing (a ferry cell reports it)
                        let why = e.to_string();
                        let _ = tx
                            .send(control(FrameType::Ready, hello_payload(me, Some(&why))))
                            .await;
                        return Err(e);
                    }
                };
                if name == me.as_str() {
                    limited!(
                        log,
                        error,
                        "peer claims this cell's own name {name:?}; not registered"
                    );
                    // NVFlare answers READY and keeps the socket
                    tx.send(control(FrameType::Ready, hello_payload(me, None)))
                        .await
                        .map_err(|_| closed())?;
                    return Ok(Handshake::OwnName);
                }
                return Ok(Handshake::Peer(name, true));
            }
            (Some(FrameType::Ping), _) => {
                let _ = tx.try_send(control(FrameType::Pong, nil_payload()));
            }
            (Some(FrameType::Data), _) => {
                limited!(
                    log,
                    error,
                    "DATA frame before the handshake completed; dropped"
                );
            }
            (Some(t), _) => debug!("{t:?} frame during the handshake; dropped"),
            (None, _) => limited!(
                log,
                error,
                "received unsupported frame type {}; dropped",
                frame.prefix.frame_type
            ),
        }
    }
}

/// Under TLS: the certificate CN must be the first segment of the FQCN the peer claims.
fn check_cn(peer_cn: Option<&str>, name: &str) -> Result<(), CellnetError> {
    match peer_cn {
        Some(cn) if name.split('.').next() != Some(cn) => Err(CellnetError::PeerIdentity {
            certificate: cn.to_string(),
            claimed: name.to_string(),
        }),
        _ => Ok(()),
    }
}

/// A peer that claimed our own name: answer PINGs, drop everything else, until it leaves.
pub(crate) async fn idle_unregistered(
    reader: &mut FrameReader,
    tx: &WriteQueue,
    close: &CancellationToken,
) {
    loop {
        let f = tokio::select! {
            r = reader.next() => r,
            _ = close.cancelled() => return,
        };
        match f {
            Ok(Some(f)) if f.frame_type() == Some(FrameType::Ping) => {
                let _ = tx.try_send(control(FrameType::Pong, nil_payload()));
            }
            Ok(Some(_)) => debug!("frame from an unregistered peer dropped"),
            _ => return,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;
    use bytes::BytesMut;

    #[test]
    fn hello_capture_parses() {
        // f3-wire.md §1.3: HELLO site-1 → server, 69 bytes
        let mut wire = vec![
            0x00, 0x00, 0x00, 0x45, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x00, 0x01, 0x83, 0xad,
        ];
        wire.extend_from_slice(b"endpoint_name");
        wire.push(0xa6);
        wire.extend_from_slice(b"site-1");
        wire.push(0xa9);
        wire.extend_from_slice(b"timestamp");
        wire.extend_from_slice(&[0xcb, 0x41, 0xda, 0xc2, 0x86, 0x77, 0xde, 0xf7, 0x74, 0xa4]);
        wire.extend_from_slice(b"fqcn");
        wire.push(0xa6);
        wire.extend_from_slice(b"site-1");
        assert_eq!(wire.len(), 69);
        let mut buf = BytesMut::from(&wire[..]);
        let f = FrameDecoder::new(1 << 20, 65535)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert_eq!(f.frame_type(), Some(FrameType::Hello));
        assert_eq!(hello_name(&f.payload).unwrap(), "site-1");
        // our own HELLO has the same shape and length for the same name
        let ours = control(
            FrameType::Hello,
            hello_payload(&Fqcn::new("site-1").unwrap(), None),
        )
        .to_bytes(1, 1)
        .unwrap();
        // plus the ferry_sync key: 83 -> 84 map, 12 more bytes
        assert_eq!(ours.len(), 69 + 12);
        assert_eq!(&ours[4..16], &wire[4..16]);
        assert_eq!(ours[16], 0x84);
        assert_eq!(&ours[17..36], &wire[17..36]);
        assert!(hello_sync(&ours[16..]));
        assert!(!hello_sync(&wire[16..]));
    }

    #[test]
    fn hello_name_rejects_garbage() {
        assert!(hello_name(&[0xc0]).is_err());
        assert!(hello_name(&[0x80]).is_err());
        assert!(hello_name(&[0xc1]).is_err());
        assert!(hello_name(&[0x81, 0xad]).is_err());
    }
}
