//! The configuration of every `ssw` role, in one schema.
//!
//! Sources, later ones winning: built-in defaults ([`Config::default`]), a TOML file, `SSW_`
//! environment variables (`SSW_REDIS__URL`, `__` separates levels), then command-line overrides.
//! After extraction [`Config::validate`] checks cross-field rules for the role being started; every
//! error names the field (`pools.heavy.max_queue`). docs/configuration.md documents each field.
//!
//! # Layout
//! - this file: [`Config`], loading, validation by role.
//! - one module per section, each with its fields and checks: [`redis`], [`gateway`],
//!   [`pool`], [`worker`], [`stub`].
//! - [`size`]: [`ByteSize`], human-readable sizes.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Json, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub mod gateway;
pub mod pool;
pub mod redis;
pub mod route;
pub mod routing;
pub mod size;
pub mod stub;
pub mod tenant;
pub mod worker;

pub use gateway::{GatewayConfig, MAX_THREADS};
pub use pool::{AdapterConfig, PoolConfig, default_pools};
pub use redis::{Persistence, RedisConfig};
pub use route::RouteConfig;
pub use routing::Routing;
pub use size::ByteSize;
pub use stub::{STUB_PRESETS, StubConfig};
pub use tenant::TenantConfig;
pub use worker::{GpuMetrics, WorkerConfig};

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

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
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
    /// Routes by name (`[routes.<name>]`): public model names spread over weighted variants.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteConfig>,
    /// Tenants by name (`[tenants.<name>]`): their keys, tiers and limits.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// One worker process (used by `ssw worker`).
    pub worker: WorkerConfig,
    /// The stub engine (used by `ssw stub`).
    pub stub: StubConfig,
}

pub(crate) fn valid_name(s: &str) -> bool {
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
            Role::Gateway => self.gateway.validate(self),
            Role::Worker => self.worker.validate(self),
            Role::Stub => self.stub.validate(),
        }
    }

    fn validate_common(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        pool::validate(&self.pools)?;
        route::validate(&self.routes, &self.pools)?;
        tenant::validate(&self.tenants)?;
        for (name, pool) in &self.pools {
            if pool.max_queue_bytes < self.gateway.max_body {
                return Err(invalid(
                    format!("pools.{name}.max_queue_bytes"),
                    format!(
                        "must be at least gateway.max_body ({}), or a largest request could never be queued",
                        self.gateway.max_body
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `maxmemory` for the platform's own Redis: `redis.max_memory`, else twice the pools'
    /// `max_queue_bytes` (a job's entry costs about its body; reply streams and markers take
    /// the rest) plus 256 MiB.
    pub fn redis_max_memory(&self) -> ByteSize {
        self.redis.max_memory.unwrap_or_else(|| {
            let queues: u64 = self.pools.values().map(|p| p.max_queue_bytes.bytes()).sum();
            ByteSize(queues * 2 + ByteSize::mib(256).bytes())
        })
    }

    /// The configuration as TOML (a file `ssw --config` reads back to the same value).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| invalid("(whole config)", e.to_string()))
    }

    /// Whether any API key is configured (`gateway.api_keys_file` or a tenant's): requests
    /// then need one.
    pub fn has_api_keys(&self) -> bool {
        self.gateway.api_keys_file.is_some()
            || self.tenants.values().any(|t| t.api_keys_file.is_some())
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
    use std::time::Duration;

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
        assert_eq!(c.gateway.max_body, ByteSize::mib(2));
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
                "[gateway]\nreply_ttl = \"2s\"",
                Role::Gateway,
                "gateway.reply_ttl",
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
            (
                "[gateway]\nlisten = \"0.0.0.0:8080\"",
                Role::Gateway,
                "gateway.allow_unauthenticated",
            ),
            (
                "[gateway]\nbody_budget = \"1MiB\"",
                Role::Gateway,
                "gateway.body_budget",
            ),
            (
                "[gateway]\nops_listen = \"127.0.0.1:8080\"",
                Role::Gateway,
                "gateway.ops_listen",
            ),
            (
                "[gateway]\nheader_timeout = \"0s\"",
                Role::Gateway,
                "gateway.header_timeout",
            ),
            (
                "[pools.a]\nserved_model = \"m\"\nmax_n = 0",
                Role::Gateway,
                "pools.a.max_n",
            ),
            (
                "[pools.a]\nserved_model = \"m\"\nallowed_fields = [\"top_k\", \"temperature\"]",
                Role::Gateway,
                "pools.a.allowed_fields[1]",
            ),
            (
                "[worker]\npool = \"heavy\"\nengine_url = \"https://gpu:8000\"",
                Role::Worker,
                "worker.engine_url",
            ),
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
    fn an_open_gateway_starts_only_when_told_to() {
        let open = "[gateway]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true";
        assert!({
            let c = load(open, Role::Gateway).unwrap();
            c.gateway.is_open(&c)
        });
        Jail::expect_with(|jail| {
            jail.create_file("keys", "k1\n")?;
            let keyed = "[gateway]\nlisten = \"0.0.0.0:8080\"\napi_keys_file = \"keys\"";
            jail.create_file("ssw.toml", keyed)?;
            let c = Config::load(Some(Path::new("ssw.toml")), Role::Gateway)
                .map_err(|e| e.to_string())?;
            assert!(!c.gateway.is_open(&c));
            Ok(())
        });
        let c = load("", Role::Gateway).unwrap();
        assert!(!c.gateway.is_open(&c));
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
}
