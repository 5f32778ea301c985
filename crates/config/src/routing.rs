//! The reloadable part of the configuration: routes, pools' served model names, aliases and
//! request defaults, tenants' tiers and limits.
//!
//! A [`Routing`] document is what `ssw routes apply` publishes in Redis and what a gateway
//! re-reads from its file on SIGHUP. It replaces `routes` entirely, and for each pool and
//! tenant it lists, that pool's `aliases` and `defaults` or that tenant's tiers and limits;
//! pools and tenants it does not list keep the file's settings. Everything else needs a
//! restart: [`restart_fields`] names what differs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use ssw_protocol::tier::Tier;

use crate::route::RouteConfig;
use crate::{Config, ConfigError, Role, invalid};

/// The reloadable settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    /// Every route (replaces the file's).
    pub routes: BTreeMap<String, RouteConfig>,
    /// Pools' routing settings, by pool.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolRouting>,
    /// Tenants' tiers and limits, by tenant.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantLimits>,
}

/// A pool's reloadable settings (as in `[pools.<name>]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolRouting {
    /// The name its engines serve (absent: the file's). Changes after a model rollout: workers
    /// send each engine its own name, so this one only decides which `model` values route here
    /// and what `/v1/models` says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// Other `model` values routed to the pool.
    pub aliases: Vec<String>,
    /// Request fields merged into every request that does not set them.
    pub defaults: Map<String, Value>,
    /// Its LoRA adapters (absent: the file's; `ssw adapters load` adds one once every engine
    /// holds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapters: Option<BTreeMap<String, crate::AdapterConfig>>,
}

/// A tenant's reloadable settings (as in `[tenants.<name>]`; an unset limit is no limit).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// The tier of requests that ask for none.
    #[serde(default)]
    pub default_tier: Tier,
    /// The highest tier it may use.
    #[serde(default = "highest")]
    pub max_tier: Tier,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Requests waiting, per pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// Requests per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

fn highest() -> Tier {
    Tier::Priority
}

/// A routing version as published in Redis (`ssw routes apply`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// The version it was based on (its parent).
    pub based_on: u64,
    /// Who published it (`user@host`, or `guard` for an automatic fallback).
    pub author: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// When (Unix ms).
    pub created_ms: u64,
    /// The settings.
    pub routing: Routing,
}

/// A gateway's routing status, as it writes it to Redis (`ssw routes show`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// The version in force there (0: its file's settings).
    pub version: u64,
    /// A later version it could not use, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<(u64, String)>,
    /// When it wrote this (Unix ms; it writes at least every 10 s).
    pub at_ms: u64,
}

impl Routing {
    /// Parses a routing document (TOML, or JSON when it starts with `{`), naming the field
    /// of a mistake; a setting that needs a restart is refused as such.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let parsed = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            toml::from_str(text).map_err(|e| e.to_string())
        };
        parsed.map_err(|e| {
            invalid(
                "(routing document)",
                format!(
                    "{e}\n(a routing document holds routes, pools' served models, aliases, defaults and adapters, and tenants' tiers and limits; other settings need a restart)"
                ),
            )
        })
    }
}

impl Config {
    /// The reloadable part of this configuration (every pool and tenant listed).
    pub fn routing(&self) -> Routing {
        Routing {
            routes: self.routes.clone(),
            pools: self
                .pools
                .iter()
                .map(|(name, p)| {
                    let r = PoolRouting {
                        served_model: Some(p.served_model.clone()),
                        aliases: p.aliases.clone(),
                        defaults: p.defaults.clone(),
                        adapters: Some(p.adapters.clone()),
                    };
                    (name.clone(), r)
                })
                .collect(),
            tenants: self
                .tenants
                .iter()
                .map(|(name, t)| {
                    let l = TenantLimits {
                        default_tier: t.default_tier,
                        max_tier: t.max_tier,
                        requests_per_minute: t.requests_per_minute,
                        tokens_per_minute: t.tokens_per_minute,
                        max_concurrent: t.max_concurrent,
                        max_queued: t.max_queued,
                        requests_per_day: t.requests_per_day,
                        tokens_per_day: t.tokens_per_day,
                    };
                    (name.clone(), l)
                })
                .collect(),
        }
    }

    /// This configuration with `routing` applied, validated for the gateway. Pools and tenants
    /// it names must exist (adding one needs a restart: its workers or its keys).
    pub fn with_routing(&self, routing: &Routing) -> Result<Config, ConfigError> {
        let mut c = self.clone();
        c.routes = routing.routes.clone();
        for (name, r) in &routing.pools {
            let p = c.pools.get_mut(name).ok_or_else(|| {
                invalid(
                    format!("pools.{name}"),
                    "no such pool in the configuration (adding a pool needs a restart)",
                )
            })?;
            if let Some(m) = &r.served_model {
                p.served_model = m.clone();
            }
            p.aliases = r.aliases.clone();
            p.defaults = r.defaults.clone();
            if let Some(a) = &r.adapters {
                p.adapters = a.clone();
            }
        }
        for (name, l) in &routing.tenants {
            let t = c.tenants.get_mut(name).ok_or_else(|| {
                invalid(
                    format!("tenants.{name}"),
                    "no such tenant in the configuration (adding a tenant needs a restart: its keys)",
                )
            })?;
            t.default_tier = l.default_tier;
            t.max_tier = l.max_tier;
            t.requests_per_minute = l.requests_per_minute;
            t.tokens_per_minute = l.tokens_per_minute;
            t.max_concurrent = l.max_concurrent;
            t.max_queued = l.max_queued;
            t.requests_per_day = l.requests_per_day;
            t.tokens_per_day = l.tokens_per_day;
        }
        c.validate(Role::Gateway)?;
        Ok(c)
    }
}

/// The settings that differ between `old` and `new` outside the reloadable part, as dotted
/// paths (`gateway.listen`, `pools.heavy.max_queue`): what a reload leaves as it was until a
/// restart.
pub fn restart_fields(old: &Config, new: &Config) -> Vec<String> {
    let neutral = |c: &Config| {
        let mut c = c.clone();
        c.routes.clear();
        for p in c.pools.values_mut() {
            p.served_model.clear();
            p.aliases.clear();
            p.defaults.clear();
            p.adapters.clear();
        }
        for t in c.tenants.values_mut() {
            let keys = t.api_keys_file.take();
            *t = crate::TenantConfig {
                api_keys_file: keys,
                ..Default::default()
            };
        }
        serde_json::to_value(c).unwrap_or(Value::Null)
    };
    let mut out = Vec::new();
    diff(&neutral(old), &neutral(new), String::new(), &mut out);
    out
}

fn diff(a: &Value, b: &Value, at: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => diff(u, v, path, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        let text = r#"
            [pools.heavy]
            served_model = "big"
            [pools.light]
            served_model = "small"
            [tenants.npc]
            api_keys_file = "/run/keys/npc"
            requests_per_minute = 600
        "#;
        {
            use figment::providers::Format;
            Config::from_figment(
                &Config::file_figment(None).merge(figment::providers::Toml::string(text)),
            )
        }
        .unwrap()
    }

    #[test]
    fn a_document_applies_routes_aliases_defaults_and_limits_and_is_validated_as_a_config() {
        let doc = Routing::parse(
            r#"
            [routes.npc-dialogue]
            variants = [{ pool = "heavy", weight = 90 }, { pool = "light", weight = 10 }]
            [pools.light]
            aliases = ["chatter"]
            defaults = { temperature = 0.2 }
            [tenants.npc]
            tokens_per_minute = 1000
            "#,
        )
        .unwrap();
        let c = base().with_routing(&doc).unwrap();
        assert_eq!(c.routes["npc-dialogue"].variants.len(), 2);
        assert_eq!(c.pools["light"].aliases, ["chatter"]);
        assert_eq!(c.pools["heavy"].aliases, Vec::<String>::new());
        let npc = &c.tenants["npc"];
        assert_eq!(
            (npc.requests_per_minute, npc.tokens_per_minute),
            (None, Some(1000))
        );
        assert!(npc.api_keys_file.is_some(), "keys stay the file's");
        // A variant may be an adapter the same document gives its pool.
        let doc = Routing::parse(
            r#"
            [pools.heavy.adapters.vampire]
            source = "/adapters/vampire"
            rank = 16
            [routes.vampire-ab]
            variants = [{ pool = "heavy", weight = 1 }, { pool = "heavy", adapter = "vampire", weight = 1 }]
            "#,
        )
        .unwrap();
        let c = base().with_routing(&doc).unwrap();
        assert_eq!(c.routes["vampire-ab"].variants[1].name(), "vampire");
        // The round trip: a config's own routing applies to it unchanged.
        assert_eq!(base().with_routing(&base().routing()).unwrap(), base());
    }

    #[test]
    fn a_bad_document_names_the_field() {
        let cases = [
            (
                "[routes.r]\nvariants = [{ pool = \"medium\", weight = 1 }]",
                "routes.r.variants[0].pool",
            ),
            (
                "[routes.heavy]\nvariants = [{ pool = \"light\", weight = 1 }]",
                "routes.heavy",
            ),
            (
                "[pools.light]\naliases = [\"big\"]",
                "pools.light.aliases[0]",
            ),
            ("[pools.medium]\naliases = []", "pools.medium"),
            ("[tenants.other]\nmax_concurrent = 1", "tenants.other"),
            (
                "[routes.r]\nvariants = [{ pool = \"heavy\", adapter = \"vampire\", weight = 1 }]",
                "routes.r.variants[0].adapter",
            ),
        ];
        for (text, field) in cases {
            let doc = Routing::parse(text).unwrap();
            match base().with_routing(&doc) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let e = Routing::parse("[pools.heavy]\nmax_queue = 5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_queue") && e.contains("restart"), "{e}");
    }

    #[test]
    fn restart_fields_name_what_a_reload_cannot_change() {
        let mut new = base();
        new.pools.get_mut("heavy").unwrap().aliases = vec!["x".into()];
        new.pools.get_mut("heavy").unwrap().served_model = "bigger".into();
        new.tenants.get_mut("npc").unwrap().max_concurrent = Some(3);
        assert_eq!(restart_fields(&base(), &new), Vec::<String>::new());
        new.pools.get_mut("heavy").unwrap().max_queue = 7;
        new.gateway.listen = "0.0.0.0:1".parse().unwrap();
        assert_eq!(
            restart_fields(&base(), &new),
            ["gateway.listen", "pools.heavy.max_queue"]
        );
    }
}
