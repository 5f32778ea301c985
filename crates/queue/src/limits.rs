//! Tenants' rate limits, over every gateway: requests and tokens per minute (token buckets),
//! requests and tokens per UTC day (quotas), and concurrent requests (slots each gateway holds
//! under a lease), in the tenant's own hash slot
//! (`{t:<tenant>}`). One script (ALLOWANCE) grants a gateway what a request needs and, for a
//! busy tenant, an allowance for the next ones; the same script takes back what was not used.

use std::time::Duration;

use redis::Value;

use crate::scripts::ALLOWANCE;
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
    /// Requests per UTC day.
    pub requests_per_day: u64,
    /// Tokens (prompt + completion) per UTC day.
    pub tokens_per_day: u64,
}

impl TenantLimits {
    /// Whether requests are counted (a limit per minute or a quota per day).
    pub fn counts_requests(&self) -> bool {
        self.requests_per_minute > 0 || self.requests_per_day > 0
    }

    /// Whether tokens are counted.
    pub fn counts_tokens(&self) -> bool {
        self.tokens_per_minute > 0 || self.tokens_per_day > 0
    }
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
    /// Requests per UTC day (a quota: `insufficient_quota`).
    RequestsPerDay,
    /// Tokens per UTC day (a quota).
    TokensPerDay,
}

impl Limit {
    /// The metric label and the word in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::Concurrent => "concurrent",
            Self::RequestsPerDay => "requests_day",
            Self::TokensPerDay => "tokens_day",
        }
    }

    /// Whether it is a daily quota (spent until 00:00 UTC) rather than a rate limit.
    pub fn is_quota(self) -> bool {
        matches!(self, Self::RequestsPerDay | Self::TokensPerDay)
    }
}

/// Requests, tokens and concurrency slots, as asked for, granted or given back (0 for a
/// limit the tenant does not have).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Amounts {
    /// Requests.
    pub requests: u64,
    /// Tokens.
    pub tokens: u64,
    /// Concurrency slots.
    pub slots: u64,
}

/// One ALLOWANCE call: what a gateway gives back and settles, and what it asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowanceCall {
    /// Requests given back (allowance not used).
    pub requests_back: u64,
    /// Tokens given back: allowance not used, plus the estimates charged minus the tokens
    /// used by requests that ended (negative: they used more).
    pub tokens_back: i64,
    /// Slots in use at this gateway (absolute; its spare ones are given back).
    pub slots_in_use: u64,
    /// What the request at hand needs (all or nothing).
    pub need: Amounts,
    /// What the gateway would like to hold beyond it (granted as far as the buckets allow).
    pub more: Amounts,
    /// The UTC day (days since the epoch) the day give-backs below belong to.
    pub day: u64,
    /// Requests given back to `day`'s quota count (allowance granted that day, not used).
    pub requests_back_day: u64,
    /// Tokens given back to `day`'s count: allowance granted that day not used, plus estimates
    /// minus usage of requests charged that day (negative: they used more).
    pub tokens_back_day: i64,
    /// When this gateway's lease on its slots runs out, ms.
    pub lease_until_ms: u64,
    /// Now, ms.
    pub now_ms: u64,
}

/// What ALLOWANCE decided, and the buckets after it (what `x-ratelimit-*` tells the client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// The limit that refused the need; none: granted (need included in `granted`).
    pub refused: Option<Limit>,
    /// When to retry (refused only).
    pub retry_after: Duration,
    /// What was granted, the need included.
    pub granted: Amounts,
    /// Requests left in the bucket.
    pub requests_left: u64,
    /// Until the request bucket is full again.
    pub requests_reset: Duration,
    /// Tokens left in the bucket.
    pub tokens_left: u64,
    /// Until the token bucket is full again.
    pub tokens_reset: Duration,
    /// Requests left of today's quota.
    pub requests_left_today: u64,
    /// Tokens left of today's quota.
    pub tokens_left_today: u64,
    /// Until the day's quotas start again (00:00 UTC).
    pub day_reset: Duration,
}

impl Redis {
    /// Gives back and settles what `call` says for `tenant` at gateway `instance`, and grants
    /// its need and what more the buckets allow (ALLOWANCE).
    pub async fn allowance(
        &self,
        tenant: &str,
        limits: TenantLimits,
        instance: &str,
        call: &AllowanceCall,
    ) -> Result<RateDecision, QueueError> {
        let keys = self.keys();
        let mut inv = ALLOWANCE.prepare_invoke();
        inv.key(keys.tenant_rpm(tenant))
            .key(keys.tenant_tpm(tenant))
            .key(keys.tenant_slots(tenant))
            .key(keys.tenant_slot_leases(tenant))
            .key(keys.tenant_day(tenant))
            .arg(call.now_ms)
            .arg(limits.requests_per_minute)
            .arg(limits.tokens_per_minute)
            .arg(limits.max_concurrent)
            .arg(instance)
            .arg(call.lease_until_ms)
            .arg(call.requests_back)
            .arg(call.tokens_back)
            .arg(call.slots_in_use)
            .arg(call.need.requests)
            .arg(call.need.tokens)
            .arg(call.need.slots)
            .arg(call.more.requests)
            .arg(call.more.tokens)
            .arg(call.more.slots)
            .arg(limits.requests_per_day)
            .arg(limits.tokens_per_day)
            .arg(call.day)
            .arg(call.requests_back_day)
            .arg(call.tokens_back_day);
        let v: Value = self.script(&inv).await?;
        let parts = resp::array(v)?;
        let int = |i: usize| parts.get(i).and_then(resp::int).unwrap_or(0).max(0) as u64;
        let refused = match parts.get(1).cloned().and_then(resp::string).as_deref() {
            _ if int(0) == 1 => None,
            Some("requests") => Some(Limit::Requests),
            Some("tokens") => Some(Limit::Tokens),
            Some("concurrent") => Some(Limit::Concurrent),
            Some("requests_day") => Some(Limit::RequestsPerDay),
            Some("tokens_day") => Some(Limit::TokensPerDay),
            other => return Err(QueueError::Malformed(format!("allowance reply {other:?}"))),
        };
        Ok(RateDecision {
            refused,
            retry_after: Duration::from_millis(int(2)),
            granted: Amounts {
                requests: int(3),
                tokens: int(4),
                slots: int(5),
            },
            requests_left: int(6),
            requests_reset: Duration::from_millis(int(7)),
            tokens_left: int(8),
            tokens_reset: Duration::from_millis(int(9)),
            requests_left_today: int(10),
            tokens_left_today: int(11),
            day_reset: Duration::from_millis(int(12)),
        })
    }
}
