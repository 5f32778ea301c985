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
    /// Drained by an operator (`ssw drain`): the drain it has seen, if any. While set it takes
    /// no job; `paused` says whether its pull loop has stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    /// Its pull loop has stopped for `drain` (no pull in flight): from the heartbeat that says
    /// so with `inflight` 0, no job of the pool runs on this replica.
    #[serde(default)]
    pub paused: bool,
    /// The model its engine serves, as its `/v1/models` says (absent until read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_model: Option<String>,
    /// A hash of the engine's model card (name, root, context length): changes when the
    /// engine's model or the arguments it reports change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
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
    /// Whether this worker may take jobs: engine up, not draining, not drained.
    pub fn serving(&self) -> bool {
        self.engine_up && !self.draining && self.drain.is_none()
    }

    /// One word for tables: `serving`, `down`, `stopping` (SIGTERM), `draining` (an operator's
    /// drain, jobs still running or a pull in flight) or `drained` (paused, nothing running).
    pub fn state(&self) -> &'static str {
        if self.draining {
            "stopping"
        } else if self.drain.is_some() {
            if self.paused && self.inflight == 0 {
                "drained"
            } else {
                "draining"
            }
        } else if self.engine_up {
            "serving"
        } else {
            "down"
        }
    }
}

/// An operator's drain of one worker, stored as JSON in `P:{pool}:drain` (`ssw drain`): it
/// outlives the worker's restarts until `ssw resume` removes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Who asked (`user@host`, or `rollout`).
    pub by: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// When (Unix ms).
    pub at_ms: EpochMillis,
}
