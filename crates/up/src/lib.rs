//! Starting the SSW platform locally, as real processes.
//!
//! `ssw up` and the integration tests start the same things the same way: a `redis-server`
//! on a free port in a temporary directory, stub engines, one worker per engine and the gateway,
//! each an `ssw` child process with its own config file. Listeners are bound here and handed to
//! each child as file descriptor 3 (`LISTEN_FDS=1`, systemd style), so nothing picks a port and rebinds it,
//! and a child is reachable the moment it is spawned.
//!
//! # Layout
//! - [`redis`]: [`redis::RedisServer`], a throw-away Redis.
//! - [`process`]: [`process::Child`], spawning with an inherited listener.
//! - [`platform`]: [`platform::Platform`], the whole local stack.

pub mod platform;
pub mod process;
pub mod redis;

/// Why something could not be started.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A program is missing.
    #[error("{0}")]
    Missing(String),
    /// Starting or talking to a process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Something did not become ready in time.
    #[error("{0}")]
    NotReady(String),
    /// The configuration cannot be written.
    #[error("config: {0}")]
    Config(#[from] ssw_config::ConfigError),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpError {
    let what = what.into();
    move |source| UpError::Io { what, source }
}

/// Finds a program on `PATH`.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
