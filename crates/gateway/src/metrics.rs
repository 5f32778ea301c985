//! The gateway's metrics (names in `ssw_telemetry::names`) and the queue sampler.

use std::time::Duration;

use ssw_protocol::chat::Usage;
use ssw_protocol::error::ErrorCode;
use ssw_queue::Redis;
use ssw_telemetry::names;
use tokio_util::sync::CancellationToken;

use ssw_protocol::tier::Tier;

/// A request's route and variant (`route`, `variant` labels): empty for a request sent to a
/// pool by name, `shadow` for a route's shadow copy. Bounded by the configured routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteLabels {
    /// The route's name.
    pub route: std::sync::Arc<str>,
    /// The variant's name.
    pub variant: std::sync::Arc<str>,
    /// The LoRA adapter asked for (empty: the pool's base model). Not a label of the route's
    /// metrics: the adapter metrics' (bounded by the routed adapters).
    pub adapter: std::sync::Arc<str>,
}

/// Counts a request answered (`code` is `ok` or an error code).
pub fn request_done(
    pool: &str,
    route: &RouteLabels,
    stream: bool,
    status: u16,
    code: &'static str,
) {
    metrics::counter!(
        names::GATEWAY_REQUESTS,
        "pool" => pool.to_owned(),
        "route" => route.route.to_string(),
        "variant" => route.variant.to_string(),
        "stream" => if stream { "true" } else { "false" },
        "status" => status.to_string(),
        "code" => code,
    )
    .increment(1);
    if !route.adapter.is_empty() {
        metrics::counter!(
            names::GATEWAY_ADAPTER_REQUESTS,
            "pool" => pool.to_owned(),
            "adapter" => route.adapter.to_string(),
            "code" => code,
        )
        .increment(1);
    }
    // A shadow copy refused or shed is no client's refusal (ssw_gateway_shadow_dropped_total).
    if &*route.variant == crate::shadow::SHADOW_VARIANT {
        return;
    }
    if let Some(reason) = ErrorCode::parse(code).and_then(rejection_reason) {
        metrics::counter!(names::GATEWAY_REJECTIONS, "pool" => pool.to_owned(), "reason" => reason)
            .increment(1);
    }
}

/// Counts a request that reached a queue lane (answered or refused there), by pool, tier,
/// tenant and code.
pub fn tier_request(pool: &str, tier: Tier, tenant: &str, code: &'static str) {
    metrics::counter!(
        names::GATEWAY_TIER_REQUESTS,
        "pool" => pool.to_owned(),
        "tier" => tier.as_str(),
        "tenant" => tenant.to_owned(),
        "code" => code,
    )
    .increment(1);
}

/// Counts what the Responses store did (`outcome`: stored, store_failed, continued,
/// not_found).
pub fn responses(outcome: &'static str) {
    metrics::counter!(names::GATEWAY_RESPONSES, "outcome" => outcome).increment(1);
}

/// Counts a route's shadow copy that never ran (`reason`: invalid, queue_full,
/// queue_unavailable, queue_timeout).
pub fn shadow_dropped(route: &str, reason: &'static str) {
    metrics::counter!(names::GATEWAY_SHADOW_DROPPED, "route" => route.to_owned(), "reason" => reason)
        .increment(1);
}

/// Counts a request a tenant's limit refused (`limit`: requests, tokens, concurrent, requests_day, tokens_day).
pub fn rate_limited(tenant: &str, limit: &'static str) {
    metrics::counter!(names::GATEWAY_RATE_LIMITED, "tenant" => tenant.to_owned(), "limit" => limit)
        .increment(1);
}

/// Counts a call to Redis for a limited tenant's allowance (`reason`: need or tick).
pub fn limit_call(tenant: &str, reason: &'static str) {
    metrics::counter!(names::GATEWAY_LIMIT_CALLS, "tenant" => tenant.to_owned(), "reason" => reason)
        .increment(1);
}

/// The `reason` label of a refusal, for codes that are refusals.
fn rejection_reason(code: ErrorCode) -> Option<&'static str> {
    Some(match code {
        ErrorCode::QueueFull => "queue_full",
        ErrorCode::RateLimitExceeded => "rate_limited",
        ErrorCode::InsufficientQuota => "quota",
        ErrorCode::QueueTimeout => "queue_timeout",
        ErrorCode::QueueUnavailable => "queue_unavailable",
        ErrorCode::QueueMemoryFull => "queue_memory_full",
        ErrorCode::ModelNotFound => "model_not_found",
        ErrorCode::MissingApiKey | ErrorCode::InvalidApiKey => "auth",
        ErrorCode::InvalidJson
        | ErrorCode::InvalidRequest
        | ErrorCode::PreviousResponseNotFound
        | ErrorCode::UnsupportedMediaType
        | ErrorCode::NotFound
        | ErrorCode::MethodNotAllowed => "bad_request",
        ErrorCode::RequestTooLarge => "too_large",
        ErrorCode::RequestTimeout => "request_timeout",
        ErrorCode::ServerBusy => "server_busy",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::UpstreamError
        | ErrorCode::EngineCrashed
        | ErrorCode::EngineRejected
        | ErrorCode::InternalError
        | ErrorCode::ClientTooSlow
        | ErrorCode::ResponseTooLarge => {
            return None;
        }
    })
}

/// Counts a reply event not delivered (`stale`, `duplicate`, `gap`).
pub fn event_dropped(reason: &'static str) {
    metrics::counter!(names::GATEWAY_EVENTS_DROPPED, "reason" => reason).increment(1);
}

/// Counts a request enqueued again after Redis lost it.
pub fn resubmitted(pool: &str) {
    metrics::counter!(names::GATEWAY_RESUBMITTED, "pool" => pool.to_owned()).increment(1);
}

/// Counts a client disconnect.
pub fn client_disconnected(pool: &str) {
    metrics::counter!(names::GATEWAY_DISCONNECTS, "pool" => pool.to_owned()).increment(1);
}

/// Adjusts the in-flight gauge.
pub fn inflight(pool: &str, delta: f64) {
    metrics::gauge!(names::GATEWAY_INFLIGHT, "pool" => pool.to_owned()).increment(delta);
}

fn stream_label(stream: bool) -> &'static str {
    if stream { "true" } else { "false" }
}

/// Time a job waited for a worker.
pub fn queue_wait(pool: &str, route: &RouteLabels, tier: Tier, d: Duration) {
    metrics::histogram!(names::GATEWAY_QUEUE_WAIT, "pool" => pool.to_owned(), "tier" => tier.as_str())
        .record(d.as_secs_f64());
    if !route.adapter.is_empty() {
        metrics::histogram!(
            names::GATEWAY_ADAPTER_QUEUE_WAIT,
            "pool" => pool.to_owned(),
            "adapter" => route.adapter.to_string(),
        )
        .record(d.as_secs_f64());
    }
}

/// Time to first token (streaming) or to the answer (non-streaming).
pub fn ttft(pool: &str, route: &RouteLabels, tier: Tier, stream: bool, d: Duration) {
    metrics::histogram!(
        names::GATEWAY_TTFT,
        "pool" => pool.to_owned(),
        "route" => route.route.to_string(),
        "variant" => route.variant.to_string(),
        "tier" => tier.as_str(),
        "stream" => stream_label(stream),
    )
    .record(d.as_secs_f64());
}

/// Time between streamed tokens.
pub fn inter_token(pool: &str, route: &RouteLabels, d: Duration) {
    metrics::histogram!(
        names::GATEWAY_ITL,
        "pool" => pool.to_owned(),
        "route" => route.route.to_string(),
        "variant" => route.variant.to_string(),
    )
    .record(d.as_secs_f64());
}

/// Whole request latency.
pub fn duration(pool: &str, route: &RouteLabels, stream: bool, d: Duration) {
    metrics::histogram!(
        names::GATEWAY_DURATION,
        "pool" => pool.to_owned(),
        "route" => route.route.to_string(),
        "variant" => route.variant.to_string(),
        "stream" => stream_label(stream),
    )
    .record(d.as_secs_f64());
}

/// Tokens of an answer.
pub fn tokens(pool: &str, route: &RouteLabels, usage: Usage) {
    let labels = [
        ("pool", pool.to_owned()),
        ("route", route.route.to_string()),
        ("variant", route.variant.to_string()),
    ];
    metrics::counter!(names::GATEWAY_PROMPT_TOKENS, &labels).increment(usage.prompt_tokens);
    metrics::counter!(names::GATEWAY_COMPLETION_TOKENS, &labels).increment(usage.completion_tokens);
    if !route.adapter.is_empty() {
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            metrics::counter!(
                names::GATEWAY_ADAPTER_TOKENS,
                "pool" => pool.to_owned(),
                "adapter" => route.adapter.to_string(),
                "kind" => kind,
            )
            .increment(n);
        }
    }
}

/// Samples every pool's queue and workers every `interval` (one task per gateway, so the cost
/// does not grow with scrapes or requests).
pub async fn sample_queues(
    redis: Redis,
    pools: std::sync::Arc<[std::sync::Arc<str>]>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = ssw_queue::now_ms();
        for pool in pools.iter() {
            let stats = match redis.pool_stats(pool, now).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "queue sample failed");
                    break;
                }
            };
            let p = pool.to_string();
            metrics::gauge!(names::QUEUE_BACKLOG, "pool" => p.clone()).set(stats.backlog as f64);
            metrics::gauge!(names::QUEUE_PENDING, "pool" => p.clone()).set(stats.pending as f64);
            metrics::gauge!(names::QUEUE_BYTES, "pool" => p.clone()).set(stats.queued_bytes as f64);
            let age = stats
                .oldest_waiting_ms
                .map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0);
            metrics::gauge!(names::QUEUE_OLDEST_AGE, "pool" => p.clone()).set(age);
            metrics::gauge!(names::POOL_LIVE_WORKERS, "pool" => p.clone())
                .set(stats.workers.len() as f64);
            metrics::gauge!(names::POOL_SERVING_WORKERS, "pool" => p.clone())
                .set(stats.serving() as f64);
            for (tier, t) in Tier::ALL.into_iter().zip(&stats.tiers) {
                metrics::gauge!(names::QUEUE_TIER_WAITING, "pool" => p.clone(), "tier" => tier.as_str())
                    .set(t.waiting as f64);
                let age = t
                    .oldest_waiting_ms
                    .map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0);
                metrics::gauge!(names::QUEUE_TIER_OLDEST_AGE, "pool" => p.clone(), "tier" => tier.as_str())
                    .set(age);
            }
            // Tenants come from the configuration (the hash's fields are written only for
            // admitted tenants), so the label set stays bounded.
            for (tenant, n) in &stats.tenants {
                metrics::gauge!(names::QUEUE_TENANT_WAITING, "pool" => p.clone(), "tenant" => tenant.clone())
                    .set(*n as f64);
            }
        }
    }
}
