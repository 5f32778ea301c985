//! systemd's notify protocol: readiness (`READY=1`), stopping (`STOPPING=1`) and the watchdog
//! (`WATCHDOG=1` at half of `WATCHDOG_USEC`). A no-op outside systemd (`NOTIFY_SOCKET` unset).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

fn socket_path() -> Option<std::path::PathBuf> {
    std::env::var_os("NOTIFY_SOCKET").map(Into::into)
}

/// Sends one notification; returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = socket_path() else {
        return false;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    sent.is_ok()
}

/// The watchdog period systemd asked for, if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let ours = std::env::var("WATCHDOG_PID")
        .map(|p| p == std::process::id().to_string())
        .unwrap_or(true);
    (ours && usec > 0).then(|| Duration::from_micros(usec))
}

/// Signals readiness and keeps the watchdog fed (at half its period) while `alive` says the
/// process is healthy, until `shutdown`.
pub fn ready_with_watchdog<F>(alive: F, shutdown: CancellationToken)
where
    F: Fn() -> bool + Send + 'static,
{
    notify("READY=1");
    let Some(period) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    notify("STOPPING=1");
                    return;
                }
                _ = tick.tick() => {
                    if alive() {
                        notify("WATCHDOG=1");
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn notifications_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("ssw-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: this test is the only one in this binary touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1"));
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        assert!(!notify("READY=1"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
