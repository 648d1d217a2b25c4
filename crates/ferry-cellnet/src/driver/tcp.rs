//! Plain TCP (tokio, TCP_NODELAY on, as NVFlare).

use tokio::net::{TcpListener, TcpStream};

use super::Transport;
use crate::error::CellnetError;

/// Bind a listener; returns it and the bound `HOST:PORT` (port 0 resolved).
pub(crate) async fn bind(addr: &str) -> Result<(TcpListener, std::net::SocketAddr), CellnetError> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// Connect with TCP_NODELAY.
pub(crate) async fn connect(addr: &str) -> Result<TcpStream, CellnetError> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Wrap an established socket.
pub(crate) fn transport(s: TcpStream) -> Transport {
    let _ = s.set_nodelay(true);
    let peer_addr = s
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let (rd, wr) = s.into_split();
    Transport {
        rd: Box::new(rd),
        wr: Box::new(wr),
        peer_addr,
        peer_cn: None,
    }
}
