//! `[redis]`: where the queue lives.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid, valid_name};

/// Redis connection settings.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port/db`; put a password in `password_file`, not here.
    pub url: String,
    /// File holding the Redis password (first line), e.g. a systemd credential.
    pub password_file: Option<PathBuf>,
    /// Prefix of every key (`<prefix>:{pool}:jobs`).
    pub key_prefix: String,
    /// Connections per process.
    pub pool_size: usize,
    /// Longest wait for one Redis command before the request fails with `queue_unavailable`.
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// How the Redis that `ssw up` (and the NixOS module, and compose) runs keeps its data:
    /// `none` (a restart loses the queue; gateways re-enqueue what had not started) or `aof`
    /// (append-only file, `appendfsync everysec`: a crash loses at most the last second).
    pub persistence: Persistence,
    /// `maxmemory` of the Redis that `ssw up` runs (`noeviction`: a full Redis refuses new jobs
    /// with 503 `queue_memory_full`, never drops one). None: twice the pools' `max_queue_bytes`
    /// plus 256 MiB.
    pub max_memory: Option<crate::ByteSize>,
}

/// How the platform's own Redis keeps its data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    /// Nothing on disk.
    #[default]
    None,
    /// Append-only file, fsynced every second.
    Aof,
}

/// `url` with any password replaced by `***`: the part before the *last* `@` of the authority
/// is credentials (a password may itself contain `@`).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}{path}"),
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password despite the advice above: never print it.
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("password_file", &self.password_file)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("op_timeout", &self.op_timeout)
            .field("persistence", &self.persistence)
            .field("max_memory", &self.max_memory)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            password_file: None,
            key_prefix: "ssw".into(),
            pool_size: 16,
            op_timeout: Duration::from_secs(1),
            persistence: Persistence::None,
            max_memory: None,
        }
    }
}

impl RedisConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.url.starts_with("redis://") {
            return Err(invalid(
                "redis.url",
                "must start with redis:// (this build has no TLS: use a TLS tunnel or a private network for remote Redis)",
            ));
        }
        if !valid_name(&self.key_prefix) {
            return Err(invalid(
                "redis.key_prefix",
                "use letters, digits, `-`, `_`, `.`",
            ));
        }
        if self.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be at least 1"));
        }
        if self.op_timeout.is_zero() {
            return Err(invalid("redis.op_timeout", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_even_when_they_hold_an_at_sign() {
        for (url, shown) in [
            ("redis://:hunter2@db:6379", "redis://***@db:6379"),
            ("redis://user:p@ss@w0rd@db:6379/0", "redis://***@db:6379/0"),
            ("redis://db:6379", "redis://db:6379"),
            ("redis://db:6379/0?x=a@b", "redis://db:6379/0?x=a@b"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let r = RedisConfig {
            url: "redis://:p@ss@db:6379".into(),
            ..RedisConfig::default()
        };
        let debug = format!("{r:?}");
        assert!(
            !debug.contains("p@ss") && !debug.contains("ss@db"),
            "{debug}"
        );
    }
}
