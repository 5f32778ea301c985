//! What a worker publishes about itself on every heartbeat.

use serde::{Deserialize, Serialize};

use crate::EpochMillis;

/// A worker's self-report, stored as JSON in `P:{pool}:worker-status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Worker id, unique within the pool.
    pub worker: String,
    /// Pool it serves.
    pub pool: String,
    /// Base URL of its engine.
    pub engine_url: String,
    /// Whether the engine's `/health` answered 200 at the last probe.
    pub engine_up: bool,
    /// Why the engine is considered down, if it is.
    #[serde(default)]
    pub engine_detail: Option<String>,
    /// Jobs running now.
    pub inflight: u32,
    /// Slot limit (`max_inflight`).
    pub max_inflight: u32,
    /// The engine's `vllm:num_requests_running` at the last scrape.
    #[serde(default)]
    pub engine_running: Option<f64>,
    /// The engine's `vllm:num_requests_waiting` at the last scrape.
    #[serde(default)]
    pub engine_waiting: Option<f64>,
    /// The engine's KV-cache usage (0–1) at the last scrape.
    #[serde(default)]
    pub kv_cache_usage: Option<f64>,
    /// Whether it is draining (SIGTERM received, pulling stopped).
    pub draining: bool,
    /// GPU indices it is configured with.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Process start.
    pub started_ms: EpochMillis,
    /// This heartbeat's time.
    pub heartbeat_ms: EpochMillis,
    /// `ssw` version.
    pub version: String,
}

impl WorkerStatus {
    /// Whether this worker may take jobs: engine up and not draining.
    pub fn serving(&self) -> bool {
        self.engine_up && !self.draining
    }
}
