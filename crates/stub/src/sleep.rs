//! vLLM's sleep mode and in-place weight reload, as `ssw rollout --engine-api --weights`
//! drives them (vllm-project/vllm docs/features/sleep_mode.md; research/next-features-anchors.md
//! §1b). vLLM serves these only with `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1`; the
//! stub always does.
//!
//! - `POST /sleep?level=1|2`: level 1 offloads the weights to CPU memory and drops the KV
//!   cache; level 2 drops both. A sleeping engine answers no generation (vLLM parks such
//!   requests until `wake_up`; the stub answers 503).
//! - `POST /wake_up[?tags=weights][&tags=kv_cache]`: wakes the parts named (no tag: all).
//! - `GET /is_sleeping`: `{"is_sleeping": bool}`.
//! - `POST /collective_rpc {"method": "reload_weights", "kwargs": {"weights_path": DIR}}`:
//!   loads the weights from DIR (taking `stub.load_time`), answering when done. vLLM only
//!   reloads weights of the same architecture; the served name and `/v1/models` stay as they
//!   were. Waking level 2's weights without a reload makes vLLM answer garbage (vllm#54235).
//! - `POST /reset_prefix_cache`: the cached prefixes of the old weights are invalid.
//!
//! `GET /stub/state` shows the weights loaded, the sleep level, and the calls above in order.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::answer::error_body;
use crate::{Stub, json_resp};

/// The sleep state: which parts are asleep.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sleep {
    /// The level it was put to sleep at (0: awake).
    pub level: u8,
    /// The weights are off the GPU (level 1: in CPU memory; level 2: discarded).
    pub weights: bool,
    /// The KV cache is dropped.
    pub kv_cache: bool,
}

impl Sleep {
    pub(crate) fn asleep(&self) -> bool {
        self.weights || self.kv_cache
    }
}

fn query_values<'a>(query: &'a Option<String>, key: &str) -> Vec<&'a str> {
    query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

fn log(stub: &Stub, call: String) {
    tracing::info!(%call, "stub: engine API");
    stub.model
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admin
        .push(call);
}

/// `POST /sleep`.
pub(crate) async fn sleep(State(stub): State<Arc<Stub>>, RawQuery(q): RawQuery) -> Response {
    let level: u8 = match query_values(&q, "level").first().map(|l| l.parse()) {
        None => 1,
        Some(Ok(l @ (1 | 2))) => l,
        Some(_) => {
            return json_resp(
                400,
                &error_body(400, "BadRequestError", "level must be 1 or 2"),
            );
        }
    };
    log(&stub, format!("sleep level={level}"));
    let mut m = stub.model.lock().unwrap_or_else(|p| p.into_inner());
    m.sleep = Sleep {
        level,
        weights: true,
        kv_cache: true,
    };
    if level == 2 {
        m.weights_valid = false;
    }
    json_resp(200, &json!({}))
}

/// `POST /wake_up`.
pub(crate) async fn wake_up(State(stub): State<Arc<Stub>>, RawQuery(q): RawQuery) -> Response {
    let tags = query_values(&q, "tags");
    log(
        &stub,
        format!(
            "wake_up {}",
            if tags.is_empty() {
                "all".to_owned()
            } else {
                tags.join(",")
            }
        ),
    );
    let mut m = stub.model.lock().unwrap_or_else(|p| p.into_inner());
    for t in &tags {
        match *t {
            "weights" => m.sleep.weights = false,
            "kv_cache" => m.sleep.kv_cache = false,
            other => {
                return json_resp(
                    400,
                    &error_body(400, "BadRequestError", &format!("unknown tag `{other}`")),
                );
            }
        }
    }
    if tags.is_empty() {
        m.sleep.weights = false;
        m.sleep.kv_cache = false;
    }
    if !m.sleep.asleep() {
        m.sleep.level = 0;
    }
    json_resp(200, &json!({}))
}

/// `GET /is_sleeping`.
pub(crate) async fn is_sleeping(State(stub): State<Arc<Stub>>) -> Response {
    let asleep = stub.served().sleep.asleep();
    json_resp(200, &json!({ "is_sleeping": asleep }))
}

/// `POST /collective_rpc`: `reload_weights` only.
pub(crate) async fn collective_rpc(State(stub): State<Arc<Stub>>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let method = v["method"].as_str().unwrap_or_default();
    if method != "reload_weights" {
        return json_resp(
            400,
            &error_body(
                400,
                "BadRequestError",
                &format!("stub: unsupported method `{method}`"),
            ),
        );
    }
    let Some(path) = v["kwargs"]["weights_path"].as_str().map(str::to_owned) else {
        return json_resp(
            400,
            &error_body(
                400,
                "BadRequestError",
                "reload_weights: kwargs.weights_path is required",
            ),
        );
    };
    if stub.served().sleep.weights {
        return json_resp(
            400,
            &error_body(
                400,
                "BadRequestError",
                "reload_weights: the weights are asleep (wake_up?tags=weights first)",
            ),
        );
    }
    log(&stub, format!("reload_weights {path}"));
    tokio::time::sleep(stub.cfg.load_time).await;
    let mut m = stub.model.lock().unwrap_or_else(|p| p.into_inner());
    m.weights = path;
    m.weights_valid = true;
    json_resp(200, &json!({ "results": [Value::Null] }))
}

/// `POST /reset_prefix_cache`.
pub(crate) async fn reset_prefix_cache(State(stub): State<Arc<Stub>>) -> Response {
    log(&stub, "reset_prefix_cache".into());
    json_resp(200, &json!({}))
}

/// `GET /stub/state`.
pub(crate) async fn state(State(stub): State<Arc<Stub>>) -> Response {
    let m = stub.served();
    json_resp(
        200,
        &json!({
            "model": m.name,
            "loading": m.loading,
            "weights": m.weights,
            "weights_valid": m.weights_valid,
            "sleep_level": m.sleep.level,
            "engine_api_calls": m.admin,
        }),
    )
}
