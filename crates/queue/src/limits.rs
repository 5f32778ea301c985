//! Tenants' rate limits, over every gateway: requests and tokens per minute (token buckets) and
//! concurrent requests (leases), in the tenant's own hash slot (`{t:<tenant>}`), one script per
//! admission (RATE_LIMIT), one when the request ends (USAGE).

use std::time::Duration;

use redis::Value;

use crate::scripts::{RATE_LIMIT, RENEW_LEASES, USAGE};
use crate::{QueueError, Redis, resp};

/// A tenant's limits (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Requests per minute.
    pub requests_per_minute: u64,
    /// Tokens (prompt + completion) per minute.
    pub tokens_per_minute: u64,
    /// Requests in flight.
    pub max_concurrent: u64,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Concurrent requests.
    Concurrent,
}

impl Limit {
    /// The metric label and the word in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Concurrent => "concurrent",
        }
    }
}

/// What RATE_LIMIT decided, and the buckets after it (what `x-ratelimit-*` tells the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// The limit that refused the request; none: admitted and charged.
    pub refused: Option<Limit>,
    /// When to retry (refused only).
    pub retry_after: Duration,
    /// Requests left in the bucket.
    pub requests_left: u64,
    /// Until the request bucket is full again.
    pub requests_reset: Duration,
    /// Tokens left in the bucket.
    pub tokens_left: u64,
    /// Until the token bucket is full again.
    pub tokens_reset: Duration,
}

impl Redis {
    /// Checks and charges `tenant`'s limits for one request of `estimate` tokens (job `job`,
    /// whose concurrency lease runs until `lease_until_ms`).
    pub async fn rate_limit(
        &self,
        tenant: &str,
        limits: TenantLimits,
        estimate: u64,
        job: &str,
        lease_until_ms: u64,
        now_ms: u64,
    ) -> Result<RateDecision, QueueError> {
        let keys = self.keys();
        let mut inv = RATE_LIMIT.prepare_invoke();
        inv.key(keys.tenant_rpm(tenant))
            .key(keys.tenant_tpm(tenant))
            .key(keys.tenant_inflight(tenant))
            .arg(now_ms)
            .arg(limits.requests_per_minute)
            .arg(limits.tokens_per_minute)
            .arg(estimate)
            .arg(limits.max_concurrent)
            .arg(job)
            .arg(lease_until_ms);
        let v: Value = self.script(&inv).await?;
        let parts = resp::array(v)?;
        let int = |i: usize| parts.get(i).and_then(resp::int).unwrap_or(0).max(0) as u64;
        let refused = match parts.get(1).cloned().and_then(resp::string).as_deref() {
            _ if int(0) == 1 => None,
            Some("requests") => Some(Limit::Requests),
            Some("tokens") => Some(Limit::Tokens),
            Some("concurrent") => Some(Limit::Concurrent),
            other => return Err(QueueError::Malformed(format!("rate limit reply {other:?}"))),
        };
        Ok(RateDecision {
            refused,
            retry_after: Duration::from_millis(int(2)),
            requests_left: int(3),
            requests_reset: Duration::from_millis(int(4)),
            tokens_left: int(5),
            tokens_reset: Duration::from_millis(int(6)),
        })
    }

    /// Ends requests of `tenant` charged at admission: corrects its tokens by `delta` (used
    /// minus charged, over all of them; negative gives tokens back) and ends their concurrency
    /// leases.
    pub async fn settle_usage(
        &self,
        tenant: &str,
        tokens_per_minute: u64,
        delta: i64,
        jobs: &[String],
        now_ms: u64,
    ) -> Result<(), QueueError> {
        let keys = self.keys();
        let mut inv = USAGE.prepare_invoke();
        inv.key(keys.tenant_tpm(tenant))
            .key(keys.tenant_inflight(tenant))
            .arg(now_ms)
            .arg(tokens_per_minute)
            .arg(delta);
        for j in jobs {
            inv.arg(j);
        }
        let _: i64 = self.script(&inv).await?;
        Ok(())
    }

    /// Extends the concurrency leases of `jobs` (requests of `tenant` still in flight here)
    /// to `until_ms`.
    pub async fn renew_leases(
        &self,
        tenant: &str,
        jobs: &[&str],
        until_ms: u64,
        now_ms: u64,
    ) -> Result<(), QueueError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut inv = RENEW_LEASES.prepare_invoke();
        inv.key(self.keys().tenant_inflight(tenant))
            .arg(until_ms)
            .arg(now_ms);
        for j in jobs {
            inv.arg(*j);
        }
        let _: i64 = self.script(&inv).await?;
        Ok(())
    }
}
