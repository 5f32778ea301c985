//! The worker's metrics (names in `ssw_telemetry::names`), its `/metrics` listener, and the
//! GPU monitor.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use axum::serve::ListenerExt;
use ssw_config::GpuMetrics;
use ssw_telemetry::names;
use tokio_util::sync::CancellationToken;

use crate::Ctx;

fn labels(ctx: &Ctx) -> [(&'static str, String); 2] {
    [("pool", ctx.pool.clone()), ("worker", ctx.id.clone())]
}

/// Counts a job's end.
pub fn job(ctx: &Ctx, outcome: &'static str) {
    debug_assert!(
        OUTCOMES.contains(&outcome),
        "{outcome} missing from OUTCOMES"
    );
    let [p, w] = labels(ctx);
    metrics::counter!(names::WORKER_JOBS, p.0 => p.1, w.0 => w.1, "outcome" => outcome)
        .increment(1);
}

/// Every `outcome` of [`job`] (docs/observability.md explains each).
pub const OUTCOMES: [&str; 14] = [
    "ok",
    "engine_rejected",
    "engine_error",
    "too_large",
    "requeued",
    "crash_requeued",
    "engine_crashed",
    "bounced",
    "cancelled",
    "expired",
    "orphaned",
    "orphaned_gateway",
    "lost",
    "reclaimed",
];

/// Exports every outcome's counter at 0 from the start: an alert on `increase()` then sees the
/// first event (a series born at 1 shows no increase).
pub fn init_jobs(ctx: &Ctx) {
    let [p, w] = labels(ctx);
    for outcome in OUTCOMES {
        metrics::counter!(names::WORKER_JOBS, p.0 => p.1.clone(), w.0 => w.1.clone(), "outcome" => outcome)
            .increment(0);
    }
}

/// Updates the slot gauges.
pub fn slots(ctx: &Ctx) {
    metrics::gauge!(names::WORKER_INFLIGHT, &labels(ctx)).set(f64::from(ctx.inflight()));
    metrics::gauge!(names::WORKER_FREE_SLOTS, &labels(ctx)).set(f64::from(ctx.free_slots()));
}

/// Records an engine request's duration.
pub fn engine_duration(ctx: &Ctx, d: Duration) {
    metrics::histogram!(names::WORKER_ENGINE_DURATION, &labels(ctx)).record(d.as_secs_f64());
}

/// The engine's model as an info gauge: 1 for the one served now, 0 for those served before
/// (a series that vanished would look like a scrape gap).
fn model(ctx: &Ctx) {
    let Some(now) = ctx.engine_state.model() else {
        return;
    };
    let now = (now.name, now.revision);
    let info = |(m, r): &(String, String), v: f64| {
        let [p, w] = labels(ctx);
        metrics::gauge!(names::WORKER_ENGINE_MODEL, p.0 => p.1, w.0 => w.1, "model" => m.clone(), "revision" => r.clone())
            .set(v);
    };
    {
        let mut last = ctx.model_exported.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() != Some(&now) {
            if let Some(before) = last.as_ref() {
                info(before, 0.0);
            }
            *last = Some(now.clone());
        }
    }
    info(&now, 1.0);
}

/// Copies the engine's state as last probed into gauges.
pub fn engine(ctx: &Ctx) {
    let l = labels(ctx);
    metrics::gauge!(names::WORKER_ENGINE_UP, &l).set(if ctx.engine_state.is_up() {
        1.0
    } else {
        0.0
    });
    model(ctx);
    if ctx.engine_state.has_adapters() {
        for (outcome, n) in ["loaded", "failed"]
            .into_iter()
            .zip(&ctx.engine_state.adapter_loads)
        {
            let [p, w] = labels(ctx);
            metrics::counter!(names::WORKER_ADAPTER_LOADS, p.0 => p.1, w.0 => w.1, "outcome" => outcome)
                .absolute(n.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    let load = ctx.engine_state.load();
    if let Some(v) = load.running {
        metrics::gauge!(names::WORKER_ENGINE_RUNNING, &l).set(v);
    }
    if let Some(v) = load.waiting {
        metrics::gauge!(names::WORKER_ENGINE_WAITING, &l).set(v);
    }
    if let Some(v) = load.kv_cache_usage {
        metrics::gauge!(names::WORKER_ENGINE_KV, &l).set(v);
    }
}

/// Counts a swap-in of `adapter` this worker caused.
pub fn adapter_swap(ctx: &Ctx, adapter: &str) {
    let [pool, worker] = labels(ctx);
    let l = [pool, worker, ("adapter", adapter.to_owned())];
    metrics::counter!(names::WORKER_ADAPTER_SWAPS, &l).increment(1);
}

/// Sets the drained gauge.
pub fn drained(ctx: &Ctx, drained: bool) {
    metrics::gauge!(names::WORKER_DRAINED, &labels(ctx)).set(if drained { 1.0 } else { 0.0 });
}

/// Serves `/metrics` and `/healthz` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(|| async { ssw_telemetry::render() }))
        .route("/healthz", get(|| async { "ok" }));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "worker metrics listening");
    }
    if let Err(e) = axum::serve(
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        app,
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}

/// Exports NVML readings of the GPUs `worker.gpu_metrics` selects, every 5 s.
pub async fn gpus(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let indices = match ctx.cfg.gpu_metrics {
        GpuMetrics::Off => return,
        GpuMetrics::Configured if ctx.cfg.gpus.is_empty() => return,
        GpuMetrics::Configured => ctx.cfg.gpus.clone(),
        GpuMetrics::All => Vec::new(),
    };
    // NVML loads a shared library and may block; keep it off the async threads.
    let loaded = tokio::task::spawn_blocking(ssw_telemetry::gpu::NvmlSource::load).await;
    let (source, error) = match loaded {
        Ok(Ok(nvml)) => (
            Some(Box::new(nvml) as Box<dyn ssw_telemetry::gpu::GpuSource>),
            None,
        ),
        Ok(Err(e)) => (None, Some(e)),
        Err(e) => (None, Some(e.to_string())),
    };
    ssw_telemetry::gpu::monitor(
        ctx.id.clone(),
        source,
        error,
        indices,
        Duration::from_secs(5),
        shutdown,
    )
    .await;
}
