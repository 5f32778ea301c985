//! `[tenants.<name>]`: who shares the platform, with which keys, tiers and limits.
//!
//! A tenant is a game server or pipeline: its API keys identify it, its tiers bound how urgent
//! its requests may be, and its limits bound what it may take. Keys of `gateway.api_keys_file`
//! belong to the tenant `default` (which `[tenants.default]` may give limits and tiers);
//! without any keys, every request is tenant `default`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use ssw_protocol::tier::{DEFAULT_TENANT, Tier, valid_tenant};

use crate::{ConfigError, invalid};

/// One tenant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its API keys, one per line (required, except for `default`, whose keys are
    /// `gateway.api_keys_file`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_file: Option<PathBuf>,
    /// The tier of its requests that ask for none (or `auto`).
    #[serde(default)]
    pub default_tier: Tier,
    /// The highest tier it may use: a request asking above it is served at this tier (and the
    /// response's `service_tier` says so).
    #[serde(default = "highest")]
    pub max_tier: Tier,
    /// Requests per minute, over every gateway (a token bucket: a minute's worth may come at
    /// once, then they refill evenly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt + completion) per minute, over every gateway: estimated at admission,
    /// corrected with the engine's usage when the answer ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight (waiting or running), over every gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Requests waiting for a worker, per pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u64>,
    /// Requests per UTC day, over every gateway (a quota: spent, 429 `insufficient_quota`
    /// until 00:00 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    /// Tokens (prompt + completion) per UTC day, over every gateway, counted as per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

fn highest() -> Tier {
    Tier::Priority
}

impl Default for TenantConfig {
    fn default() -> Self {
        Self {
            api_keys_file: None,
            default_tier: Tier::Default,
            max_tier: highest(),
            requests_per_minute: None,
            tokens_per_minute: None,
            max_concurrent: None,
            max_queued: None,
            requests_per_day: None,
            tokens_per_day: None,
        }
    }
}

impl TenantConfig {
    /// Whether any limit that needs Redis counters is set.
    pub fn is_limited(&self) -> bool {
        self.requests_per_minute.is_some()
            || self.tokens_per_minute.is_some()
            || self.max_concurrent.is_some()
            || self.requests_per_day.is_some()
            || self.tokens_per_day.is_some()
    }
}

pub(crate) fn validate(tenants: &BTreeMap<String, TenantConfig>) -> Result<(), ConfigError> {
    for (name, t) in tenants {
        let at = |f: &str| format!("tenants.{name}.{f}");
        if !valid_tenant(name) {
            return Err(invalid(
                format!("tenants.{name}"),
                "tenant names use letters, digits, `-`, `_` (at most 64)",
            ));
        }
        match (name.as_str(), &t.api_keys_file) {
            (DEFAULT_TENANT, Some(_)) => {
                return Err(invalid(
                    at("api_keys_file"),
                    "the default tenant's keys are gateway.api_keys_file",
                ));
            }
            (DEFAULT_TENANT, None) | (_, Some(_)) => {}
            (_, None) => {
                return Err(invalid(
                    at("api_keys_file"),
                    "required: a tenant is known by its keys",
                ));
            }
        }
        if t.default_tier < t.max_tier {
            return Err(invalid(
                at("default_tier"),
                format!("`{}` is above max_tier `{}`", t.default_tier, t.max_tier),
            ));
        }
        for (f, v) in [
            ("requests_per_minute", t.requests_per_minute),
            ("tokens_per_minute", t.tokens_per_minute),
            ("max_concurrent", t.max_concurrent),
            ("max_queued", t.max_queued),
            ("requests_per_day", t.requests_per_day),
            ("tokens_per_day", t.tokens_per_day),
        ] {
            if v == Some(0) {
                return Err(invalid(
                    at(f),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
    }
    Ok(())
}
