//! `[routes.<name>]`: a public model name spread over weighted variants (A/B tests, canaries).
//!
//! A route's variants own contiguous ranges of [`BUCKETS`] buckets, in the order they are
//! listed, sized by weight. A request's sticky key (the first of `sticky` it carries) is hashed
//! with the route's salt into a bucket, so a user stays on one variant while the weights stand,
//! and raising the last variant's weight at the expense of the first (a canary going from 10 %
//! to 20 %) only moves users onto it. The first variant is the control: the guard compares the
//! others with it and falls back to it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, PoolConfig, invalid, valid_name};

/// Buckets a route's users are hashed into (a weight's resolution is 0.01 %).
pub const BUCKETS: u32 = 10_000;

/// One route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Where requests go, by weight; the first is the control.
    pub variants: Vec<VariantConfig>,
    /// Where a request's sticky key is read, first present wins: `safety_identifier`, `user`,
    /// `prompt_cache_key` (body fields), or `header:<name>`. A request with none is assigned
    /// on its own.
    #[serde(default = "default_sticky")]
    pub sticky: Vec<StickyKey>,
    /// Hashed with the sticky key; default the route's name. Changing it reshuffles users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// A share of the route's requests copied to another pool as its lowest-priority work,
    /// the answers discarded (variant `shadow` in metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowConfig>,
    /// Automatic fallback to the control when another variant misbehaves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardConfig>,
}

/// One variant of a route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// The pool that serves it.
    pub pool: String,
    /// Its share, relative to the other variants' weights (0: no new users).
    pub weight: u32,
    /// One of the pool's LoRA adapters, which then serves the variant (an archetype's new
    /// adapter tried on a share of its NPCs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Its name in headers, logs and metrics; default the adapter's name, else the pool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl VariantConfig {
    /// The variant's name.
    pub fn name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.adapter.as_deref())
            .unwrap_or(&self.pool)
    }
}

/// `shadow = { pool, share }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// The pool the copies go to.
    pub pool: String,
    /// Share of the route's requests copied, above 0 up to 1.
    pub share: f64,
}

/// `guard = { … }`: when a non-control variant breaches a bound over `window`, with at least
/// `min_requests` requests of its own and of the control, the route falls back to the control.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Highest share of a variant's requests answered with a server error (5xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Highest ratio of a variant's time-to-first-token p95 to the control's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttft_p95_ratio: Option<f64>,
    /// The window the figures are taken over.
    #[serde(default = "default_guard_window", with = "humantime_serde")]
    pub window: Duration,
    /// Fewest requests of a variant (and of the control) in the window before it is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

fn default_guard_window() -> Duration {
    Duration::from_secs(300)
}

fn default_min_requests() -> u64 {
    200
}

/// Where a sticky key is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StickyKey {
    /// OpenAI's `safety_identifier`.
    SafetyIdentifier,
    /// OpenAI's `user` (being replaced by the other two).
    User,
    /// OpenAI's `prompt_cache_key`.
    PromptCacheKey,
    /// A request header (lowercase name).
    Header(String),
}

/// The default `sticky`: OpenAI's three fields, then `x-ssw-user`.
pub fn default_sticky() -> Vec<StickyKey> {
    vec![
        StickyKey::SafetyIdentifier,
        StickyKey::User,
        StickyKey::PromptCacheKey,
        StickyKey::Header("x-ssw-user".into()),
    ]
}

impl TryFrom<String> for StickyKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "safety_identifier" => Self::SafetyIdentifier,
            "user" => Self::User,
            "prompt_cache_key" => Self::PromptCacheKey,
            _ => match s.strip_prefix("header:") {
                Some(h)
                    if !h.is_empty()
                        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    Self::Header(h.to_ascii_lowercase())
                }
                _ => {
                    return Err(format!(
                        "`{s}` is not a sticky key: use safety_identifier, user, prompt_cache_key or header:<name>"
                    ));
                }
            },
        })
    }
}

impl From<StickyKey> for String {
    fn from(k: StickyKey) -> String {
        match k {
            StickyKey::SafetyIdentifier => "safety_identifier".into(),
            StickyKey::User => "user".into(),
            StickyKey::PromptCacheKey => "prompt_cache_key".into(),
            StickyKey::Header(h) => format!("header:{h}"),
        }
    }
}

impl RouteConfig {
    /// Each variant's bucket range `[start, end)`, in listed order; together they cover
    /// `0..BUCKETS` (a variant of weight 0 gets an empty range).
    pub fn ranges(&self) -> Vec<(u32, u32)> {
        let total: u64 = self.variants.iter().map(|v| u64::from(v.weight)).sum();
        let mut sum = 0u64;
        let mut start = 0u32;
        self.variants
            .iter()
            .map(|v| {
                sum += u64::from(v.weight);
                let end = (sum * u64::from(BUCKETS) / total.max(1)) as u32;
                let range = (start, end);
                start = end;
                range
            })
            .collect()
    }

    /// The salt hashed with sticky keys.
    pub fn salt<'a>(&'a self, name: &'a str) -> &'a str {
        self.salt.as_deref().unwrap_or(name)
    }
}

/// Most variants of one route.
const MAX_VARIANTS: usize = 16;

/// Checks every route against the pools; `routed` holds every pool name, served model and
/// alias (a route's name must be none of them).
pub(crate) fn validate(
    routes: &BTreeMap<String, RouteConfig>,
    pools: &BTreeMap<String, PoolConfig>,
) -> Result<(), ConfigError> {
    let routed: BTreeMap<&str, &str> = pools
        .iter()
        .flat_map(|(name, p)| {
            std::iter::once(name.as_str())
                .chain(std::iter::once(p.served_model.as_str()))
                .chain(p.aliases.iter().map(String::as_str))
                .map(move |m| (m, name.as_str()))
        })
        .collect();
    for (name, route) in routes {
        let at = |f: &str| format!("routes.{name}.{f}");
        if !valid_name(name) {
            return Err(invalid(
                format!("routes.{name}"),
                "route names use letters, digits, `-`, `_`, `.`",
            ));
        }
        if let Some(pool) = routed.get(name.as_str()) {
            return Err(invalid(
                format!("routes.{name}"),
                format!(
                    "`{name}` already routes to pool `{pool}` (a pool name, served model or alias)"
                ),
            ));
        }
        if route.variants.is_empty() || route.variants.len() > MAX_VARIANTS {
            return Err(invalid(
                at("variants"),
                format!("a route has 1 to {MAX_VARIANTS} variants"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, v) in route.variants.iter().enumerate() {
            let at = |f: &str| format!("routes.{name}.variants[{i}].{f}");
            let Some(pool) = pools.get(&v.pool) else {
                return Err(invalid(at("pool"), format!("no pool `{}`", v.pool)));
            };
            if let Some(a) = &v.adapter
                && !pool.adapters.contains_key(a)
            {
                return Err(invalid(
                    at("adapter"),
                    format!("pool `{}` has no adapter `{a}`", v.pool),
                ));
            }
            if !valid_name(v.name()) || v.name() == "shadow" {
                return Err(invalid(
                    at("name"),
                    "variant names use letters, digits, `-`, `_`, `.` (`shadow` is taken)",
                ));
            }
            if !names.insert(v.name()) {
                return Err(invalid(
                    at("name"),
                    format!(
                        "two variants are named `{}`; name them (`name = \"…\"`)",
                        v.name()
                    ),
                ));
            }
        }
        let total: u64 = route.variants.iter().map(|v| u64::from(v.weight)).sum();
        if total == 0 {
            return Err(invalid(at("variants"), "the weights add up to 0"));
        }
        if route.sticky.is_empty() {
            return Err(invalid(at("sticky"), "name at least one sticky key"));
        }
        if let Some(s) = &route.shadow {
            if !pools.contains_key(&s.pool) {
                return Err(invalid(at("shadow.pool"), format!("no pool `{}`", s.pool)));
            }
            if !(s.share > 0.0 && s.share <= 1.0) {
                return Err(invalid(at("shadow.share"), "must be above 0, at most 1"));
            }
        }
        if let Some(g) = &route.guard {
            if route.variants.len() < 2 {
                return Err(invalid(
                    at("guard"),
                    "a guard compares variants with the first (the control): add a variant",
                ));
            }
            if g.max_error_rate.is_none() && g.max_ttft_p95_ratio.is_none() {
                return Err(invalid(
                    at("guard"),
                    "set max_error_rate, max_ttft_p95_ratio or both",
                ));
            }
            if g.max_error_rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
                return Err(invalid(
                    at("guard.max_error_rate"),
                    "must be above 0, at most 1",
                ));
            }
            if g.max_ttft_p95_ratio
                .is_some_and(|r| !(r >= 1.0 && r.is_finite()))
            {
                return Err(invalid(
                    at("guard.max_ttft_p95_ratio"),
                    "must be at least 1",
                ));
            }
            if g.window < Duration::from_secs(10) {
                return Err(invalid(at("guard.window"), "must be at least 10s"));
            }
            if g.min_requests == 0 {
                return Err(invalid(at("guard.min_requests"), "must be at least 1"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(weights: &[u32]) -> RouteConfig {
        RouteConfig {
            variants: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| VariantConfig {
                    pool: "heavy".into(),
                    weight,
                    adapter: None,
                    name: Some(format!("v{i}")),
                })
                .collect(),
            sticky: default_sticky(),
            salt: None,
            shadow: None,
            guard: None,
        }
    }

    #[test]
    fn ranges_cover_every_bucket_in_order_and_a_canary_ramp_only_adds_users_to_it() {
        assert_eq!(route(&[90, 10]).ranges(), vec![(0, 9000), (9000, 10_000)]);
        assert_eq!(route(&[80, 20]).ranges(), vec![(0, 8000), (8000, 10_000)]);
        assert_eq!(
            route(&[1, 0, 2]).ranges(),
            vec![(0, 3333), (3333, 3333), (3333, 10_000)]
        );
    }

    #[test]
    fn sticky_keys_parse_and_print_back() {
        for s in [
            "safety_identifier",
            "user",
            "prompt_cache_key",
            "header:x-player",
        ] {
            let k = StickyKey::try_from(s.to_owned()).unwrap();
            assert_eq!(String::from(k), s);
        }
        assert_eq!(
            StickyKey::try_from("header:X-Player".to_owned()).unwrap(),
            StickyKey::Header("x-player".into())
        );
        for bad in ["email", "header:", "header:a b"] {
            assert!(StickyKey::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
