//! In-process driver: `inproc://NAME` listeners in a process-wide registry, connected through
//! tokio duplex pipes. The same framing and protocol run over it, without sockets.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tokio::io::DuplexStream;
use tokio::sync::mpsc;

use super::Transport;
use crate::error::CellnetError;

/// Pipe buffer per direction.
const PIPE_CAPACITY: usize = 1 << 20;

type Registry = Mutex<HashMap<String, mpsc::Sender<DuplexStream>>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Register `name`; the receiver yields the server ends of new connections.
pub(crate) fn listen(name: &str) -> Result<mpsc::Receiver<DuplexStream>, CellnetError> {
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = reg.get(name) {
        if !tx.is_closed() {
            return Err(CellnetError::InvalidUrl {
                url: format!("inproc://{name}"),
                reason: "name already in use".into(),
            });
        }
    }
    let (tx, rx) = mpsc::channel(64);
    reg.insert(name.to_string(), tx);
    Ok(rx)
}

/// Remove `name` from the registry.
pub(crate) fn unlisten(name: &str) {
    registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(name);
}

/// Connect to a registered name.
pub(crate) async fn connect(name: &str) -> Result<DuplexStream, CellnetError> {
    let tx = registry()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned();
    let tx = tx.ok_or_else(|| {
        CellnetError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("no inproc listener named {name:?}"),
        ))
    })?;
    let (client, server) = tokio::io::duplex(PIPE_CAPACITY);
    tx.send(server).await.map_err(|_| {
        CellnetError::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("inproc listener {name:?} is closed"),
        ))
    })?;
    Ok(client)
}

/// Wrap a pipe end.
pub(crate) fn transport(s: DuplexStream, name: &str) -> Transport {
    let (rd, wr) = tokio::io::split(s);
    Transport {
        rd: Box::new(rd),
        wr: Box::new(wr),
        peer_addr: format!("inproc://{name}"),
        peer_cn: None,
    }
}
