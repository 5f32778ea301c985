//! Which pool serves a request.
//!
//! The `x-ssw-pool` header wins; otherwise `model` is matched against every pool's name, aliases
//! and served model name, and every route's name. Config validation guarantees each name
//! routes to one pool or route only. A route picks one of its variants (a pool) by the
//! request's sticky key: see [`Route::bucket`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use serde_json::{Map, Value};
use ssw_config::pool::SchedulingPolicy;
use ssw_config::route::{BUCKETS, StickyKey};
use ssw_config::{Config, PoolConfig, RouteConfig};
use ssw_protocol::chat::ChatRequest;
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
    /// Its LoRA adapters, by name.
    pub adapters: Vec<Arc<str>>,
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
    /// Per lane class (in [`Tier::LANES`] order): its own backlog bound (0: none) and queue
    /// timeout.
    tiers: [(u64, std::time::Duration); 4],
    /// Whether the engines schedule by priority (requests then carry vLLM's `priority`).
    pub engine_priority: bool,
}

impl Pool {
    fn new(name: &str, cfg: &PoolConfig) -> Self {
        Self {
            name: Arc::from(name),
            served_model: cfg.served_model.clone(),
            aliases: cfg.aliases.clone(),
            adapters: cfg.adapters.keys().map(|a| Arc::from(a.as_str())).collect(),
            max_queue: cfg.max_queue,
            max_queue_bytes: cfg.max_queue_bytes.bytes(),
            queue_timeout: cfg.queue_timeout,
            defaults: cfg.defaults.clone(),
            max_model_len: cfg.max_model_len,
            max_tokens: cfg.max_tokens_limit(),
            max_n: cfg.max_n,
            allowed_fields: cfg.allowed_fields.clone(),
            tiers: Tier::LANES.map(|t| (cfg.tier_max_queue(t), cfg.tier_queue_timeout(t))),
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

/// A route: a public model name spread over weighted variants.
#[derive(Debug)]
pub struct Route {
    /// Its name (what clients send as `model`).
    pub name: Arc<str>,
    /// Its variants, the control first, each owning a range of buckets.
    pub variants: Vec<Variant>,
    sticky: Vec<StickyKey>,
    salt: String,
    /// Where a share of its requests is copied, and the share.
    pub shadow: Option<(Arc<Pool>, f64)>,
    /// When to fall back to the control.
    pub guard: Option<ssw_config::route::GuardConfig>,
}

/// One variant of a route.
#[derive(Debug)]
pub struct Variant {
    /// Its name (`x-ssw-variant`, the `variant` label).
    pub name: Arc<str>,
    /// The pool serving it.
    pub pool: Arc<Pool>,
    /// The pool's LoRA adapter serving it, if any.
    pub adapter: Option<Arc<str>>,
    /// Its weight as configured.
    pub weight: u32,
    /// Its buckets, `[start, end)`.
    range: (u32, u32),
}

impl Route {
    fn new(name: &str, cfg: &RouteConfig, pools: &HashMap<String, Arc<Pool>>) -> Self {
        let ranges = cfg.ranges();
        Self {
            name: Arc::from(name),
            variants: cfg
                .variants
                .iter()
                .zip(ranges)
                .map(|(v, range)| Variant {
                    name: Arc::from(v.name()),
                    pool: pools[&v.pool].clone(),
                    adapter: v.adapter.as_deref().map(Arc::from),
                    weight: v.weight,
                    range,
                })
                .collect(),
            sticky: cfg.sticky.clone(),
            salt: cfg.salt(name).to_owned(),
            shadow: cfg
                .shadow
                .as_ref()
                .map(|s| (pools[&s.pool].clone(), s.share)),
            guard: cfg.guard.clone(),
        }
    }

    /// The request's sticky key: the first of the route's `sticky` sources it carries (a
    /// non-empty string).
    pub fn sticky_key(&self, headers: &HeaderMap, req: &ChatRequest<'_>) -> Option<String> {
        self.sticky.iter().find_map(|k| {
            let v = match k {
                StickyKey::SafetyIdentifier => req.string_field("safety_identifier"),
                StickyKey::User => req.string_field("user"),
                StickyKey::PromptCacheKey => req.string_field("prompt_cache_key"),
                StickyKey::Header(h) => headers
                    .get(h.as_str())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().to_owned()),
            };
            v.filter(|v| !v.is_empty())
        })
    }

    /// The bucket of a sticky key: a fixed 64-bit hash (FNV-1a, then the SplitMix64 finaliser
    /// for even low bits) of the salt and the key, modulo [`BUCKETS`]. Fixed, not the standard
    /// library's hasher, whose algorithm may change between Rust releases: a user's variant
    /// must survive upgrades and agree across gateways. Without a key, a random bucket.
    pub fn bucket(&self, key: Option<&str>) -> u32 {
        match key {
            Some(k) => {
                (stable_hash(self.salt.as_bytes(), k.as_bytes()) % u64::from(BUCKETS)) as u32
            }
            None => fastrand::u32(..BUCKETS),
        }
    }

    /// The variant owning `bucket`.
    pub fn variant(&self, bucket: u32) -> &Variant {
        self.variants
            .iter()
            .find(|v| v.range.0 <= bucket && bucket < v.range.1)
            .unwrap_or(&self.variants[0])
    }

    /// Whether this request is copied to the shadow pool (a random draw at the share).
    pub fn shadowed(&self) -> Option<&Arc<Pool>> {
        self.shadow
            .as_ref()
            .filter(|(_, share)| fastrand::f64() < *share)
            .map(|(p, _)| p)
    }
}

fn stable_hash(salt: &[u8], key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in salt.iter().chain(&[0u8]).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // SplitMix64's finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// What a name resolves to.
#[derive(Clone, Debug)]
pub enum Target {
    /// A pool, directly.
    Pool(Arc<Pool>),
    /// A LoRA adapter of a pool (its name, or `<pool>:<adapter>`).
    Adapter(Arc<Pool>, Arc<str>),
    /// A route over pools.
    Route(Arc<Route>),
}

/// One version of the routing settings, as a request sees it: taken once at admission, so
/// each request is routed by exactly one version.
#[derive(Debug)]
pub struct Version {
    /// 0: the configuration file's; else the version published in Redis.
    pub number: u64,
    /// Pools and routes.
    pub router: Router,
    /// `[tenants]`, plus `default` (unlimited, any tier) unless configured.
    pub tenants: std::collections::BTreeMap<String, ssw_config::TenantConfig>,
    /// The published document it came from (none: the file's settings).
    pub document: Option<String>,
}

impl Version {
    /// A version of a validated configuration.
    pub fn new(number: u64, config: &Config) -> Self {
        let mut tenants = config.tenants.clone();
        tenants
            .entry(ssw_protocol::tier::DEFAULT_TENANT.to_owned())
            .or_default();
        Self {
            number,
            router: Router::new(config),
            tenants,
            document: None,
        }
    }

    /// The version with the published document it came from.
    pub fn with_document(self, document: String) -> Self {
        Self {
            document: Some(document),
            ..self
        }
    }

    /// A tenant's settings (`default`'s for a name not configured, which auth never yields).
    pub fn tenant(&self, name: &str) -> &ssw_config::TenantConfig {
        self.tenants
            .get(name)
            .or_else(|| self.tenants.get(ssw_protocol::tier::DEFAULT_TENANT))
            .expect("the default tenant is always there")
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

/// The routing table: one version of the routing settings.
#[derive(Debug)]
pub struct Router {
    pools: Vec<Arc<Pool>>,
    routes: Vec<Arc<Route>>,
    by_pool_name: HashMap<String, Arc<Pool>>,
    by_model: HashMap<String, Target>,
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
                by_model.insert(name.to_owned(), Target::Pool(pool.clone()));
            }
            for adapter in &pool.adapters {
                let target = Target::Adapter(pool.clone(), adapter.clone());
                by_model.insert(adapter.to_string(), target.clone());
                by_model.insert(format!("{}:{adapter}", pool.name), target);
            }
        }
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|(name, cfg)| Arc::new(Route::new(name, cfg, &by_pool_name)))
            .collect();
        for route in &routes {
            by_model.insert(route.name.to_string(), Target::Route(route.clone()));
        }
        Self {
            pools,
            routes,
            by_pool_name,
            by_model,
        }
    }

    /// Every pool, in name order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// Every route, in name order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route of this name.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        match self.by_model.get(name) {
            Some(Target::Route(r)) => Some(r),
            _ => None,
        }
    }

    /// Looks a model name (pool, alias, served model or route) up.
    pub fn by_model(&self, model: &str) -> Option<&Target> {
        self.by_model.get(model)
    }

    /// Resolves a request: the `x-ssw-pool` header (a pool name) wins, then `model`.
    pub fn resolve(&self, header: Option<&str>, model: Option<&str>) -> Result<Target, RouteError> {
        if let Some(h) = header {
            let pool = self
                .by_pool_name
                .get(h.trim())
                .ok_or_else(|| RouteError::Unknown(h.to_owned()))?;
            // The header names the pool; `model` may still name one of its adapters.
            return Ok(match model.and_then(|m| self.by_model(m)) {
                Some(Target::Adapter(p, a)) if Arc::ptr_eq(p, pool) => {
                    Target::Adapter(p.clone(), a.clone())
                }
                _ => Target::Pool(pool.clone()),
            });
        }
        match model {
            Some(m) => self
                .by_model(m)
                .cloned()
                .ok_or_else(|| RouteError::Unknown(m.to_owned())),
            None => Err(RouteError::Missing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssw_config::route::VariantConfig;

    fn config(weights: (u32, u32)) -> Config {
        let mut c = Config {
            pools: ssw_config::default_pools(),
            ..Config::default()
        };
        c.pools.get_mut("heavy").unwrap().aliases = vec!["gpt-4o".into()];
        let variant = |pool: &str, weight| VariantConfig {
            pool: pool.into(),
            weight,
            adapter: None,
            name: None,
        };
        c.routes.insert(
            "npc-dialogue".into(),
            RouteConfig {
                variants: vec![variant("heavy", weights.0), variant("light", weights.1)],
                sticky: ssw_config::route::default_sticky(),
                salt: None,
                shadow: None,
                guard: None,
            },
        );
        c.validate(ssw_config::Role::Gateway).unwrap();
        c
    }

    fn router() -> Router {
        Router::new(&config((90, 10)))
    }

    fn pool_name(t: Target) -> String {
        match t {
            Target::Pool(p) => p.name.to_string(),
            Target::Adapter(p, a) => format!("{}:{a}", p.name),
            Target::Route(r) => panic!("route {}", r.name),
        }
    }

    fn route(r: &Router) -> Arc<Route> {
        match r.resolve(None, Some("npc-dialogue")).unwrap() {
            Target::Route(r) => r,
            Target::Pool(p) | Target::Adapter(p, _) => panic!("pool {}", p.name),
        }
    }

    #[test]
    fn an_adapter_named_with_its_pools_header_is_still_the_adapter() {
        let mut c = config((90, 10));
        c.pools.get_mut("heavy").unwrap().adapters.insert(
            "vampire".into(),
            ssw_config::AdapterConfig {
                source: "/a".into(),
                rank: 16,
            },
        );
        let r = Router::new(&c);
        assert_eq!(
            pool_name(r.resolve(Some("heavy"), Some("vampire")).unwrap()),
            "heavy:vampire"
        );
        assert_eq!(
            pool_name(r.resolve(None, Some("heavy:vampire")).unwrap()),
            "heavy:vampire"
        );
        // Another pool's header: that pool, whatever `model` says.
        assert_eq!(
            pool_name(r.resolve(Some("light"), Some("vampire")).unwrap()),
            "light"
        );
    }

    #[test]
    fn header_wins_over_model() {
        let r = router();
        let p = r
            .resolve(Some("light"), Some("Qwen/Qwen2.5-14B-Instruct-AWQ"))
            .unwrap();
        assert_eq!(pool_name(p), "light");
        assert_eq!(
            pool_name(r.resolve(Some("heavy"), Some("npc-dialogue")).unwrap()),
            "heavy"
        );
    }

    #[test]
    fn model_matches_name_alias_and_served_model() {
        let r = router();
        for m in ["heavy", "gpt-4o", "Qwen/Qwen2.5-14B-Instruct-AWQ"] {
            assert_eq!(pool_name(r.resolve(None, Some(m)).unwrap()), "heavy", "{m}");
        }
        assert_eq!(
            pool_name(r.resolve(None, Some("Qwen/Qwen3-8B-AWQ")).unwrap()),
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

    #[test]
    fn users_split_by_weight_stay_put_and_a_ramp_moves_only_users_onto_the_canary() {
        let (at10, at20) = (
            Router::new(&config((90, 10))),
            Router::new(&config((80, 20))),
        );
        let (r10, r20) = (route(&at10), route(&at20));
        let users: Vec<String> = (0..20_000).map(|i| format!("player-{i}")).collect();
        let variant = |r: &Route, u: &str| r.variant(r.bucket(Some(u))).name.to_string();
        let share = |r: &Route| {
            users.iter().filter(|u| variant(r, u) == "light").count() as f64 / users.len() as f64
        };
        assert!((share(&r10) - 0.10).abs() < 0.01, "{}", share(&r10));
        assert!((share(&r20) - 0.20).abs() < 0.01, "{}", share(&r20));
        for u in &users {
            assert_eq!(
                variant(&r10, u),
                variant(&route(&at10), u),
                "sticky across builds"
            );
            if variant(&r10, u) == "light" {
                assert_eq!(variant(&r20, u), "light", "{u} left the canary on a ramp");
            }
        }
    }

    #[test]
    fn the_sticky_key_is_the_first_source_present() {
        let r = route(&router());
        let body = br#"{"model":"npc-dialogue","messages":[{"role":"user","content":"hi"}],"user":"u1","prompt_cache_key":"k1"}"#;
        let req = ChatRequest::parse(body).unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(r.sticky_key(&headers, &req).as_deref(), Some("u1"));
        let body = br#"{"model":"npc-dialogue","messages":[{"role":"user","content":"hi"}],"safety_identifier":"s1","user":"u1"}"#;
        let req = ChatRequest::parse(body).unwrap();
        assert_eq!(r.sticky_key(&headers, &req).as_deref(), Some("s1"));
        let req = ChatRequest::parse(
            br#"{"model":"npc-dialogue","messages":[{"role":"user","content":"hi"}],"user":""}"#,
        )
        .unwrap();
        assert_eq!(r.sticky_key(&headers, &req), None);
        headers.insert("x-ssw-user", "h1".parse().unwrap());
        assert_eq!(r.sticky_key(&headers, &req).as_deref(), Some("h1"));
    }

    #[test]
    fn the_bucket_hash_is_fixed() {
        // A user's variant must not change with a Rust release or across gateways: values
        // pinned from an independent implementation (Python, the same algorithm).
        assert_eq!(stable_hash(b"npc-dialogue", b"player-1") % 10_000, 4352);
        assert_eq!(stable_hash(b"npc-dialogue", b"player-2") % 10_000, 8327);
    }
}
