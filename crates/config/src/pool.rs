//! `[pools.<name>]`: a served model, what it accepts from clients, and its queue.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ByteSize, ConfigError, invalid, valid_name};

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
    /// Bytes of job bodies on the pool's stream (waiting or running) at which new requests get
    /// 429 `queue_full`: with `max_queue` it bounds the pool's Redis memory.
    #[serde(default = "default_max_queue_bytes")]
    pub max_queue_bytes: ByteSize,
    /// Deliveries of a job before an engine that refuses or fails it yields 502.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Further attempts, on another replica, for a request that seems to have crashed its
    /// engine (connection reset, answer broken off before output); then 502 `engine_crashed`.
    #[serde(default = "default_max_crash_retries")]
    pub max_crash_retries: u32,
    /// Request fields merged into every request that does not set them (objects merge by key).
    #[serde(default)]
    pub defaults: Map<String, Value>,
    /// The engines' context length, shown on `/v1/models`, and the default `max_tokens`
    /// ceiling.
    #[serde(default)]
    pub max_model_len: Option<u32>,
    /// Largest `max_tokens` / `max_completion_tokens` a request may ask for; default
    /// `max_model_len` (none when neither is set).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Largest `n` (and vLLM's `best_of`): each choice is a sequence on the GPU.
    #[serde(default = "default_max_n")]
    pub max_n: u32,
    /// vLLM extension fields clients may send (beyond the OpenAI API's own fields); default
    /// [`ssw_protocol::fields::DEFAULT_ALLOWED`]. Fields the platform owns (`priority`,
    /// `request_id`, …) are refused unless listed here.
    #[serde(default = "default_allowed_fields")]
    pub allowed_fields: Vec<String>,
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
fn default_max_queue_bytes() -> ByteSize {
    ByteSize::mib(256)
}
fn default_max_crash_retries() -> u32 {
    1
}
fn default_max_n() -> u32 {
    1
}

fn default_allowed_fields() -> Vec<String> {
    ssw_protocol::fields::DEFAULT_ALLOWED
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

impl PoolConfig {
    /// A pool serving `served_model` with every other field at its default.
    pub fn new(served_model: impl Into<String>) -> Self {
        Self {
            served_model: served_model.into(),
            aliases: Vec::new(),
            max_queue: default_max_queue(),
            queue_timeout: default_queue_timeout(),
            max_queue_bytes: default_max_queue_bytes(),
            max_attempts: default_max_attempts(),
            max_crash_retries: default_max_crash_retries(),
            defaults: Map::new(),
            max_model_len: None,
            max_tokens: None,
            max_n: default_max_n(),
            allowed_fields: default_allowed_fields(),
        }
    }

    /// The `max_tokens` ceiling in force.
    pub fn max_tokens_limit(&self) -> Option<u32> {
        self.max_tokens.or(self.max_model_len)
    }
}

/// The A40 layout's pools: `heavy` = Qwen2.5-14B-Instruct-AWQ, `light` = Qwen3-8B-AWQ with
/// thinking off by default (Qwen3 thinks unless told not to; light is the fast tier); both run
/// with `--max-model-len 32768`.
pub fn default_pools() -> BTreeMap<String, PoolConfig> {
    let mut heavy = PoolConfig::new("Qwen/Qwen2.5-14B-Instruct-AWQ");
    heavy.max_model_len = Some(32_768);
    let mut light = PoolConfig::new("Qwen/Qwen3-8B-AWQ");
    light.max_model_len = Some(32_768);
    light.defaults.insert(
        "chat_template_kwargs".into(),
        serde_json::json!({ "enable_thinking": false }),
    );
    BTreeMap::from([("heavy".to_owned(), heavy), ("light".to_owned(), light)])
}

/// Checks every pool, and that each model name routes to one pool only.
pub(crate) fn validate(pools: &BTreeMap<String, PoolConfig>) -> Result<(), ConfigError> {
    if pools.is_empty() {
        return Err(invalid("pools", "at least one pool is needed"));
    }
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    for (name, pool) in pools {
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
        if pool.max_n == 0 {
            return Err(invalid(at("max_n"), "must be at least 1"));
        }
        if pool.max_tokens == Some(0) {
            return Err(invalid(at("max_tokens"), "must be at least 1"));
        }
        for (i, f) in pool.allowed_fields.iter().enumerate() {
            use ssw_protocol::fields::{Owner, owner};
            if !matches!(owner(f), Owner::Vllm | Owner::Platform) {
                return Err(invalid(
                    at(&format!("allowed_fields[{i}]")),
                    format!(
                        "`{f}` is not a vLLM extension field (OpenAI's own fields are always allowed)"
                    ),
                ));
            }
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
