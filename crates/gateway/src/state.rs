//! The gateway's shared state, built once from the configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ssw_config::Config;
use ssw_queue::Redis;

use ssw_protocol::tier::DEFAULT_TENANT;

use crate::auth::ApiKeys;
use crate::replies::Replies;
use crate::routing::Version;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis settings are unusable.
    #[error("redis: {0}")]
    Redis(#[from] ssw_queue::QueueError),
    /// A secret file could not be read.
    #[error("{field}: cannot read {path}: {source}")]
    Secret {
        /// Config field naming the file.
        field: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The shared parts.
pub struct Inner {
    /// The configuration it was built from.
    pub config: Config,
    /// This gateway's id (`gateway.id`, or one made up per process).
    pub id: String,
    /// This process: the id and a random nonce. Names the reply stream and prefixes every job
    /// id, so a gateway restarted with the same `gateway.id` (or two sharing one) never sees
    /// replies meant for another process.
    pub instance: String,
    /// The pools' names (a restart changes them; sampled for metrics and readiness).
    pub pools: Arc<[Arc<str>]>,
    /// The routing settings in force; see [`AppState::routing`].
    routing: std::sync::RwLock<Arc<Version>>,
    /// Routed requests' outcomes not yet added to the guards' stats in Redis.
    pub guard_tally: crate::guard::Tally,
    /// The configuration file's settings as last read (see [`AppState::file`]).
    pub(crate) file: std::sync::RwLock<Config>,
    /// Redis handle.
    pub redis: Redis,
    /// Requests in flight and their event channels.
    pub replies: Arc<Replies>,
    /// API keys, when configured.
    pub api_keys: Option<ApiKeys>,
    /// The tenant `default`, shared by its requests.
    pub default_tenant: Arc<str>,
    /// Limited tenants' allowances at this gateway.
    pub allowances: crate::limits::Allowances,
    /// Set on SIGTERM: readiness fails and new requests are refused.
    pub draining: AtomicBool,
    /// Unix seconds at start (`created` of model cards).
    pub started_s: u64,
    /// Turns for parsing and enqueueing: see [`ADMISSIONS`].
    pub admissions: tokio::sync::Semaphore,
    /// Request-body bytes being read or parsed, over all requests (`gateway.body_budget`).
    pub body_budget: tokio::sync::Semaphore,
    /// The last readiness answer and when it was computed (`/readyz` runs one script per pool,
    /// so a flood of probes is answered from here for a second).
    pub readiness:
        tokio::sync::Mutex<Option<(tokio::time::Instant, axum::http::StatusCode, bytes::Bytes)>>,
    job_seq: AtomicU64,
    /// The pools' replicas as `/v1/models` shows them, and when they were read (reused for a
    /// second: a client polling `/v1/models` costs Redis one read per pool per second).
    pub replicas: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<Replicas>)>>,
}

/// Each pool's replicas as `/v1/models` lists them, by pool.
pub type Replicas = std::collections::HashMap<String, Vec<ssw_protocol::models::ReplicaCard>>;

/// Requests parsed and enqueued at a time; the rest wait their turn in arrival order, parked.
/// A burst of thousands of requests would otherwise all be runnable at once, and a runtime
/// busy with them polls its own Redis connections too late: replies that Redis sent at once
/// would be read after `redis.op_timeout` and the requests answered 503. With few runnable
/// admissions the connections are read promptly. Waiting requests hold no Redis resource, and a
/// turn lasts one parse and one round trip, so this bounds concurrency, not throughput.
pub const ADMISSIONS: usize = 64;

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state: reads secrets, prepares the Redis pool (no I/O yet).
    pub fn new(config: Config) -> Result<Self, StartError> {
        let password = match &config.redis.password_file {
            Some(p) => Some(
                ssw_config::read_secret(p).map_err(|source| StartError::Secret {
                    field: "redis.password_file".into(),
                    path: p.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let mut keys = ApiKeys::default();
        let files = std::iter::once((
            "gateway.api_keys_file".to_owned(),
            config.gateway.api_keys_file.as_ref(),
            DEFAULT_TENANT,
        ))
        .chain(config.tenants.iter().map(|(name, t)| {
            (
                format!("tenants.{name}.api_keys_file"),
                t.api_keys_file.as_ref(),
                name.as_str(),
            )
        }));
        for (field, path, tenant) in files {
            if let Some(p) = path {
                keys.load(p, tenant).map_err(|source| StartError::Secret {
                    field,
                    path: p.display().to_string(),
                    source,
                })?;
            }
        }
        let api_keys = (!keys.is_empty()).then_some(keys);
        let redis = Redis::new(&config.redis, password)?;
        let id = config.gateway.id.clone().unwrap_or_else(default_id);
        let instance = format!("{id}.{:08x}", fastrand::u32(..));
        let replies = Arc::new(Replies::new(
            redis.keys().replies(&instance),
            config.gateway.reply_buffer.bytes() as usize,
        ));
        let body_budget = tokio::sync::Semaphore::new(
            usize::try_from(config.gateway.body_budget.bytes()).unwrap_or(usize::MAX >> 4),
        );
        let started_s = ssw_queue::now_ms() / 1000;
        Ok(Self(Arc::new(Inner {
            pools: config.pools.keys().map(|p| Arc::from(p.as_str())).collect(),
            routing: std::sync::RwLock::new(Arc::new(Version::new(0, &config))),
            file: std::sync::RwLock::new(config.clone()),
            guard_tally: crate::guard::Tally::default(),
            config,
            id,
            instance,
            redis,
            replies,
            api_keys,
            default_tenant: DEFAULT_TENANT.into(),
            allowances: crate::limits::Allowances::default(),
            draining: AtomicBool::new(false),
            started_s,
            admissions: tokio::sync::Semaphore::new(ADMISSIONS),
            body_budget,
            readiness: tokio::sync::Mutex::new(None),
            replicas: tokio::sync::Mutex::new(None),
            job_seq: AtomicU64::new(0),
        })))
    }

    /// A job id unique across gateways and their restarts: this process's instance and a
    /// counter.
    pub fn next_job_id(&self) -> String {
        let n = self.job_seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.instance)
    }

    /// The routing settings in force: a request takes them once, at admission.
    pub fn routing(&self) -> Arc<Version> {
        self.routing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts another version of the routing settings in force, at once for every new request.
    pub fn set_routing(&self, version: Version) {
        metrics::gauge!(ssw_telemetry::names::GATEWAY_ROUTING_VERSION).set(version.number as f64);
        *self.routing.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(version);
    }

    /// Whether SIGTERM has been received.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// `<host>-<pid>-<random>`: unique per process, readable in `ssw status`.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "gw".to_owned());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(32)
        .collect();
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}
