//! `[gateway]`: the HTTP front door and the bounds it keeps against careless and hostile clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ByteSize, Config, ConfigError, invalid, valid_name};

/// Gateway settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address of the public listener (the OpenAI API).
    pub listen: SocketAddr,
    /// Address of the operators' listener, serving `/metrics`, `/readyz` and `/healthz`. When
    /// set, `/metrics` and `/readyz` are served there only (the public listener keeps
    /// `/healthz`).
    pub ops_listen: Option<SocketAddr>,
    /// Unique id of this gateway instance (names its reply stream); default: host name, pid and
    /// a random suffix.
    pub id: Option<String>,
    /// Largest accepted request body; larger gets 413.
    pub max_body: ByteSize,
    /// Request-body bytes being read and parsed at once, over all requests. A request whose
    /// body does not fit waits up to `body_wait` for room, then gets 503 `server_busy`.
    pub body_budget: ByteSize,
    /// Longest wait for room in `body_budget`.
    #[serde(with = "humantime_serde")]
    pub body_wait: Duration,
    /// File of API keys, one per line (`#` comments); when set, every `/v1` request needs
    /// `Authorization: Bearer <key>`.
    pub api_keys_file: Option<PathBuf>,
    /// Serve without API keys on a listener that is not loopback. Off: such a gateway refuses
    /// to start.
    pub allow_unauthenticated: bool,
    /// A request's head (request line and headers) must arrive within this time of its first
    /// byte, or the connection is closed (slowloris).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request's body must arrive within this time of its head, or it gets 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A connection with no request in progress is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A client that reads nothing of its response for this long is dropped, and its job
    /// cancelled.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Open client connections at most; beyond, new ones are answered 503 and closed at once.
    pub max_connections: usize,
    /// Reply bytes held for one streaming request whose client reads more slowly than its
    /// engine writes; beyond, the stream ends with `client_too_slow` and the job is cancelled.
    pub reply_buffer: ByteSize,
    /// A started job that sends nothing (not even a worker keep-alive) for this long fails with
    /// `upstream_error`.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// How long this gateway's reply stream outlives it (renewed every third of it). Workers
    /// take the stream's existence for the gateway being alive: after a gateway dies, its jobs
    /// run on for at most this long before workers drop them as orphans.
    #[serde(with = "humantime_serde")]
    pub reply_ttl: Duration,
    /// How long `/v1/responses` answers are kept in Redis for `previous_response_id` and
    /// `GET /v1/responses/{id}` (0: none is kept).
    #[serde(with = "humantime_serde")]
    pub responses_ttl: Duration,
    /// How long in-flight responses may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `Retry-After` sent with 429 `queue_full`.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Period of the queue sampler (backlog, pending, oldest age, live workers gauges).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// How long a `/readyz` answer is reused (each fresh one runs a Redis script per pool, so a
    /// flood of probes costs Redis at most one round per this period); 0 computes every time.
    #[serde(with = "humantime_serde")]
    pub readiness_ttl: Duration,
    /// Runtime threads; 0 means one per CPU core. One thread saves a hand-off between threads
    /// per reply (the lowest latency and CPU at low load) but drains a large burst more slowly.
    pub threads: usize,
}

/// Largest `gateway.threads`.
pub const MAX_THREADS: usize = 1024;

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ops_listen: None,
            id: None,
            // A 32k-token prompt is about 130 KB of text; 2 MiB leaves room for long tool
            // schemas and JSON escaping.
            max_body: ByteSize::mib(2),
            // Eight largest bodies at once; the gateway holds each about four times while it
            // parses it and hands it to Redis (docs/security.md).
            body_budget: ByteSize::mib(16),
            body_wait: Duration::from_secs(5),
            api_keys_file: None,
            allow_unauthenticated: false,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            reply_buffer: ByteSize::kib(256),
            stall_timeout: Duration::from_secs(30),
            reply_ttl: Duration::from_secs(15),
            responses_ttl: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
            sample_interval: Duration::from_secs(1),
            readiness_ttl: Duration::from_secs(1),
            threads: 0,
        }
    }
}

impl GatewayConfig {
    pub(crate) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        if let Some(id) = &self.id
            && !valid_name(id)
        {
            return Err(invalid("gateway.id", "use letters, digits, `-`, `_`, `.`"));
        }
        if self.max_body.bytes() < 1024 {
            return Err(invalid("gateway.max_body", "must be at least 1KiB"));
        }
        if self.body_budget < self.max_body {
            return Err(invalid(
                "gateway.body_budget",
                format!(
                    "must be at least gateway.max_body ({}), or a largest request could never be read",
                    self.max_body
                ),
            ));
        }
        if self.reply_buffer.bytes() < 4096 {
            return Err(invalid("gateway.reply_buffer", "must be at least 4KiB"));
        }
        if self.max_connections == 0 {
            return Err(invalid("gateway.max_connections", "must be at least 1"));
        }
        for (field, d) in [
            ("gateway.header_timeout", self.header_timeout),
            ("gateway.body_timeout", self.body_timeout),
            ("gateway.idle_timeout", self.idle_timeout),
            ("gateway.write_timeout", self.write_timeout),
            ("gateway.sample_interval", self.sample_interval),
            ("gateway.stall_timeout", self.stall_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        if self.threads > MAX_THREADS {
            return Err(invalid(
                "gateway.threads",
                format!("at most {MAX_THREADS} (0 means one per CPU core)"),
            ));
        }
        if self.stall_timeout <= config.worker.keepalive_interval {
            return Err(invalid(
                "gateway.stall_timeout",
                format!(
                    "must exceed worker.keepalive_interval ({}), or every quiet job would stall",
                    humantime_serde::re::humantime::format_duration(
                        config.worker.keepalive_interval
                    )
                ),
            ));
        }
        // Each renewal may take up to `redis.op_timeout`; a third of the TTL must fit one.
        if self.reply_ttl < 3 * config.redis.op_timeout {
            return Err(invalid(
                "gateway.reply_ttl",
                format!(
                    "must be at least 3 × redis.op_timeout ({}), or a slow renewal lets the reply stream expire",
                    humantime_serde::re::humantime::format_duration(config.redis.op_timeout)
                ),
            ));
        }
        if !config.has_api_keys() && !self.listen.ip().is_loopback() && !self.allow_unauthenticated
        {
            return Err(invalid(
                "gateway.allow_unauthenticated",
                format!(
                    "the gateway listens on {} without API keys: set gateway.api_keys_file, listen on loopback, or set gateway.allow_unauthenticated = true to serve anyone who can reach it",
                    self.listen
                ),
            ));
        }
        if let Some(ops) = self.ops_listen
            && ops == self.listen
            && ops.port() != 0
        {
            return Err(invalid(
                "gateway.ops_listen",
                "must differ from gateway.listen",
            ));
        }
        Ok(())
    }

    /// Whether the public listener is open to anyone who can reach it (no keys, not loopback).
    pub fn is_open(&self, config: &crate::Config) -> bool {
        !config.has_api_keys() && !self.listen.ip().is_loopback()
    }
}
