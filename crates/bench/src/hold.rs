//! Background load that stresses the gateway's edge while the measured requests run:
//! connections held open idle or half-way through a head, and streams whose client never
//! reads. What the gateway does with them (timeouts, caps, memory) is what the edge benchmarks
//! measure; the measured requests show whether service stays intact meanwhile.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// What to hold open during a run.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Hold {
    /// Connections opened before the run and kept open, sending nothing.
    pub idle: usize,
    /// Of those, how many send half a request head first (a slow client).
    pub slow: usize,
    /// Streaming requests whose responses are never read (a tiny receive buffer, no reads).
    pub unread: usize,
    /// `max_tokens` of each unread stream.
    pub unread_tokens: u32,
}

impl Hold {
    /// Whether anything is held.
    pub fn any(&self) -> bool {
        self.idle + self.unread > 0
    }
}

/// The connections held; dropped (closed) at the end of the run.
#[derive(Debug, Default)]
pub struct Held {
    /// Open sockets.
    pub conns: Vec<TcpStream>,
    /// Connections that could not be opened (e.g. refused at the gateway's cap).
    pub failed: usize,
}

/// The host and port of a base URL (`http://host:port/v1`).
pub fn addr_of(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be held"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))
}

/// Opens everything `hold` asks for against `addr` (requests for `model`).
pub async fn open(addr: SocketAddr, hold: Hold, model: &str) -> Held {
    let mut held = Held::default();
    for i in 0..hold.idle {
        match TcpStream::connect(addr).await {
            Ok(mut c) => {
                if i < hold.slow {
                    let _ = c
                        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                        .await;
                }
                held.conns.push(c);
            }
            Err(_) => held.failed += 1,
        }
    }
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "max_tokens": hold.unread_tokens.max(1),
        "messages": [{"role": "user", "content": "talk to me"}],
    })
    .to_string();
    for _ in 0..hold.unread {
        match unread_stream(addr, &body).await {
            Ok(c) => held.conns.push(c),
            Err(_) => held.failed += 1,
        }
    }
    // Let the gateway accept (and the streams start) before measuring.
    tokio::time::sleep(Duration::from_millis(200)).await;
    held
}

async fn unread_stream(addr: SocketAddr, body: &str) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_recv_buffer_size(4096)?;
    let mut c = socket.connect(addr).await?;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).await?;
    Ok(c)
}
