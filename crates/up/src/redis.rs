//! A throw-away `redis-server` on loopback.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::Child;
use crate::{UpError, io, which};

/// What to tell someone who has no redis-server.
pub const INSTALL_HINT: &str = "redis-server not found on PATH: install it (Debian/Ubuntu: `sudo apt-get install redis-server`; Nix: `nix run` brings it), or point at a running Redis with --redis-url";

/// How the server keeps its data and how much memory it may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisOptions {
    /// `maxmemory` in bytes with `noeviction` (0: no limit).
    pub max_memory: u64,
    /// Append-only file with `appendfsync everysec` (else nothing on disk).
    pub aof: bool,
}

/// A `redis-server` child in its own directory; killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    binary: PathBuf,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts one on a free loopback port, data in `dir`, no persistence, no memory limit.
    pub async fn start(dir: &Path) -> Result<Self, UpError> {
        Self::start_with(dir, RedisOptions::default()).await
    }

    /// Starts one on a free loopback port, data in `dir`.
    pub async fn start_with(dir: &Path, options: RedisOptions) -> Result<Self, UpError> {
        let binary = which("redis-server").ok_or_else(|| UpError::Missing(INSTALL_HINT.into()))?;
        let mut last = None;
        // redis-server binds its own port, so a free port is looked up and may be taken by
        // someone else before redis binds it: retry with another.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io("finding a free port"))?
                .port();
            let mut server = Self {
                child: None,
                port,
                dir: dir.to_owned(),
                binary: binary.clone(),
                options,
            };
            match server.restart().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| UpError::NotReady("redis-server did not start".into())))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`appendonlydir` lives here with AOF).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops it (SIGKILL: like a crash; without AOF nothing is kept).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal(libc::SIGKILL);
            let _ = c.wait().await;
        }
    }

    /// (Re)starts it on the same port and waits until it answers PING (with AOF, after it
    /// has loaded its data).
    pub async fn restart(&mut self) -> Result<(), UpError> {
        self.kill().await;
        let port = self.port.to_string();
        let dir = self.dir.to_string_lossy().into_owned();
        let max_memory = self.options.max_memory.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            &dir,
            "--loglevel",
            "warning",
            "--maxclients",
            "10000",
            // A full Redis refuses writes that need memory; it never evicts a job.
            "--maxmemory-policy",
            "noeviction",
            "--maxmemory",
            &max_memory,
        ];
        if self.options.aof {
            args.extend(["--appendonly", "yes", "--appendfsync", "everysec"]);
        } else {
            args.extend(["--appendonly", "no"]);
        }
        // Appended: a crash test restarts it many times.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .map_err(io("opening redis.log"))?;
        let child =
            Child::spawn_with_log("redis-server", &self.binary, &args, &[], Vec::new(), log)?;
        self.child = Some(child);
        for _ in 0..200 {
            if ping(self.port).await {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(Child::try_wait) {
                return Err(UpError::NotReady(format!(
                    "redis-server on port {port} exited: {status}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(UpError::NotReady(format!(
            "redis-server on port {port} did not answer PING"
        )))
    }

    /// The exit status, if the server has exited.
    pub fn exited(&mut self) -> Option<String> {
        self.child
            .as_mut()
            .and_then(Child::try_wait)
            .map(|s| s.to_string())
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::pid)
    }
}

async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"+PONG\r\n"
    )
}
