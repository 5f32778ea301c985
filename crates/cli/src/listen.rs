//! Listeners: bind the configured address, or adopt one handed over by the parent.

use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

/// The listener handed over through `LISTEN_FDS` if there is one, else `addr` bound.
pub async fn listener(addr: SocketAddr, field: &str) -> anyhow::Result<tokio::net::TcpListener> {
    if let Some(l) = inherited()? {
        return Ok(l);
    }
    let bound = ssw_up::platform::bind(addr).and_then(|l| {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    });
    bound.with_context(|| format!("{field}: cannot listen on {addr}"))
}

/// systemd's socket-activation protocol: `LISTEN_FDS=1` (and `LISTEN_PID` unset or ours) means
/// fd 3 is a bound TCP listener to serve on. `ssw up`, the test harness and systemd socket units
/// hand listeners over this way.
pub fn inherited() -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let ours = std::env::var("LISTEN_PID")
        .map(|p| p == std::process::id().to_string())
        .unwrap_or(true);
    if !ours || std::env::var("LISTEN_FDS").as_deref() != Ok("1") {
        return Ok(None);
    }
    static ADOPTED: AtomicBool = AtomicBool::new(false);
    anyhow::ensure!(
        !ADOPTED.swap(true, Ordering::SeqCst),
        "the inherited listener was already adopted"
    );
    // SAFETY: the parent handed fd 3 over for exactly this purpose, nothing else in this
    // process owns it, and the flag above makes sure it is adopted once.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(3) };
    std_listener
        .set_nonblocking(true)
        .context("inherited listener")?;
    tokio::net::TcpListener::from_std(std_listener)
        .context("inherited listener")
        .map(Some)
}
