//! Child processes with an inherited listener, killed with their parent.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use crate::{UpError, io};

/// The fd number the first listener is handed over as (the next ones follow).
pub const LISTEN_FD: i32 = 3;

/// A running child.
#[derive(Debug)]
pub struct Child {
    /// Name for logs (`worker heavy-0`).
    pub name: String,
    inner: tokio::process::Child,
}

impl Child {
    /// Spawns `program args`, handing `listeners` over as fds 3, 4, … with their names
    /// (`LISTEN_FDS`, `LISTEN_FDNAMES`, as systemd socket activation does). Output goes to
    /// `log` if given, else is inherited. The child gets SIGTERM if this process dies, and
    /// SIGKILL when the handle is dropped.
    pub fn spawn(
        name: impl Into<String>,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        listeners: Vec<(&str, TcpListener)>,
        log: Option<&Path>,
    ) -> Result<Self, UpError> {
        let log = match log {
            Some(path) => Some(
                std::fs::File::create(path).map_err(io(format!("creating {}", path.display())))?,
            ),
            None => None,
        };
        Self::spawn_inner(name.into(), program, args, env, listeners, log)
    }

    /// Like [`Child::spawn`], output to an open file.
    pub fn spawn_with_log(
        name: impl Into<String>,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        listeners: Vec<(&str, TcpListener)>,
        log: std::fs::File,
    ) -> Result<Self, UpError> {
        Self::spawn_inner(name.into(), program, args, env, listeners, Some(log))
    }

    fn spawn_inner(
        name: String,
        program: &Path,
        args: &[&str],
        env: &[(&str, String)],
        listeners: Vec<(&str, TcpListener)>,
        log: Option<std::fs::File>,
    ) -> Result<Self, UpError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let fds: Vec<i32> = listeners.iter().map(|(_, l)| l.as_raw_fd()).collect();
        if !fds.is_empty() {
            let names: Vec<&str> = listeners.iter().map(|(n, _)| *n).collect();
            cmd.env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"))
                .env_remove("LISTEN_PID");
        }
        if let Some(f) = log {
            let f2 = f.try_clone().map_err(io("log file"))?;
            cmd.stdout(f).stderr(f2);
        }
        // SAFETY: only async-signal-safe calls (prctl, dup2, fcntl) run between fork and exec,
        // on the fds vector allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Move every listener out of the way first (close-on-exec copies above 100),
                // so placing one on 3, 4, … never overwrites another.
                let mut high = [0i32; 8];
                for (i, fd) in fds.iter().enumerate().take(high.len()) {
                    high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in high.iter().enumerate().take(fds.len()) {
                    // dup2 leaves the new fd without close-on-exec.
                    if libc::dup2(*fd, LISTEN_FD + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let inner = cmd
            .spawn()
            .map_err(io(format!("starting {name} ({})", program.display())))?;
        // The child holds its own copies of the listeners now.
        drop(listeners);
        Ok(Self { name, inner })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.inner.id()
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGKILL`, …).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    /// Waits for the child to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.inner.wait().await
    }

    /// Whether it has exited (without waiting).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.inner.try_wait().ok().flatten()
    }

    /// SIGTERM, then SIGKILL after `grace`; returns the exit status.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        match tokio::time::timeout(grace, self.inner.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tracing::warn!(name = %self.name, "did not stop in time; killing it");
                let _ = self.inner.kill().await;
                self.inner.wait().await.ok()
            }
        }
    }
}
