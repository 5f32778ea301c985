//! Tenants' rate limits at the gateway: what a request is charged, how a refusal reads, the
//! `x-ratelimit-*` headers of every answer to a limited tenant, and the renewal of concurrency
//! leases. The counting itself is Redis's (RATE_LIMIT, USAGE), so limits hold over every
//! gateway.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use ssw_config::TenantConfig;
use ssw_protocol::error::ErrorCode;
use ssw_queue::limits::{Limit, RateDecision, TenantLimits};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::state::AppState;

/// Completion tokens charged for a request that sets no `max_tokens` (corrected when it ends).
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;

/// A request's estimated tokens: its prompt (about 4 bytes of body per token) and its
/// `max_tokens`, else [`DEFAULT_COMPLETION_ESTIMATE`]. Returns (total, prompt).
pub fn estimate(body_len: usize, max_tokens: Option<u64>) -> (u64, u64) {
    let prompt = (body_len as u64).div_ceil(4);
    (
        prompt + max_tokens.unwrap_or(DEFAULT_COMPLETION_ESTIMATE),
        prompt,
    )
}

/// The tenant's limits as RATE_LIMIT takes them.
pub fn of(t: &TenantConfig) -> TenantLimits {
    TenantLimits {
        requests_per_minute: t.requests_per_minute.unwrap_or(0),
        tokens_per_minute: t.tokens_per_minute.unwrap_or(0),
        max_concurrent: t.max_concurrent.unwrap_or(0),
    }
}

/// What `x-ratelimit-*` says on an answer to a limited tenant: its limits and the buckets
/// after this request.
#[derive(Clone, Copy, Debug)]
pub struct RateHeaders {
    /// The limits.
    pub limits: TenantLimits,
    /// RATE_LIMIT's answer.
    pub decision: RateDecision,
}

/// OpenAI's duration format for the reset headers (`"1s"`, `"6m0s"`, `"120ms"`).
fn reset(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms.div_ceil(1000)),
        _ => {
            let s = ms.div_ceil(1000);
            format!("{}m{}s", s / 60, s % 60)
        }
    }
}

impl RateHeaders {
    /// Sets OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the limits
    /// the tenant has.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let d = &self.decision;
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        if self.limits.requests_per_minute > 0 {
            set(
                "x-ratelimit-limit-requests",
                self.limits.requests_per_minute.to_string(),
            );
            set(
                "x-ratelimit-remaining-requests",
                d.requests_left.to_string(),
            );
            set("x-ratelimit-reset-requests", reset(d.requests_reset));
        }
        if self.limits.tokens_per_minute > 0 {
            set(
                "x-ratelimit-limit-tokens",
                self.limits.tokens_per_minute.to_string(),
            );
            set("x-ratelimit-remaining-tokens", d.tokens_left.to_string());
            set("x-ratelimit-reset-tokens", reset(d.tokens_reset));
        }
    }
}

/// The 429 for a refused request.
pub fn refusal(tenant: &str, limit: Limit, limits: TenantLimits, retry: Duration) -> ApiError {
    let what = match limit {
        Limit::Requests => format!("{} requests per minute", limits.requests_per_minute),
        Limit::Tokens => format!("{} tokens per minute", limits.tokens_per_minute),
        Limit::Concurrent => format!("{} concurrent requests", limits.max_concurrent),
    };
    let secs = retry.as_secs_f64().max(0.001);
    ApiError::new(
        ErrorCode::RateLimitExceeded,
        format!("tenant `{tenant}` is over its limit of {what}; retry in {secs:.3}s"),
    )
    .retry_after(retry.max(Duration::from_millis(1)))
}

/// Renews the concurrency leases of limited tenants' requests in flight here, every third of
/// `gateway.reply_ttl` (a lease runs for one TTL: a gateway that dies frees its leases within
/// it).
pub async fn renew_leases(state: AppState, shutdown: CancellationToken) {
    let ttl = state.config.gateway.reply_ttl;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = ssw_queue::now_ms();
        let until = now + ttl.as_millis() as u64;
        for (tenant, jobs) in state.held_leases() {
            let jobs: Vec<&str> = jobs.iter().map(String::as_str).collect();
            if let Err(e) = state.redis.renew_leases(&tenant, &jobs, until, now).await {
                tracing::warn!(error = %e, %tenant, "cannot renew concurrency leases");
            }
        }
    }
}

/// How often the usage of ended requests is settled (one USAGE call per tenant, not per
/// request): a lease outlives its request by at most this.
pub const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// Settles the usage of limited tenants' requests that ended, every [`SETTLE_EVERY`], and once
/// more at shutdown.
pub async fn settle(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SETTLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let batch: Vec<_> = state
            .settlements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let now = ssw_queue::now_ms();
        for (tenant, (tpm, delta, jobs)) in batch {
            if let Err(e) = state
                .redis
                .settle_usage(&tenant, tpm, delta, &jobs, now)
                .await
            {
                // The leases run out by themselves; the token bucket keeps the estimates.
                tracing::warn!(error = %e, %tenant, "cannot settle the tenant's usage");
            }
        }
        if last {
            return;
        }
    }
}

/// The lease a new request takes: one reply TTL from now.
pub fn lease_until(state: &AppState, now_ms: u64) -> u64 {
    now_ms + state.config.gateway.reply_ttl.as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_reads_like_openais() {
        assert_eq!(reset(Duration::from_millis(120)), "120ms");
        assert_eq!(reset(Duration::from_millis(1200)), "2s");
        assert_eq!(reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(reset(Duration::ZERO), "0ms");
    }

    #[test]
    fn a_request_is_charged_its_prompt_and_its_ceiling() {
        assert_eq!(estimate(400, Some(50)), (150, 100));
        assert_eq!(
            estimate(401, None),
            (101 + DEFAULT_COMPLETION_ESTIMATE, 101)
        );
    }
}
