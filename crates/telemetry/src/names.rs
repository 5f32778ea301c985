//! Every metric name the platform exports, in one place (Prometheus conventions: `_total`
//! counters, `_seconds`/`_bytes` units, bounded labels only). [`ALL`] feeds the descriptions,
//! docs/observability.md and the test that checks the dashboard and alert rules.

/// What kind of series a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic counter.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Histogram (`_bucket`, `_sum`, `_count` series).
    Histogram,
}

/// A metric: name, kind, labels, help text.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Exported name.
    pub name: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Label names.
    pub labels: &'static [&'static str],
    /// Help text.
    pub help: &'static str,
}

macro_rules! metrics {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $( $(#[$doc])* pub const $id: &str = $name; )*
        /// Every metric, for descriptions, docs and checks.
        pub const ALL: &[Metric] = &[
            $( Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help }, )*
        ];
    };
}

metrics! {
    /// Process identity: 1, labelled with role and version.
    BUILD_INFO = "ssw_build_info", Gauge, ["role", "version"], "Always 1; labels carry the role and the ssw version.";
    /// Process start (Unix seconds).
    PROCESS_START = "ssw_process_start_time_seconds", Gauge, ["role"], "Unix time the process started.";
    /// Liveness: last time the process's sampler ran (Unix seconds).
    HEARTBEAT = "ssw_heartbeat_timestamp_seconds", Gauge, ["role"], "Unix time of the process's last liveness tick.";

    /// Requests answered by the gateway.
    GATEWAY_REQUESTS = "ssw_gateway_requests_total", Counter, ["pool", "route", "variant", "stream", "status", "code"], "Chat-completion requests answered, by pool, streaming or not, HTTP status and code (ok or an error code; 499 client_closed when the client left). Routed requests carry route and variant (empty for a request sent to a pool by name; variant shadow for a route's shadow copies).";
    /// Requests refused before or instead of running.
    GATEWAY_REJECTIONS = "ssw_gateway_rejections_total", Counter, ["pool", "reason"], "Requests refused, by reason: queue_full, rate_limited, quota, queue_timeout, queue_unavailable, queue_memory_full, model_not_found, auth, bad_request, too_large, request_timeout, server_busy, shutting_down.";
    /// Requests that reached a queue lane, by tier and tenant.
    GATEWAY_TIER_REQUESTS = "ssw_gateway_tier_requests_total", Counter, ["pool", "tier", "tenant", "code"], "Requests admitted to a pool's lanes, by pool, service tier, tenant (configured tenants only) and code (ok, or the error code they ended with).";
    /// Requests a tenant's rate limit refused.
    GATEWAY_RATE_LIMITED = "ssw_gateway_rate_limited_total", Counter, ["tenant", "limit"], "Requests answered 429 rate_limit_exceeded or insufficient_quota, by tenant and the limit that refused them: requests, tokens (per minute), concurrent, requests_day or tokens_day (quotas).";
    /// Calls to Redis for tenants' rate limits.
    GATEWAY_LIMIT_CALLS = "ssw_gateway_rate_limit_calls_total", Counter, ["tenant", "reason"], "Calls to Redis for a limited tenant's allowance (ALLOWANCE): need (a request the allowance held here did not cover) or tick (the 100 ms settlement). Against ssw_gateway_tier_requests_total, the share of requests that asked Redis.";
    /// Routes sent back to their control by their guard.
    GATEWAY_ROUTE_ROLLBACKS = "ssw_gateway_route_rollbacks_total", Counter, ["route", "variant", "reason"], "Routes sent back to their control by their guard: the variant taken out and why (error_rate or ttft_p95_ratio). The log line and the published version's reason state the evidence.";
    /// The Responses API's stored responses.
    GATEWAY_RESPONSES = "ssw_gateway_responses_total", Counter, ["outcome"], "The gateway's store of /v1/responses answers: stored (kept in Redis for gateway.responses_ttl), store_failed (Redis refused it: a later previous_response_id or GET finds nothing), continued (a request's previous_response_id expanded into its input), not_found (a previous_response_id, GET or DELETE that found nothing of the tenant's).";
    /// Shadow copies that never ran.
    GATEWAY_SHADOW_DROPPED = "ssw_gateway_shadow_dropped_total", Counter, ["route", "reason"], "A route's shadow copies that never ran: invalid (the shadow pool refuses the request's parameters), queue_full (its shadow lane or the pool is full: shed first), queue_unavailable, queue_timeout (no worker was free for it within 30 s). Copies that ran are in ssw_gateway_requests_total{variant=\"shadow\"}.";
    /// Routing versions taken or refused.
    GATEWAY_ROUTING_RELOADS = "ssw_gateway_routing_reloads_total", Counter, ["result"], "Routing settings put in force or refused: applied (a version published in Redis), file (the config file re-read on SIGHUP), invalid (a published version this gateway cannot use; it keeps the one in force), file_invalid (a re-read file it cannot use).";
    /// The routing version in force.
    GATEWAY_ROUTING_VERSION = "ssw_gateway_routing_version", Gauge, [], "The routing version in force at this gateway (0: its config file's settings; else the version published with ssw routes apply). Gateways that differ for long have refused a version: ssw routes show says why.";
    /// Reply events a gateway did not deliver.
    GATEWAY_EVENTS_DROPPED = "ssw_gateway_reply_events_dropped_total", Counter, ["reason"], "Reply events not delivered to a request: stale (from a run its job was taken away from), duplicate (sent twice), gap (events before it were lost: the request fails).";
    /// Requests re-enqueued after Redis lost them.
    GATEWAY_RESUBMITTED = "ssw_gateway_requests_resubmitted_total", Counter, ["pool"], "Requests the gateway enqueued again because Redis restarted and lost them before any answer reached the client.";
    /// Clients that left early.
    GATEWAY_DISCONNECTS = "ssw_gateway_client_disconnects_total", Counter, ["pool"], "Clients that disconnected before their answer was complete (the job is cancelled).";
    /// Requests in flight.
    GATEWAY_INFLIGHT = "ssw_gateway_inflight_requests", Gauge, ["pool"], "Requests admitted and not yet answered.";
    /// Open client connections.
    GATEWAY_OPEN_CONNECTIONS = "ssw_gateway_open_connections", Gauge, [], "Client connections open on the public listener.";
    /// Connections refused at `gateway.max_connections`.
    GATEWAY_CONNECTIONS_REFUSED = "ssw_gateway_connections_refused_total", Counter, [], "Connections answered 503 and closed because gateway.max_connections were open.";
    /// Connections the gateway closed on a timeout.
    GATEWAY_CONNECTIONS_CLOSED = "ssw_gateway_connections_closed_total", Counter, ["reason"], "Connections the gateway closed: idle_timeout, header_timeout (slow request head), write_timeout (client not reading).";
    /// Requests refused for want of body budget.
    GATEWAY_BODY_BUDGET_REFUSED = "ssw_gateway_body_budget_refused_total", Counter, [], "Requests answered 503 server_busy because gateway.body_budget stayed spent for gateway.body_wait.";
    /// Time from enqueue to a worker's claim.
    GATEWAY_QUEUE_WAIT = "ssw_gateway_queue_wait_seconds", Histogram, ["pool", "tier"], "Time a job waited in the queue before a worker claimed it, by pool and service tier.";
    /// Time to first token.
    GATEWAY_TTFT = "ssw_gateway_time_to_first_token_seconds", Histogram, ["pool", "route", "variant", "tier", "stream"], "Time from request arrival to the first token (streaming) or to the whole answer (non-streaming), by pool and service tier. Routed requests carry route and variant (empty for a request sent to a pool by name; variant shadow for a route's shadow copies).";
    /// Time between streamed tokens.
    GATEWAY_ITL = "ssw_gateway_inter_token_latency_seconds", Histogram, ["pool", "route", "variant"], "Time between consecutive streamed chunks, divided by the SSE events each carries. Routed requests carry route and variant (empty for a request sent to a pool by name; variant shadow for a route's shadow copies).";
    /// Whole request latency.
    GATEWAY_DURATION = "ssw_gateway_request_duration_seconds", Histogram, ["pool", "route", "variant", "stream"], "Time from request arrival to the end of the answer. Routed requests carry route and variant (empty for a request sent to a pool by name; variant shadow for a route's shadow copies).";
    /// Prompt tokens.
    GATEWAY_PROMPT_TOKENS = "ssw_gateway_prompt_tokens_total", Counter, ["pool", "route", "variant"], "Prompt tokens, from the engines' usage reports. Routed requests carry route and variant (empty for a request sent to a pool by name; variant shadow for a route's shadow copies).";
    /// Completion tokens.
    GATEWAY_COMPLETION_TOKENS = "ssw_gateway_completion_tokens_total", Counter, ["pool", "route", "variant"], "Completion tokens, from the engines' usage reports (streams need stream_options.include_usage). Routed requests carry route and variant (empty for a request sent to a pool by name; variant shadow for a route's shadow copies).";
    /// Requests for a LoRA adapter.
    GATEWAY_ADAPTER_REQUESTS = "ssw_gateway_adapter_requests_total", Counter, ["pool", "adapter", "code"], "Requests for a pool's LoRA adapter (by name, as a route's variant, or with x-ssw-pool), by outcome (code: ok or an error code). Adapters are the routed ones (configuration and routing versions).";
    /// Tokens of a LoRA adapter's answers.
    GATEWAY_ADAPTER_TOKENS = "ssw_gateway_adapter_tokens_total", Counter, ["pool", "adapter", "kind"], "Tokens of a LoRA adapter's requests, from the engines' usage reports (kind: prompt or completion).";
    /// Queue wait of a LoRA adapter's jobs.
    GATEWAY_ADAPTER_QUEUE_WAIT = "ssw_gateway_adapter_queue_wait_seconds", Histogram, ["pool", "adapter"], "Time a LoRA adapter's job waited in the queue before a worker claimed it (adapter-aware pulling holds back adapters the engines do not hold, up to pools.<p>.adapter_wait).";

    /// Jobs waiting.
    QUEUE_BACKLOG = "ssw_queue_backlog", Gauge, ["pool"], "Jobs waiting for a worker (sampled by each gateway).";
    /// Jobs claimed, unfinished.
    QUEUE_PENDING = "ssw_queue_pending", Gauge, ["pool"], "Jobs claimed by a worker and not finished.";
    /// Bytes of job bodies queued.
    QUEUE_BYTES = "ssw_queue_bytes", Gauge, ["pool"], "Bytes of job bodies on the pool's stream, waiting or running (limited by max_queue_bytes).";
    /// Oldest waiting job's age.
    QUEUE_OLDEST_AGE = "ssw_queue_oldest_age_seconds", Gauge, ["pool"], "Age of the oldest job waiting for a worker (0 when none).";
    /// Waiting jobs per tier.
    QUEUE_TIER_WAITING = "ssw_queue_tier_waiting", Gauge, ["pool", "tier"], "Jobs waiting for a worker, by pool and service tier.";
    /// Oldest waiting job per tier.
    QUEUE_TIER_OLDEST_AGE = "ssw_queue_tier_oldest_age_seconds", Gauge, ["pool", "tier"], "Age of the oldest job waiting in the tier (0 when none).";
    /// Waiting jobs per tenant.
    QUEUE_TENANT_WAITING = "ssw_queue_tenant_waiting", Gauge, ["pool", "tenant"], "Jobs of the tenant waiting for a worker in the pool (what tenants.<t>.max_queued limits).";
    /// Live workers.
    POOL_LIVE_WORKERS = "ssw_pool_live_workers", Gauge, ["pool"], "Workers whose heartbeat is fresh.";
    /// Workers able to take jobs.
    POOL_SERVING_WORKERS = "ssw_pool_serving_workers", Gauge, ["pool"], "Live workers whose engine is up and that are not draining or drained (ssw drain).";

    /// Jobs by outcome.
    WORKER_JOBS = "ssw_worker_jobs_total", Counter, ["pool", "worker", "outcome"], "Jobs ended, by outcome: ok, engine_rejected, engine_error, too_large, requeued, crash_requeued (the request may have crashed the engine), engine_crashed (it did, on every replica allowed), bounced (handed to another replica after crashing this one), cancelled, expired, orphaned (its worker died mid-answer), orphaned_gateway (its gateway died), lost (taken over by another worker), reclaimed (taken over from a dead worker).";
    /// Jobs running.
    WORKER_INFLIGHT = "ssw_worker_inflight_jobs", Gauge, ["pool", "worker"], "Jobs running on this worker.";
    /// Free slots.
    WORKER_FREE_SLOTS = "ssw_worker_free_slots", Gauge, ["pool", "worker"], "max_inflight minus jobs running.";
    /// Engine health.
    WORKER_ENGINE_UP = "ssw_worker_engine_up", Gauge, ["pool", "worker"], "1 when the engine's /health answered 200 at the last probe.";
    /// Engine request latency.
    WORKER_ENGINE_DURATION = "ssw_worker_engine_request_duration_seconds", Histogram, ["pool", "worker"], "Time from sending a job to the engine to the end of its answer.";
    /// Engine's running requests.
    WORKER_ENGINE_RUNNING = "ssw_worker_engine_requests_running", Gauge, ["pool", "worker"], "The engine's vllm:num_requests_running as last read.";
    /// Engine's waiting requests.
    WORKER_ENGINE_WAITING = "ssw_worker_engine_requests_waiting", Gauge, ["pool", "worker"], "The engine's vllm:num_requests_waiting as last read.";
    /// Engine's KV-cache usage.
    WORKER_ENGINE_KV = "ssw_worker_engine_kv_cache_usage_ratio", Gauge, ["pool", "worker"], "The engine's KV-cache usage (0-1) as last read (vllm:kv_cache_usage_perc, or the older vllm:gpu_cache_usage_perc).";

    /// The engine's model.
    WORKER_ENGINE_MODEL = "ssw_worker_engine_model_info", Gauge, ["pool", "worker", "model", "revision"], "1 for the model the engine serves now (its /v1/models id, and a revision: a hash of its model card); 0 for models it served earlier in this worker's life.";
    /// Adapter swap-ins a worker caused.
    WORKER_ADAPTER_SWAPS = "ssw_worker_adapter_swaps_total", Counter, ["pool", "worker", "adapter"], "Jobs a worker sent its engine for a LoRA adapter the engine did not hold (by the worker's bookkeeping of its engine's max_loras slots and the engine's vllm:lora_requests_info): a swap-in, by adapter (the pool's routed adapters).";
    /// Routed adapters a worker loaded on its engine because the engine lacked them.
    WORKER_ADAPTER_LOADS = "ssw_worker_adapter_loads_total", Counter, ["pool", "worker", "outcome"], "Routed LoRA adapters a worker loaded on its engine because the engine did not list them (an engine restarted after ssw adapters load): outcome loaded or failed (a failed one's requests fail on that engine).";
    /// Operator's drain.
    WORKER_DRAINED = "ssw_worker_drained", Gauge, ["pool", "worker"], "1 while an operator's drain (ssw drain, ssw rollout) keeps the worker from pulling jobs.";

    /// Whether GPU metrics can be read.
    GPU_AVAILABLE = "ssw_gpu_metrics_available", Gauge, ["worker"], "1 when NVML could be loaded and GPUs read; 0 without an NVIDIA driver.";
    /// GPU utilisation.
    GPU_UTILIZATION = "ssw_gpu_utilization_ratio", Gauge, ["gpu", "uuid"], "Share of the last sample period a kernel ran on the GPU (0-1).";
    /// GPU memory used.
    GPU_MEMORY_USED = "ssw_gpu_memory_used_bytes", Gauge, ["gpu", "uuid"], "GPU memory allocated.";
    /// GPU memory total.
    GPU_MEMORY_TOTAL = "ssw_gpu_memory_total_bytes", Gauge, ["gpu", "uuid"], "GPU memory installed.";
    /// GPU temperature.
    GPU_TEMPERATURE = "ssw_gpu_temperature_celsius", Gauge, ["gpu", "uuid"], "GPU core temperature.";
    /// GPU power.
    GPU_POWER = "ssw_gpu_power_watts", Gauge, ["gpu", "uuid"], "GPU power draw.";
}

/// Whether `name` is a series this code exports (a name from [`ALL`], or a histogram's
/// `_bucket`/`_sum`/`_count` series).
pub fn exported(name: &str) -> bool {
    ALL.iter().any(|m| {
        m.name == name
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(m.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "duplicate {}", m.name);
            assert!(m.name.starts_with("ssw_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            assert!(
                !m.labels.iter().any(|l| l.contains("request") || *l == "id"),
                "unbounded label on {}",
                m.name
            );
        }
        assert!(exported("ssw_gateway_queue_wait_seconds_bucket"));
        assert!(!exported("ssw_gateway_requests_total_bucket"));
        assert!(!exported("ssw_nope"));
    }

    #[test]
    fn docs_observability_lists_every_metric_with_its_labels() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/observability.md");
        let doc = std::fs::read_to_string(path).unwrap_or_default();
        for m in ALL {
            let kind = format!("{:?}", m.kind).to_lowercase();
            let labels = if m.labels.is_empty() {
                "—".to_owned()
            } else {
                m.labels.join(", ")
            };
            let row = format!("| `{}` | {kind} | {labels} | {} |", m.name, m.help);
            assert!(
                doc.contains(&row),
                "docs/observability.md lacks the row\n{row}"
            );
        }
    }
}
