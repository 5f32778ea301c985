//! The configuration of every `ssw` role, in one schema.
//!
//! Sources, later ones winning: built-in defaults ([`Config::default`]), a TOML file, `SSW_`
//! environment variables (`SSW_REDIS__URL`, `__` separates levels), then command-line overrides.
//! After extraction [`Config::validate`] checks cross-field rules for the role being started; every
//! error names the field (`pools.heavy.max_queue`). docs/configuration.md documents each field.
//!
//! # Layout
//! - this file: the schema, loading, validation.
//! - [`size`]: [`ByteSize`], human-readable sizes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Json, Serialized, Toml};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod size;

pub use size::ByteSize;

/// A configuration that cannot be used, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type; figment names the key.
    #[error("{0}")]
    Load(Box<figment::Error>),
    /// A value is well-typed but not acceptable.
    #[error("{field}: {message}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        Self::Load(Box::new(e))
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// Which process the configuration is for; decides which sections must be complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `ssw gateway`.
    Gateway,
    /// `ssw worker`.
    Worker,
    /// `ssw stub`.
    Stub,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the queue lives.
    pub redis: RedisConfig,
    /// The HTTP front door.
    pub gateway: GatewayConfig,
    /// Pools by name. Empty means the two default pools, `heavy` and `light`
    /// ([`default_pools`]); naming any pool replaces both.
    pub pools: BTreeMap<String, PoolConfig>,
    /// One worker process (used by `ssw worker`).
    pub worker: WorkerConfig,
    /// The stub engine (used by `ssw stub`).
    pub stub: StubConfig,
}

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
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password despite the advice above: never print it.
        let url = match self.url.split_once('@') {
            Some((_, host)) => format!("redis://***@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("RedisConfig")
            .field("url", &url)
            .field("password_file", &self.password_file)
            .field("key_prefix", &self.key_prefix)
            .field("pool_size", &self.pool_size)
            .field("op_timeout", &self.op_timeout)
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
        }
    }
}

/// Gateway settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Unique id of this gateway instance (names its reply stream); default: host name, pid and
    /// a random suffix.
    pub id: Option<String>,
    /// Largest accepted request body; larger gets 413.
    pub max_body: ByteSize,
    /// File of API keys, one per line (`#` comments); when set, every `/v1` request needs
    /// `Authorization: Bearer <key>`.
    pub api_keys_file: Option<PathBuf>,
    /// A started job that sends nothing (not even a worker keep-alive) for this long fails with
    /// `upstream_error`.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// How long in-flight responses may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `Retry-After` sent with 429 `queue_full`.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Period of the queue sampler (backlog, pending, oldest age, live workers gauges).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
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
            id: None,
            max_body: ByteSize::mib(8),
            api_keys_file: None,
            stall_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            retry_after: Duration::from_secs(1),
            sample_interval: Duration::from_secs(1),
            threads: 0,
        }
    }
}

/// One pool: a served model and the replicas serving it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The model name the engines serve (`--served-model-name`); requests are rewritten to it.
    pub served_model: String,
    /// Other `model` values routed to this pool.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Backlog (jobs waiting, not yet claimed) at which new requests get 429 `queue_full`.
    #[serde(default = "default_max_queue")]
    pub max_queue: u64,
    /// A job no worker started within this time is answered 503 `queue_timeout`.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Deliveries of a job before an engine that refuses or fails it yields 502.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Request fields merged into every request that does not set them (objects merge by key).
    #[serde(default)]
    pub defaults: Map<String, Value>,
    /// The engines' context length, shown on `/v1/models`.
    #[serde(default)]
    pub max_model_len: Option<u32>,
}

fn default_max_queue() -> u64 {
    10_000
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_max_attempts() -> u32 {
    3
}

impl PoolConfig {
    /// A pool serving `served_model` with every other field at its default.
    pub fn new(served_model: impl Into<String>) -> Self {
        Self {
            served_model: served_model.into(),
            aliases: Vec::new(),
            max_queue: default_max_queue(),
            queue_timeout: default_queue_timeout(),
            max_attempts: default_max_attempts(),
            defaults: Map::new(),
            max_model_len: None,
        }
    }
}

/// The A40 layout's pools: `heavy` = Qwen2.5-14B-Instruct-AWQ, `light` = Qwen3-8B-AWQ with
/// thinking off by default (Qwen3 thinks unless told not to; light is the fast tier).
pub fn default_pools() -> BTreeMap<String, PoolConfig> {
    let mut light = PoolConfig::new("Qwen/Qwen3-8B-AWQ");
    light.defaults.insert(
        "chat_template_kwargs".into(),
        serde_json::json!({ "enable_thinking": false }),
    );
    BTreeMap::from([
        (
            "heavy".to_owned(),
            PoolConfig::new("Qwen/Qwen2.5-14B-Instruct-AWQ"),
        ),
        ("light".to_owned(), light),
    ])
}

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
    /// A worker whose last heartbeat is older than this counts as dead.
    #[serde(with = "humantime_serde")]
    pub heartbeat_ttl: Duration,
    /// Period of engine `/health` and `/metrics` probes.
    #[serde(with = "humantime_serde")]
    pub engine_poll_interval: Duration,
    /// A claimed job whose worker has not touched it for this long is taken over by another.
    #[serde(with = "humantime_serde")]
    pub reclaim_idle: Duration,
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
            reclaim_idle: Duration::from_secs(30),
            cancel_poll_interval: Duration::from_millis(250),
            keepalive_interval: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(60),
            engine_connect_timeout: Duration::from_secs(5),
            engine_request_timeout: Duration::from_secs(1800),
            gpus: Vec::new(),
            listen: None,
            gpu_metrics: GpuMetrics::Configured,
        }
    }
}

/// Stub engine settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StubConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The model name it serves and answers with.
    pub served_model: String,
    /// Context length; prompt words + `max_tokens` beyond it get a vLLM-style 400.
    pub max_model_len: u32,
    /// Delay before the first token.
    #[serde(with = "humantime_serde")]
    pub ttft: Duration,
    /// Delay between output tokens.
    #[serde(with = "humantime_serde")]
    pub tpot: Duration,
    /// Tokens per answer when the request sets no smaller `max_tokens`.
    pub output_tokens: u32,
    /// Requests run at once; the rest wait (and count in `vllm:num_requests_waiting`).
    pub max_num_seqs: u32,
    /// Share of requests answered 500 before any output (0–1).
    pub error_rate: f64,
    /// Behave like a busy GPU: a continuous-batching timing model (`ssw_stub::timing`) instead
    /// of fixed `ttft`/`tpot`. Uses `step_base`, `step_per_seq`, `prefill_per_token`,
    /// `kv_tokens` and `max_num_seqs`.
    pub batching: bool,
    /// A named set of timing-model figures (implies `batching`): one of [`STUB_PRESETS`].
    pub preset: Option<String>,
    /// Timing model: fixed cost of a decode step.
    #[serde(with = "humantime_serde")]
    pub step_base: Duration,
    /// Timing model: extra step cost per running sequence.
    #[serde(with = "humantime_serde")]
    pub step_per_seq: Duration,
    /// Timing model: cost per prompt token prefilled.
    #[serde(with = "humantime_serde")]
    pub prefill_per_token: Duration,
    /// Timing model: KV-cache budget in tokens.
    pub kv_tokens: u32,
}

/// Timing-model presets of `ssw stub` (the A40 replicas of the production layout).
pub const STUB_PRESETS: &[&str] = &["a40-qwen2.5-14b-awq", "a40-qwen3-8b-awq"];

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            served_model: "stub-model".into(),
            max_model_len: 32_768,
            ttft: Duration::ZERO,
            tpot: Duration::ZERO,
            output_tokens: 16,
            max_num_seqs: 256,
            error_rate: 0.0,
            batching: false,
            preset: None,
            step_base: Duration::from_millis(20),
            step_per_seq: Duration::from_micros(500),
            prefill_per_token: Duration::from_micros(200),
            kv_tokens: 60_000,
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl Config {
    /// The figment of defaults, an optional file and the `SSW_` environment; callers merge CLI
    /// overrides on top and call [`Config::from_figment`].
    pub fn figment(file: Option<&Path>) -> Figment {
        let f = Self::file_figment(file);
        f.merge(Env::prefixed("SSW_").split("__"))
    }

    /// Defaults and an optional file only (what `check-config` validates). A `.json` file is
    /// read as JSON (what the Nix module and compose generator write), anything else as TOML.
    pub fn file_figment(file: Option<&Path>) -> Figment {
        let f = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if path.extension().is_some_and(|e| e == "json") => {
                f.merge(Json::file_exact(path))
            }
            Some(path) => f.merge(Toml::file_exact(path)),
            None => f,
        }
    }

    /// Extracts a configuration, filling in the default pools when none are named.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract()?;
        if config.pools.is_empty() {
            config.pools = default_pools();
        }
        Ok(config)
    }

    /// Loads from a file (if any) and the environment, then validates for `role`.
    pub fn load(file: Option<&Path>, role: Role) -> Result<Self, ConfigError> {
        let config = Self::from_figment(&Self::figment(file))?;
        config.validate(role)?;
        Ok(config)
    }

    /// Checks the rules a role relies on.
    pub fn validate(&self, role: Role) -> Result<(), ConfigError> {
        self.validate_common()?;
        match role {
            Role::Gateway => self.validate_gateway(),
            Role::Worker => self.validate_worker(),
            Role::Stub => self.validate_stub(),
        }
    }

    fn validate_common(&self) -> Result<(), ConfigError> {
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return Err(invalid(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        if !valid_name(&self.redis.key_prefix) {
            return Err(invalid(
                "redis.key_prefix",
                "use letters, digits, `-`, `_`, `.`",
            ));
        }
        if self.redis.pool_size == 0 {
            return Err(invalid("redis.pool_size", "must be at least 1"));
        }
        if self.redis.op_timeout.is_zero() {
            return Err(invalid("redis.op_timeout", "must be positive"));
        }
        if self.pools.is_empty() {
            return Err(invalid("pools", "at least one pool is needed"));
        }
        let mut names: BTreeMap<&str, String> = BTreeMap::new();
        for (name, pool) in &self.pools {
            let at = |f: &str| format!("pools.{name}.{f}");
            if !valid_name(name) {
                return Err(invalid(
                    format!("pools.{name}"),
                    "pool names use letters, digits, `-`, `_`, `.`",
                ));
            }
            if pool.served_model.is_empty() {
                return Err(invalid(at("served_model"), "must not be empty"));
            }
            if pool.max_queue == 0 {
                return Err(invalid(at("max_queue"), "must be at least 1"));
            }
            if pool.queue_timeout.is_zero() {
                return Err(invalid(at("queue_timeout"), "must be positive"));
            }
            if pool.max_attempts == 0 {
                return Err(invalid(at("max_attempts"), "must be at least 1"));
            }
            let routable = std::iter::once((name.as_str(), format!("pools.{name}")))
                .chain(std::iter::once((
                    pool.served_model.as_str(),
                    at("served_model"),
                )))
                .chain(
                    pool.aliases
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (a.as_str(), at(&format!("aliases[{i}]")))),
                );
            for (routed, field) in routable {
                if let Some(previous) = names.get(routed)
                    && !previous.starts_with(&format!("pools.{name}"))
                {
                    return Err(invalid(
                        field,
                        format!("`{routed}` already routes to {previous}"),
                    ));
                }
                names.insert(routed, field);
            }
        }
        Ok(())
    }

    fn validate_gateway(&self) -> Result<(), ConfigError> {
        let g = &self.gateway;
        if let Some(id) = &g.id
            && !valid_name(id)
        {
            return Err(invalid("gateway.id", "use letters, digits, `-`, `_`, `.`"));
        }
        if g.max_body.bytes() < 1024 {
            return Err(invalid("gateway.max_body", "must be at least 1KiB"));
        }
        if g.sample_interval.is_zero() {
            return Err(invalid("gateway.sample_interval", "must be positive"));
        }
        if g.threads > MAX_THREADS {
            return Err(invalid(
                "gateway.threads",
                format!("at most {MAX_THREADS} (0 means one per CPU core)"),
            ));
        }
        if g.stall_timeout.is_zero() {
            return Err(invalid("gateway.stall_timeout", "must be positive"));
        }
        if g.stall_timeout <= self.worker.keepalive_interval {
            return Err(invalid(
                "gateway.stall_timeout",
                format!(
                    "must exceed worker.keepalive_interval ({}), or every quiet job would stall",
                    humantime_serde::re::humantime::format_duration(self.worker.keepalive_interval)
                ),
            ));
        }
        Ok(())
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        let Some(pool) = &w.pool else {
            return Err(invalid("worker.pool", "required for `ssw worker`"));
        };
        if !self.pools.contains_key(pool) {
            let known: Vec<_> = self.pools.keys().cloned().collect();
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
        if !w.engine_url.starts_with("http://") && !w.engine_url.starts_with("https://") {
            return Err(invalid(
                "worker.engine_url",
                "must start with http:// or https://",
            ));
        }
        if w.max_inflight == 0 {
            return Err(invalid("worker.max_inflight", "must be at least 1"));
        }
        for (field, d) in [
            ("worker.heartbeat_interval", w.heartbeat_interval),
            ("worker.engine_poll_interval", w.engine_poll_interval),
            ("worker.reclaim_idle", w.reclaim_idle),
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
        if w.reclaim_idle <= w.cancel_poll_interval * 2 {
            return Err(invalid(
                "worker.reclaim_idle",
                "must exceed twice worker.cancel_poll_interval (running jobs are refreshed then)",
            ));
        }
        Ok(())
    }

    fn validate_stub(&self) -> Result<(), ConfigError> {
        let s = &self.stub;
        if s.served_model.is_empty() {
            return Err(invalid("stub.served_model", "must not be empty"));
        }
        if s.max_num_seqs == 0 {
            return Err(invalid("stub.max_num_seqs", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&s.error_rate) {
            return Err(invalid("stub.error_rate", "must be between 0 and 1"));
        }
        if let Some(p) = &s.preset
            && !STUB_PRESETS.contains(&p.as_str())
        {
            return Err(invalid(
                "stub.preset",
                format!(
                    "unknown preset `{p}` (presets: {})",
                    STUB_PRESETS.join(", ")
                ),
            ));
        }
        if s.kv_tokens == 0 {
            return Err(invalid("stub.kv_tokens", "must be at least 1"));
        }
        Ok(())
    }

    /// The configuration as TOML (a file `ssw --config` reads back to the same value).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| invalid("(whole config)", e.to_string()))
    }

    /// The pool a worker serves (after [`Config::validate`] for [`Role::Worker`]).
    pub fn worker_pool(&self) -> Option<(&str, &PoolConfig)> {
        let name = self.worker.pool.as_deref()?;
        self.pools.get_key_value(name).map(|(k, v)| (k.as_str(), v))
    }
}

/// Reads a secret file's first line, trimmed.
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    fn load(toml: &str, role: Role) -> Result<Config, String> {
        let mut out = Err(String::new());
        Jail::expect_with(|jail| {
            jail.create_file("ssw.toml", toml)?;
            out = Config::load(Some(Path::new("ssw.toml")), role).map_err(|e| e.to_string());
            Ok(())
        });
        out
    }

    #[test]
    fn defaults_give_the_a40_pools() {
        let c = load("", Role::Gateway).unwrap();
        assert_eq!(
            c.pools["heavy"].served_model,
            "Qwen/Qwen2.5-14B-Instruct-AWQ"
        );
        assert_eq!(c.pools["light"].served_model, "Qwen/Qwen3-8B-AWQ");
        assert_eq!(
            c.pools["light"].defaults["chat_template_kwargs"]["enable_thinking"],
            false
        );
        assert_eq!(c.pools["heavy"].max_queue, 10_000);
        assert_eq!(c.pools["heavy"].queue_timeout, Duration::from_secs(120));
        assert_eq!(c.gateway.max_body, ByteSize::mib(8));
        assert_eq!(c.worker.max_inflight, 64);
    }

    #[test]
    fn file_values_are_human_readable_and_pools_replace_defaults() {
        let c = load(
            r#"
            [gateway]
            max_body = "1MiB"
            stall_timeout = "45s"
            [pools.fast]
            served_model = "m"
            aliases = ["quick"]
            queue_timeout = "2m 30s"
            defaults = { temperature = 0.2, chat_template_kwargs = { enable_thinking = false } }
            "#,
            Role::Gateway,
        )
        .unwrap();
        assert_eq!(c.gateway.max_body, ByteSize::mib(1));
        assert_eq!(c.gateway.stall_timeout, Duration::from_secs(45));
        assert_eq!(c.pools.len(), 1);
        assert_eq!(c.pools["fast"].queue_timeout, Duration::from_secs(150));
        assert_eq!(c.pools["fast"].defaults["temperature"], 0.2);
    }

    #[test]
    fn environment_overrides_the_file() {
        Jail::expect_with(|jail| {
            jail.create_file("ssw.toml", "[redis]\nurl = \"redis://file:1\"\n")?;
            jail.set_env("SSW_REDIS__URL", "redis://env:2");
            jail.set_env("SSW_WORKER__MAX_INFLIGHT", "7");
            let c = Config::load(Some(Path::new("ssw.toml")), Role::Gateway)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.redis.url, "redis://env:2");
            assert_eq!(c.worker.max_inflight, 7);
            Ok(())
        });
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (
                "[gateway]\nmax_body = \"8 parsecs\"",
                Role::Gateway,
                "max_body",
            ),
            ("[gateway]\nlisten = \"nowhere\"", Role::Gateway, "listen"),
            (
                "[gateway]\nstall_timeout = \"soon\"",
                Role::Gateway,
                "stall_timeout",
            ),
            ("[gateway]\nbogus = 1", Role::Gateway, "bogus"),
            ("[redis]\nurl = \"http://x\"", Role::Gateway, "redis.url"),
            (
                "[pools.a]\nserved_model = \"\"",
                Role::Gateway,
                "pools.a.served_model",
            ),
            (
                "[pools.a]\nserved_model = \"m\"\nmax_queue = 0",
                Role::Gateway,
                "pools.a.max_queue",
            ),
            ("[pools.a]\naliases = []", Role::Gateway, "served_model"),
            (
                "[pools.a]\nserved_model = \"m\"\n[pools.b]\nserved_model = \"m\"",
                Role::Gateway,
                "pools.b.served_model",
            ),
            (
                "[pools.a]\nserved_model = \"m\"\naliases = [\"b\"]\n[pools.b]\nserved_model = \"n\"",
                Role::Gateway,
                "pools.b",
            ),
            (
                "[pools.\"a b\"]\nserved_model = \"m\"",
                Role::Gateway,
                "pools.a b",
            ),
            (
                "[gateway]\nstall_timeout = \"1s\"",
                Role::Gateway,
                "gateway.stall_timeout",
            ),
            (
                "[gateway]\nthreads = 5000",
                Role::Gateway,
                "gateway.threads",
            ),
            ("", Role::Worker, "worker.pool"),
            ("[worker]\npool = \"nope\"", Role::Worker, "worker.pool"),
            (
                "[worker]\npool = \"heavy\"\nmax_inflight = 0",
                Role::Worker,
                "worker.max_inflight",
            ),
            (
                "[worker]\npool = \"heavy\"\nengine_url = \"x\"",
                Role::Worker,
                "worker.engine_url",
            ),
            (
                "[worker]\npool = \"heavy\"\nheartbeat_ttl = \"1s\"",
                Role::Worker,
                "worker.heartbeat_ttl",
            ),
            ("[stub]\nerror_rate = 2.0", Role::Stub, "stub.error_rate"),
            ("[stub]\nmax_num_seqs = 0", Role::Stub, "stub.max_num_seqs"),
            ("[stub]\npreset = \"h100\"", Role::Stub, "stub.preset"),
        ];
        for (toml, role, field) in cases {
            let err = load(toml, role).expect_err(toml);
            assert!(
                err.contains(field),
                "{toml:?}: error {err:?} does not name {field}"
            );
        }
    }

    #[test]
    fn json_files_are_read_as_json() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "ssw.json",
                r#"{"worker": {"pool": "heavy", "max_inflight": 8}, "gateway": {"max_body": "1MiB"}}"#,
            )?;
            let c = Config::load(Some(Path::new("ssw.json")), Role::Worker)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.worker.max_inflight, 8);
            assert_eq!(c.gateway.max_body, ByteSize::mib(1));
            Ok(())
        });
    }

    #[test]
    fn toml_round_trips() {
        let mut c = Config {
            pools: default_pools(),
            ..Config::default()
        };
        c.worker.pool = Some("light".into());
        c.stub.ttft = Duration::from_millis(25);
        let text = c.to_toml().unwrap();
        let back = load(&text, Role::Worker).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn debug_hides_a_password_in_the_url() {
        let r = RedisConfig {
            url: "redis://:hunter2@db:6379".into(),
            ..RedisConfig::default()
        };
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db:6379"));
    }
}
