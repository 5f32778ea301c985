//! Which pool serves a request.
//!
//! The `x-ssw-pool` header wins; otherwise `model` is matched against every pool's name, aliases
//! and served model name. Config validation guarantees each name routes to one pool only.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use ssw_config::pool::SchedulingPolicy;
use ssw_config::{Config, PoolConfig};
use ssw_protocol::tier::Tier;

/// A pool as the gateway needs it at request time.
#[derive(Debug)]
pub struct Pool {
    /// Pool name (metric label, key hash tag).
    pub name: Arc<str>,
    /// Served model name; requests are rewritten to it.
    pub served_model: String,
    /// Other names routed here.
    pub aliases: Vec<String>,
    /// Backlog limit.
    pub max_queue: u64,
    /// Bytes of job bodies on the stream at which new requests get 429.
    pub max_queue_bytes: u64,
    /// Queue timeout.
    pub queue_timeout: std::time::Duration,
    /// Request defaults merged into each request.
    pub defaults: Map<String, Value>,
    /// Context length for `/v1/models`.
    pub max_model_len: Option<u32>,
    /// `max_tokens` ceiling.
    pub max_tokens: Option<u32>,
    /// `n` / `best_of` ceiling.
    pub max_n: u32,
    /// vLLM extension fields accepted.
    pub allowed_fields: Vec<String>,
    /// Per tier (in [`Tier::ALL`] order): its own backlog bound (0: none) and queue timeout.
    tiers: [(u64, std::time::Duration); 3],
    /// Whether the engines schedule by priority (requests then carry vLLM's `priority`).
    pub engine_priority: bool,
}

impl Pool {
    fn new(name: &str, cfg: &PoolConfig) -> Self {
        Self {
            name: Arc::from(name),
            served_model: cfg.served_model.clone(),
            aliases: cfg.aliases.clone(),
            max_queue: cfg.max_queue,
            max_queue_bytes: cfg.max_queue_bytes.bytes(),
            queue_timeout: cfg.queue_timeout,
            defaults: cfg.defaults.clone(),
            max_model_len: cfg.max_model_len,
            max_tokens: cfg.max_tokens_limit(),
            max_n: cfg.max_n,
            allowed_fields: cfg.allowed_fields.clone(),
            tiers: Tier::ALL.map(|t| (cfg.tier_max_queue(t), cfg.tier_queue_timeout(t))),
            engine_priority: cfg.scheduling_policy == SchedulingPolicy::Priority,
        }
    }

    /// The most jobs of `tier` that may wait (0: only the pool's bound).
    pub fn tier_max_queue(&self, tier: Tier) -> u64 {
        self.tiers[tier as usize].0
    }

    /// How long a job of `tier` may wait for a worker.
    pub fn tier_queue_timeout(&self, tier: Tier) -> std::time::Duration {
        self.tiers[tier as usize].1
    }

    /// What a request routed here may ask for.
    pub fn limits(&self) -> ssw_protocol::chat::Limits<'_> {
        ssw_protocol::chat::Limits {
            max_tokens: self.max_tokens,
            max_n: self.max_n,
            allowed_fields: &self.allowed_fields,
        }
    }
}

/// Why no pool was found.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Neither the header nor `model` name a pool.
    Unknown(String),
    /// No header and no `model`.
    Missing,
}

/// The routing table.
#[derive(Debug)]
pub struct Router {
    pools: Vec<Arc<Pool>>,
    by_pool_name: HashMap<String, Arc<Pool>>,
    by_model: HashMap<String, Arc<Pool>>,
}

impl Router {
    /// Builds the table from a validated config.
    pub fn new(config: &Config) -> Self {
        let pools: Vec<Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, cfg)| Arc::new(Pool::new(name, cfg)))
            .collect();
        let mut by_model = HashMap::new();
        let mut by_pool_name = HashMap::new();
        for pool in &pools {
            by_pool_name.insert(pool.name.to_string(), pool.clone());
            for name in std::iter::once(pool.name.as_ref())
                .chain(std::iter::once(pool.served_model.as_str()))
                .chain(pool.aliases.iter().map(String::as_str))
            {
                by_model.insert(name.to_owned(), pool.clone());
            }
        }
        Self {
            pools,
            by_pool_name,
            by_model,
        }
    }

    /// Every pool, in name order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Looks a model name (pool, alias or served model) up.
    pub fn by_model(&self, model: &str) -> Option<&Arc<Pool>> {
        self.by_model.get(model)
    }

    /// Resolves a request: the `x-ssw-pool` header (a pool name) wins, then `model`.
    pub fn resolve(
        &self,
        header: Option<&str>,
        model: Option<&str>,
    ) -> Result<&Arc<Pool>, RouteError> {
        if let Some(h) = header {
            return self
                .by_pool_name
                .get(h.trim())
                .ok_or_else(|| RouteError::Unknown(h.to_owned()));
        }
        match model {
            Some(m) => self
                .by_model(m)
                .ok_or_else(|| RouteError::Unknown(m.to_owned())),
            None => Err(RouteError::Missing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut c = Config {
            pools: ssw_config::default_pools(),
            ..Config::default()
        };
        c.pools.get_mut("heavy").unwrap().aliases = vec!["gpt-4o".into()];
        Router::new(&c)
    }

    #[test]
    fn header_wins_over_model() {
        let r = router();
        let p = r
            .resolve(Some("light"), Some("Qwen/Qwen2.5-14B-Instruct-AWQ"))
            .unwrap();
        assert_eq!(&*p.name, "light");
    }

    #[test]
    fn model_matches_name_alias_and_served_model() {
        let r = router();
        for m in ["heavy", "gpt-4o", "Qwen/Qwen2.5-14B-Instruct-AWQ"] {
            assert_eq!(&*r.resolve(None, Some(m)).unwrap().name, "heavy", "{m}");
        }
        assert_eq!(
            &*r.resolve(None, Some("Qwen/Qwen3-8B-AWQ")).unwrap().name,
            "light"
        );
    }

    #[test]
    fn unknown_and_missing_are_errors() {
        let r = router();
        assert_eq!(
            r.resolve(None, Some("gpt-5")).unwrap_err(),
            RouteError::Unknown("gpt-5".into())
        );
        assert_eq!(
            r.resolve(Some("medium"), None).unwrap_err(),
            RouteError::Unknown("medium".into())
        );
        assert_eq!(r.resolve(None, None).unwrap_err(), RouteError::Missing);
    }
}
