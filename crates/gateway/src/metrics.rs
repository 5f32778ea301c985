//! Metric names (Prometheus conventions) and the process-wide recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `pool`, `stream`, `status` and `code` (`ok` or an error code).
pub const REQUESTS_TOTAL: &str = "ssw_gateway_requests_total";

/// The process-wide Prometheus recorder (installed once; metrics are global by design of the
/// `metrics` crate).
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (several roles in one test process); the
        // handle then renders only what this one records, which is still well-formed.
        let _ = metrics::set_global_recorder(recorder);
        metrics::describe_counter!(
            REQUESTS_TOTAL,
            "Chat-completion requests answered, by pool, stream, HTTP status and code."
        );
        handle
    })
}

/// Clients that went away before their answer was complete, by `pool`.
pub const CLIENT_DISCONNECTS_TOTAL: &str = "ssw_gateway_client_disconnects_total";

/// Counts a request answered.
pub fn request_done(pool: &str, stream: bool, status: u16, code: &'static str) {
    metrics::counter!(
        REQUESTS_TOTAL,
        "pool" => pool.to_owned(),
        "stream" => if stream { "true" } else { "false" },
        "status" => status.to_string(),
        "code" => code,
    )
    .increment(1);
}

/// Counts a client disconnect.
pub fn client_disconnected(pool: &str) {
    metrics::counter!(CLIENT_DISCONNECTS_TOTAL, "pool" => pool.to_owned()).increment(1);
}
