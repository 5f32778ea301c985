//! `[worker]`: one worker process in front of one engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ByteSize, Config, ConfigError, invalid, valid_name};

/// Worker settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Pool to serve (required for `ssw worker`).
    pub pool: Option<String>,
    /// Worker id, unique within the pool; default `<pool>-<host>-<pid>`.
    pub id: Option<String>,
    /// Base URL of its engine (vLLM or `ssw stub`).
    pub engine_url: String,
    /// Most jobs run at once.
    pub max_inflight: u32,
    /// Stop pulling while the engine reports waiting requests (`vllm:num_requests_waiting` > 0).
    pub respect_engine_waiting: bool,
    /// Period of heartbeats in Redis.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A worker whose last heartbeat is older than this counts as dead: other workers take its
    /// jobs over, and gateways end its streams with an error.
    #[serde(with = "humantime_serde")]
    pub heartbeat_ttl: Duration,
    /// Period of engine `/health` and `/metrics` probes.
    #[serde(with = "humantime_serde")]
    pub engine_poll_interval: Duration,
    /// Period of checks for cancelled running jobs (bounds how late a disconnect aborts).
    #[serde(with = "humantime_serde")]
    pub cancel_poll_interval: Duration,
    /// A job with nothing to send sends a keep-alive this often (must be below the gateway's
    /// `stall_timeout`).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// After SIGTERM, longest wait for in-flight jobs before they are failed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Engine TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub engine_connect_timeout: Duration,
    /// Longest engine request.
    #[serde(with = "humantime_serde")]
    pub engine_request_timeout: Duration,
    /// File holding the key the engine requires (`vllm serve --api-key`), sent as
    /// `Authorization: Bearer`.
    pub engine_api_key_file: Option<PathBuf>,
    /// Largest answer taken from the engine (a whole non-streaming body, or the bytes of one
    /// stream); beyond, the client gets 502 `response_too_large` and the engine request is
    /// dropped.
    pub max_response_bytes: ByteSize,
    /// GPU indices this worker's engine uses (for status and metrics).
    pub gpus: Vec<u32>,
    /// Address of the worker's `/metrics` and `/healthz` (none: no listener, unless one is
    /// handed over through `LISTEN_FDS`).
    pub listen: Option<SocketAddr>,
    /// Which GPUs this worker exports NVML metrics for: `configured` (its `gpus`), `all` (every
    /// GPU of the host), or `off`. With two replicas per GPU let one of them export the GPU, or
    /// one worker per host export `all`, so no GPU is counted twice.
    pub gpu_metrics: GpuMetrics,
}

/// See [`WorkerConfig::gpu_metrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMetrics {
    /// The worker's own `gpus`.
    #[default]
    Configured,
    /// Every GPU of the host.
    All,
    /// None.
    Off,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            pool: None,
            id: None,
            engine_url: "http://127.0.0.1:8000".into(),
            max_inflight: 64,
            respect_engine_waiting: true,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_ttl: Duration::from_secs(5),
            engine_poll_interval: Duration::from_millis(500),
            cancel_poll_interval: Duration::from_millis(250),
            keepalive_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(60),
            engine_connect_timeout: Duration::from_secs(5),
            engine_request_timeout: Duration::from_secs(1800),
            engine_api_key_file: None,
            // A 32k-token answer with top-5 logprobs is a few MiB of JSON.
            max_response_bytes: ByteSize::mib(16),
            gpus: Vec::new(),
            listen: None,
            gpu_metrics: GpuMetrics::Configured,
        }
    }
}

impl WorkerConfig {
    pub(crate) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let w = self;
        let Some(pool) = &w.pool else {
            return Err(invalid("worker.pool", "required for `ssw worker`"));
        };
        if !config.pools.contains_key(pool) {
            let known: Vec<_> = config.pools.keys().cloned().collect();
            return Err(invalid(
                "worker.pool",
                format!("unknown pool `{pool}` (configured: {})", known.join(", ")),
            ));
        }
        if let Some(id) = &w.id
            && !valid_name(id)
        {
            return Err(invalid("worker.id", "use letters, digits, `-`, `_`, `.`"));
        }
        if !w.engine_url.starts_with("http://") {
            return Err(invalid(
                "worker.engine_url",
                "must start with http:// (engines are reached on the host or a private network; this build has no TLS)",
            ));
        }
        if w.max_inflight == 0 {
            return Err(invalid("worker.max_inflight", "must be at least 1"));
        }
        if w.max_response_bytes.bytes() < 1024 {
            return Err(invalid(
                "worker.max_response_bytes",
                "must be at least 1KiB",
            ));
        }
        for (field, d) in [
            ("worker.heartbeat_interval", w.heartbeat_interval),
            ("worker.engine_poll_interval", w.engine_poll_interval),
            ("worker.cancel_poll_interval", w.cancel_poll_interval),
            ("worker.keepalive_interval", w.keepalive_interval),
            ("worker.engine_connect_timeout", w.engine_connect_timeout),
            ("worker.engine_request_timeout", w.engine_request_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be positive"));
            }
        }
        if w.heartbeat_ttl <= w.heartbeat_interval {
            return Err(invalid(
                "worker.heartbeat_ttl",
                "must exceed worker.heartbeat_interval",
            ));
        }
        Ok(())
    }
}
