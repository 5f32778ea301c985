//! Telemetry shared by every `ssw` process.
//!
//! # Layout
//! - [`names`]: every metric name, kind, labels and help text.
//! - this file: the Prometheus recorder (installed once per process), histogram buckets that
//!   fit LLM serving, build info and the liveness heartbeat.
//! - [`gpu`]: GPU metrics through NVML, behind [`gpu::GpuSource`].
//! - [`systemd`]: `sd_notify` readiness and watchdog.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub mod gpu;
pub mod names;
pub mod systemd;

/// Histogram buckets for latencies of LLM serving: a few milliseconds (queue hops, first tokens
/// of short prompts) to ten minutes (long generations, long queues).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0,
    160.0, 320.0, 600.0,
];

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The process-wide recorder: installed on first use, every metric described.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /metrics shows only this one"
            );
        }
        for m in names::ALL {
            match m.kind {
                names::Kind::Counter => metrics::describe_counter!(m.name, m.help),
                names::Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
                names::Kind::Histogram => {
                    metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
                }
            }
        }
        handle
    })
}

/// Records the build info and start time of this process, and keeps its heartbeat gauge fresh
/// (every 5 s) until `shutdown`. The same tick drains the recorder's histogram samples into their
/// buckets (`run_upkeep`): samples otherwise accumulate until `/metrics` is scraped, so a
/// process nobody scrapes would grow by every latency it records.
pub fn start_process_metrics(role: &'static str, shutdown: CancellationToken) {
    recorder();
    metrics::gauge!(names::BUILD_INFO, "role" => role, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    metrics::gauge!(names::PROCESS_START, "role" => role).set(unix_now());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    metrics::gauge!(names::HEARTBEAT, "role" => role).set(unix_now());
                    recorder().run_upkeep();
                }
            }
        }
    });
}

/// The Prometheus text exposition of this process.
pub fn render() -> String {
    recorder().render()
}
