//! `[pools.<name>]`: a served model, what it accepts from clients, and its queue.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ssw_protocol::tier::Tier;

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
    /// Queue settings per service tier (`[pools.<p>.tiers.<priority|default|flex>]`).
    #[serde(default)]
    pub tiers: TiersConfig,
    /// Share of each worker's `max_inflight` kept free for priority work: a flood of lower
    /// tiers never fills the engine in front of a player's dialogue.
    #[serde(default = "default_priority_reserve")]
    pub priority_reserve: f64,
    /// How the engines order the requests inside them: `fcfs` (vLLM's default) or `priority`
    /// (vLLM `--scheduling-policy priority`; workers then send each request's `priority`,
    /// from its tier: 0 priority, 1 default, 2 flex).
    #[serde(default)]
    pub scheduling_policy: SchedulingPolicy,
    /// LoRA adapters served on the pool's base model (`[pools.<p>.adapters.<name>]`): clients
    /// name one as `model` (or `<pool>:<adapter>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adapters: BTreeMap<String, AdapterConfig>,
    /// vLLM's `--max-loras`: adapters an engine holds in its GPU slots at once (its batch
    /// mixes at most this many).
    #[serde(default = "default_max_loras")]
    pub max_loras: u32,
    /// How long a job for an adapter its workers' engines do not hold may wait while they take
    /// jobs for the adapters they hold (adapter-aware pulling's starvation bound).
    #[serde(default = "default_adapter_wait", with = "humantime_serde")]
    pub adapter_wait: Duration,
}

/// A LoRA adapter of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    /// Where the engine loads it from: a local path, or a Hugging Face repository.
    pub source: String,
    /// Its LoRA rank (the engines' `--max-lora-rank` is the largest of the pool's).
    pub rank: u32,
}

/// The ranks vLLM accepts for `--max-lora-rank` (vllm/config/lora.py, `MaxLoRARanks`).
pub const LORA_RANKS: &[u32] = &[1, 8, 16, 32, 64, 128, 256, 320, 512];

fn default_max_loras() -> u32 {
    4
}

fn default_adapter_wait() -> Duration {
    Duration::from_secs(2)
}

/// vLLM's `--scheduling-policy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulingPolicy {
    /// First come, first served (vLLM's default).
    #[default]
    Fcfs,
    /// By the request's `priority` (lower first), then arrival.
    Priority,
}

/// One tier's queue settings; unset fields take the tier's defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Jobs of this tier waiting at which new ones get 429 `queue_full` (the pool's
    /// `max_queue` holds as well). Default: none of its own, except flex: half the pool's, so
    /// flex is refused before any other tier when the pool is overloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u64>,
    /// A job of this tier no worker started within this time gets 503 `queue_timeout`.
    /// Default: the pool's `queue_timeout`, except flex: 10 minutes (it may wait).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub queue_timeout: Option<Duration>,
    /// Lower tiers only: the least share of picks this tier gets while a higher tier has work
    /// waiting, so it never starves. Default: default 0.3, flex 0.1 (with every tier
    /// backlogged, picks go 6:3:1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_share: Option<f64>,
}

/// `[pools.<p>.tiers]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiersConfig {
    /// Gold.
    #[serde(default)]
    pub priority: TierConfig,
    /// Silver.
    #[serde(default)]
    pub default: TierConfig,
    /// Bronze.
    #[serde(default)]
    pub flex: TierConfig,
}

impl TiersConfig {
    /// One tier's settings (shadow copies have none: their bounds are fixed).
    pub fn get(&self, tier: Tier) -> &TierConfig {
        const SHADOW: TierConfig = TierConfig {
            max_queue: None,
            queue_timeout: None,
            min_share: None,
        };
        match tier {
            Tier::Priority => &self.priority,
            Tier::Default => &self.default,
            Tier::Flex => &self.flex,
            Tier::Shadow => &SHADOW,
        }
    }
}

/// How long a route's shadow copy may wait for a worker before it is dropped.
pub const SHADOW_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

fn default_priority_reserve() -> f64 {
    0.1
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
            adapters: BTreeMap::new(),
            max_loras: default_max_loras(),
            adapter_wait: default_adapter_wait(),
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
            tiers: TiersConfig::default(),
            priority_reserve: default_priority_reserve(),
            scheduling_policy: SchedulingPolicy::default(),
        }
    }

    /// The most jobs of `tier` that may wait (0: no bound of the tier's own).
    pub fn tier_max_queue(&self, tier: Tier) -> u64 {
        match (self.tiers.get(tier).max_queue, tier) {
            (Some(n), _) => n,
            (None, Tier::Flex) => self.max_queue.div_ceil(2),
            // Shadow copies wait apart from the pool's backlog, a tenth of it at most.
            (None, Tier::Shadow) => self.max_queue.div_ceil(10),
            (None, _) => 0,
        }
    }

    /// How long a job of `tier` may wait for a worker.
    pub fn tier_queue_timeout(&self, tier: Tier) -> Duration {
        match (self.tiers.get(tier).queue_timeout, tier) {
            (Some(t), _) => t,
            (None, Tier::Flex) => self.queue_timeout.max(Duration::from_secs(600)),
            (None, Tier::Shadow) => SHADOW_QUEUE_TIMEOUT,
            (None, _) => self.queue_timeout,
        }
    }

    /// The least share of picks `tier` gets while a higher tier has work waiting.
    pub fn min_share(&self, tier: Tier) -> f64 {
        match (self.tiers.get(tier).min_share, tier) {
            (_, Tier::Priority | Tier::Shadow) => 0.0,
            (Some(s), _) => s,
            (None, Tier::Default) => 0.3,
            (None, Tier::Flex) => 0.1,
        }
    }

    /// Free slots a worker of this pool with `max_inflight` slots keeps for priority work.
    pub fn reserved_slots(&self, max_inflight: u32) -> u32 {
        ((f64::from(max_inflight) * self.priority_reserve).ceil() as u32).min(max_inflight)
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
        if !(0.0..1.0).contains(&pool.priority_reserve) {
            return Err(invalid(
                at("priority_reserve"),
                "must be a share from 0 up to (not including) 1",
            ));
        }
        for tier in Tier::ALL {
            let t = pool.tiers.get(tier);
            let at = |f: &str| format!("pools.{name}.tiers.{tier}.{f}");
            if t.max_queue == Some(0) {
                return Err(invalid(at("max_queue"), "must be at least 1"));
            }
            if t.queue_timeout.is_some_and(|d| d.is_zero()) {
                return Err(invalid(at("queue_timeout"), "must be positive"));
            }
            match (tier, t.min_share) {
                (Tier::Priority, Some(_)) => {
                    return Err(invalid(
                        at("min_share"),
                        "only lower tiers have a minimum share (priority gets the rest)",
                    ));
                }
                (_, Some(s)) if !(0.0..=1.0).contains(&s) => {
                    return Err(invalid(at("min_share"), "must be a share from 0 to 1"));
                }
                _ => {}
            }
        }
        if pool.max_loras == 0 {
            return Err(invalid(at("max_loras"), "must be at least 1"));
        }
        for (a, cfg) in &pool.adapters {
            let at = |f: &str| format!("pools.{name}.adapters.{a}.{f}");
            if !ssw_protocol::tier::valid_tenant(a) {
                return Err(invalid(
                    format!("pools.{name}.adapters.{a}"),
                    "adapter names use letters, digits, `-`, `_` (at most 64)",
                ));
            }
            if cfg.source.is_empty() {
                return Err(invalid(at("source"), "must not be empty"));
            }
            if !LORA_RANKS.contains(&cfg.rank) {
                return Err(invalid(
                    at("rank"),
                    format!("must be one of vLLM's ranks {LORA_RANKS:?}"),
                ));
            }
        }
        if pool.min_share(Tier::Default) + pool.min_share(Tier::Flex) > 1.0 {
            return Err(invalid(
                format!("pools.{name}.tiers.default.min_share"),
                "the default and flex minimum shares add up to more than 1",
            ));
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
            )
            .chain(
                pool.adapters
                    .keys()
                    .map(|a| (a.as_str(), format!("pools.{name}.adapters.{a}"))),
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
