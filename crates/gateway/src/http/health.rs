//! `/healthz`, `/readyz`, `/metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::state::AppState;

/// Process alive.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

#[derive(Serialize)]
struct PoolReadiness {
    pool: String,
    ready: bool,
    live_workers: usize,
    serving_workers: usize,
    backlog: u64,
    pending: u64,
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    draining: bool,
    redis: &'static str,
    reply_stream: &'static str,
    pools: Vec<PoolReadiness>,
}

/// 200 only when Redis answers, this gateway's reply stream exists, every pool has a live
/// worker whose engine is up, and the gateway is not draining; the body says which part is
/// missing. Reused for `gateway.readiness_ttl` (draining is reported at once), so a flood of
/// probes costs Redis one round of scripts per period, not one per probe.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut cached = state.readiness.lock().await;
    if let Some((at, status, body)) = cached.as_ref()
        && at.elapsed() < state.config.gateway.readiness_ttl
        && !state.is_draining()
    {
        return (
            *status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body.clone(),
        )
            .into_response();
    }
    let (status, body) = readiness(&state).await;
    *cached = Some((tokio::time::Instant::now(), status, body.clone()));
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn readiness(state: &AppState) -> (StatusCode, bytes::Bytes) {
    let now = ssw_queue::now_ms();
    let mut pools = Vec::new();
    let mut redis_ok = true;
    for pool in state.pools.iter() {
        match state.redis.pool_stats(pool, now).await {
            Ok(stats) => pools.push(PoolReadiness {
                pool: pool.to_string(),
                ready: stats.serving() > 0,
                live_workers: stats.workers.len(),
                serving_workers: stats.serving(),
                backlog: stats.backlog,
                pending: stats.pending,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "readiness: redis unavailable");
                redis_ok = false;
                break;
            }
        }
    }
    let draining = state.is_draining();
    let replies = state.replies.is_open();
    let ready = redis_ok && replies && !draining && pools.iter().all(|p| p.ready);
    let body = Readiness {
        ready,
        draining,
        redis: if redis_ok { "ok" } else { "unavailable" },
        reply_stream: if replies { "ok" } else { "not created yet" },
        pools,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, serde_json::to_vec(&body).unwrap_or_default().into())
}

/// Prometheus text exposition.
pub async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ssw_telemetry::render(),
    )
        .into_response()
}
