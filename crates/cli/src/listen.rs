//! Listeners: bind the configured address, or adopt one handed over by the parent.

use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

/// The listener named `name` handed over through `LISTEN_FDS` if there is one (or the first
/// unnamed one for `gateway`, `worker`, `stub`), else `addr` bound.
pub async fn listener(
    addr: SocketAddr,
    field: &str,
    name: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(l) = inherited(name)? {
        return Ok(l);
    }
    let bound = ssw_up::platform::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    });
    bound.with_context(|| format!("{field}: cannot listen on {addr}"))
}

/// systemd's socket-activation protocol: `LISTEN_FDS=n` (and `LISTEN_PID` unset or ours) means
/// fds 3 … 3+n-1 are bound TCP listeners, named by `LISTEN_FDNAMES` (`gateway:ops`). Returns the
/// one named `name`; an unnamed single listener is the role's main one. `ssw up`, the test
/// harness and systemd socket units hand listeners over this way. Each fd is adopted once.
pub fn inherited(name: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let ours = std::env::var("LISTEN_PID")
        .map(|p| p == std::process::id().to_string())
        .unwrap_or(true);
    let count: usize = match std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        Some(n) if ours => n,
        _ => return Ok(None),
    };
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let index = match names.iter().position(|n| *n == name) {
        Some(i) if i < count => i,
        // One listener, whatever its name: the role's main one.
        _ if count == 1 && name != "ops" => 0,
        _ => return Ok(None),
    };
    static ADOPTED: [AtomicBool; 8] = [const { AtomicBool::new(false) }; 8];
    anyhow::ensure!(index < ADOPTED.len(), "too many inherited listeners");
    anyhow::ensure!(
        !ADOPTED[index].swap(true, Ordering::SeqCst),
        "the inherited listener `{name}` was already adopted"
    );
    // SAFETY: the parent handed this fd over for exactly this purpose, nothing else in this
    // process owns it, and the flag above makes sure it is adopted once.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3 + index as i32) };
    std_listener
        .set_nonblocking(true)
        .context("inherited listener")?;
    tokio::net::TcpListener::from_std(std_listener)
        .context("inherited listener")
        .map(Some)
}
