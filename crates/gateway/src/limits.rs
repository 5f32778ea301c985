//! Tenants' rate limits at the gateway: what a request is charged, how a refusal reads, the
//! `x-ratelimit-*` headers of every answer to a limited tenant, and the tenant's allowance here.
//!
//! The counting is Redis's (ALLOWANCE), so limits hold over every gateway. A request the
//! gateway's allowance for its tenant does not cover asks Redis for what it needs and, when the
//! tenant is busy, for an allowance sized to its demand of the last tick ([`TICK`]), at most
//! [`PREFETCH_SHARE`] of each limit; the next requests then take from it without a call. Every
//! tick the gateway gives back what it did not use, settles the tokens ended requests really
//! used, reports its slots in use (renewing their lease) and takes the next allowance, in one
//! call per tenant. A quiet tenant (demand under one request per tick) asks Redis for every
//! request, as exactly as before; a busy one costs one call per tick, not one per request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use ssw_config::TenantConfig;
use ssw_protocol::error::ErrorCode;
use ssw_queue::limits::{AllowanceCall, Amounts, Limit, RateDecision, TenantLimits};
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
        requests_per_day: t.requests_per_day.unwrap_or(0),
        tokens_per_day: t.tokens_per_day.unwrap_or(0),
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

/// OpenAI's duration format for the reset headers (`"1s"`, `"6m0s"`, `"120ms"`, `"13h59m2s"`).
fn reset(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms.div_ceil(1000)),
        60_000..3_600_000 => {
            let s = ms.div_ceil(1000);
            format!("{}m{}s", s / 60, s % 60)
        }
        // Go's duration format, which OpenAI's values follow.
        _ => {
            let s = ms.div_ceil(1000);
            format!("{}h{}m{}s", s / 3600, s / 60 % 60, s % 60)
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
        // Daily quotas: OpenAI has no headers for them; ours read like its rate-limit ones.
        let day = self.limits.requests_per_day > 0 || self.limits.tokens_per_day > 0;
        if self.limits.requests_per_day > 0 {
            set(
                "x-ssw-quota-limit-requests",
                self.limits.requests_per_day.to_string(),
            );
            set(
                "x-ssw-quota-remaining-requests",
                d.requests_left_today.to_string(),
            );
        }
        if self.limits.tokens_per_day > 0 {
            set(
                "x-ssw-quota-limit-tokens",
                self.limits.tokens_per_day.to_string(),
            );
            set(
                "x-ssw-quota-remaining-tokens",
                d.tokens_left_today.to_string(),
            );
        }
        if day {
            set("x-ssw-quota-reset", reset(d.day_reset));
        }
    }
}

/// The 429 for a refused request: `rate_limit_exceeded` over a rate limit,
/// `insufficient_quota` (OpenAI's code for it) when a daily quota is spent.
pub fn refusal(tenant: &str, limit: Limit, limits: TenantLimits, retry: Duration) -> ApiError {
    let what = match limit {
        Limit::Requests => format!(
            "its limit of {} requests per minute",
            limits.requests_per_minute
        ),
        Limit::Tokens => format!(
            "its limit of {} tokens per minute",
            limits.tokens_per_minute
        ),
        Limit::Concurrent => format!("its limit of {} concurrent requests", limits.max_concurrent),
        Limit::RequestsPerDay => {
            format!("its quota of {} requests per day", limits.requests_per_day)
        }
        Limit::TokensPerDay => format!("its quota of {} tokens per day", limits.tokens_per_day),
    };
    let secs = retry.as_secs_f64().max(0.001);
    let (code, when) = if limit.is_quota() {
        (ErrorCode::InsufficientQuota, "it starts again at 00:00 UTC")
    } else {
        (ErrorCode::RateLimitExceeded, "retry")
    };
    ApiError::new(
        code,
        format!("tenant `{tenant}` is over {what}; {when}, in {secs:.3}s"),
    )
    .retry_after(retry.max(Duration::from_millis(1)))
}

/// How often each tenant's allowance here is settled with Redis: what was not used goes back,
/// ended requests' real usage is settled, slots in use are reported (and their lease renewed),
/// and the next allowance is taken. A spare slot or unused allowance is held at most this long.
pub const TICK: Duration = Duration::from_millis(100);

/// The most a gateway holds ahead for a tenant, as a share of each limit: with several
/// gateways, at most this much of a limit per gateway sits unused for up to a [`TICK`]. A limit
/// under 20 (per minute, or concurrent) is never held ahead: every request asks Redis.
pub const PREFETCH_SHARE: u64 = 20; // 1/20 = 5 %

/// A limited tenant's allowance at this gateway: what it holds from Redis and has not used,
/// its requests in flight, and the usage to settle. The state machine, without I/O.
#[derive(Debug, Default)]
pub struct Local {
    /// Granted, not used yet (slots: spare ones, free to take).
    held: Amounts,
    /// Slots taken by requests in flight here.
    in_use: u64,
    /// Tokens to give back at the next call: estimates charged minus real usage, over requests
    /// that ended.
    settled: i64,
    /// The UTC day whose grants `held` holds (the day of the last grant).
    held_day: u64,
    /// The part of `settled` of requests charged on UTC day `settled_day` (what a day's quota
    /// gets back: a request charged yesterday and settled today does not lower today's count).
    settled_today: i64,
    settled_day: u64,
    /// Needs seen this tick, and in the last one (what the next allowance is sized to).
    demand: Amounts,
    last_demand: Amounts,
    /// Slots in use as Redis last heard it, and when it last heard from this gateway (ms).
    reported: u64,
    last_call_ms: u64,
    /// Redis's answer to the last call: the bucket levels the headers report.
    seen: Option<RateDecision>,
    /// Redis's last refusal, while it stands.
    refused: Option<Refused>,
}

/// Milliseconds in a day: daily quotas count over the UTC day.
const DAY_MS: u64 = 86_400_000;

/// The UTC day (days since the epoch) of `ms`.
pub fn utc_day(ms: u64) -> u64 {
    ms / DAY_MS
}

/// A refusal from Redis, repeated here without asking again until `until_ms`.
#[derive(Clone, Copy, Debug)]
struct Refused {
    decision: RateDecision,
    /// The refused request's tokens.
    tokens: u64,
    /// When the refused limit allows the request again (what `Retry-After` says).
    retry_at_ms: u64,
    /// Until when it stands here: the retry time, at most a [`TICK`] after the call.
    until_ms: u64,
}

/// What the allowance held here says about a request.
#[derive(Clone, Copy, Debug)]
pub enum Taken {
    /// Taken from the allowance: admitted, with the headers' view.
    Covered(RateDecision),
    /// Refused, as Redis just refused a request like it.
    Refused(RateDecision),
    /// Redis must be asked.
    Ask,
}

/// Whether what is `held` covers `need` (nothing `counted`: always).
fn covers(counted: bool, held: u64, need: u64) -> bool {
    !counted || held >= need
}

impl Local {
    /// Takes `need` from what is held, if that covers it (counting it as demand either way);
    /// refuses it here while Redis's last refusal stands (at most a [`TICK`]: what other
    /// gateways give back counts within one); else Redis must be asked.
    pub fn take(&mut self, limits: TenantLimits, need: Amounts, now_ms: u64) -> Taken {
        self.demand.requests += need.requests;
        self.demand.tokens += need.tokens;
        self.demand.slots += need.slots;
        let covered = covers(limits.counts_requests(), self.held.requests, need.requests)
            && covers(limits.counts_tokens(), self.held.tokens, need.tokens)
            && covers(limits.max_concurrent > 0, self.held.slots, need.slots);
        // Nothing heard from Redis yet: it decides (and reports the levels).
        if covered && self.seen.is_some() {
            self.held.requests -= need.requests.min(self.held.requests);
            self.held.tokens -= need.tokens.min(self.held.tokens);
            self.held.slots -= need.slots.min(self.held.slots);
            self.in_use += need.slots;
            if let Some(view) = self.view() {
                return Taken::Covered(view);
            }
        }
        match self.refused {
            // A token refusal (per minute or day) stands for requests at least as large only.
            Some(r)
                if now_ms < r.until_ms
                    && (!matches!(
                        r.decision.refused,
                        Some(Limit::Tokens | Limit::TokensPerDay)
                    ) || need.tokens >= r.tokens) =>
            {
                let view = self.view().unwrap_or(r.decision);
                Taken::Refused(RateDecision {
                    refused: r.decision.refused,
                    retry_after: Duration::from_millis(r.retry_at_ms.saturating_sub(now_ms).max(1)),
                    ..view
                })
            }
            _ => Taken::Ask,
        }
    }

    /// What a request needs of `limits`: one request, its estimate, one slot (0 for what the
    /// tenant has no limit or quota on).
    pub fn need(limits: TenantLimits, estimate: u64) -> Amounts {
        Amounts {
            requests: u64::from(limits.counts_requests()),
            tokens: if limits.counts_tokens() { estimate } else { 0 },
            slots: u64::from(limits.max_concurrent > 0),
        }
    }

    /// The allowance to ask for ahead, for an expected `demand`: at most [`PREFETCH_SHARE`]
    /// of each limit (of the smaller, with a limit per minute and a quota per day).
    fn ahead(limits: TenantLimits, demand: Amounts) -> Amounts {
        let share = |a: u64, b: u64| match (a, b) {
            (0, b) => b / PREFETCH_SHARE,
            (a, 0) => a / PREFETCH_SHARE,
            (a, b) => a.min(b) / PREFETCH_SHARE,
        };
        Amounts {
            requests: demand
                .requests
                .min(share(limits.requests_per_minute, limits.requests_per_day)),
            tokens: demand
                .tokens
                .min(share(limits.tokens_per_minute, limits.tokens_per_day)),
            slots: demand.slots.min(limits.max_concurrent / PREFETCH_SHARE),
        }
    }

    /// The demand expected by a request that missed: the last tick's, or this tick's so far
    /// if higher (`need`, already counted in it, not counted again).
    fn expected(&self, need: Amounts) -> Amounts {
        let (now, last) = (self.demand, self.last_demand);
        let d = |now: u64, need: u64, last: u64| now.saturating_sub(need).max(last);
        Amounts {
            requests: d(now.requests, need.requests, last.requests),
            tokens: d(now.tokens, need.tokens, last.tokens),
            slots: d(now.slots, need.slots, last.slots),
        }
    }

    /// The call for a request `take` did not cover: its need, the allowance beyond it, the
    /// usage settled so far; what is held stays held (and its slots stay counted).
    pub fn call_for_need(
        &mut self,
        limits: TenantLimits,
        need: Amounts,
        lease_until_ms: u64,
        now_ms: u64,
    ) -> AllowanceCall {
        let ahead = Self::ahead(limits, self.expected(need));
        let day = utc_day(now_ms);
        AllowanceCall {
            requests_back: 0,
            tokens_back: std::mem::take(&mut self.settled),
            day,
            requests_back_day: 0,
            tokens_back_day: self.take_settled_on(day),
            slots_in_use: self.in_use + self.held.slots,
            need,
            // What is still held counts: misses within a tick never pile up beyond the cap.
            more: Amounts {
                requests: ahead.requests.saturating_sub(self.held.requests),
                tokens: ahead.tokens.saturating_sub(self.held.tokens),
                slots: ahead.slots.saturating_sub(self.held.slots),
            },
            lease_until_ms,
            now_ms,
        }
    }

    /// The tick's call, if one is due: gives back everything held, settles, reports the slots
    /// in use and asks for the next tick's allowance. `renew_every`: how often a lease on slots
    /// in use must be renewed although nothing else changed.
    pub fn call_for_tick(
        &mut self,
        limits: TenantLimits,
        lease_until_ms: u64,
        now_ms: u64,
        renew_every: Duration,
    ) -> Option<AllowanceCall> {
        let more = Self::ahead(limits, self.demand);
        let renew = self.in_use > 0
            && now_ms.saturating_sub(self.last_call_ms) >= renew_every.as_millis() as u64;
        let idle = self.held == Amounts::default()
            && self.settled == 0
            && self.in_use == self.reported
            && more == Amounts::default();
        self.last_demand = std::mem::take(&mut self.demand);
        if idle && !renew {
            return None;
        }
        let held = std::mem::take(&mut self.held);
        let day = utc_day(now_ms);
        // What was granted before midnight goes back to the minute's buckets only.
        let today = if self.held_day == day {
            held
        } else {
            Amounts::default()
        };
        Some(AllowanceCall {
            requests_back: held.requests,
            tokens_back: held.tokens as i64 + std::mem::take(&mut self.settled),
            day,
            requests_back_day: today.requests,
            tokens_back_day: today.tokens as i64 + self.take_settled_on(day),
            slots_in_use: self.in_use,
            need: Amounts::default(),
            more,
            lease_until_ms,
            now_ms,
        })
    }

    /// Applies Redis's answer to `call` (made for `call.need`). Returns the headers' view.
    pub fn apply(&mut self, call: &AllowanceCall, d: RateDecision) -> RateDecision {
        self.refused = d.refused.map(|_| {
            let retry = d.retry_after.as_millis() as u64;
            Refused {
                decision: d,
                tokens: call.need.tokens,
                retry_at_ms: call.now_ms + retry,
                until_ms: call.now_ms + retry.min(TICK.as_millis() as u64),
            }
        });
        if d.refused.is_none() {
            let (g, n) = (d.granted, call.need);
            if g.requests > n.requests || g.tokens > n.tokens {
                // A grant in the tick that crosses midnight makes what is held today's (at most
                // a tick's allowance of yesterday's is given back to today: the safe side
                // would be neither, the error is bounded by PREFETCH_SHARE).
                self.held_day = utc_day(call.now_ms);
            }
            self.held.requests += g.requests.saturating_sub(n.requests);
            self.held.tokens += g.tokens.saturating_sub(n.tokens);
            self.held.slots += g.slots.saturating_sub(n.slots);
            self.in_use += n.slots;
        }
        self.reported = call.slots_in_use
            + if d.refused.is_none() {
                d.granted.slots
            } else {
                0
            };
        self.last_call_ms = call.now_ms;
        self.seen = Some(d);
        self.view().unwrap_or(d)
    }

    /// `call` failed, and whether Redis ran it is unknown. What it gave back stays given back:
    /// reusing it could admit more than a limit if Redis did run it, and if not Redis keeps it
    /// charged until the buckets refill (the safe side). A debt it settled (requests that used
    /// more tokens than charged) is kept for the next call: charging it twice is the safe side,
    /// dropping it is not. The slots Redis counts for this gateway are unknown: the next tick
    /// reports them.
    pub fn failed(&mut self, call: &AllowanceCall) {
        self.settled += call.tokens_back.min(0);
        if call.tokens_back_day < 0 {
            self.settle_on(call.day, call.tokens_back_day);
        }
        self.reported = u64::MAX;
    }

    /// A request charged on UTC day `day` that held `slots` ended, having used
    /// `estimate - settle` tokens: its slot is spare until the next tick, its usage is settled
    /// then (for the day's quota, only if it is still that day).
    pub fn release(&mut self, slots: u64, settle: i64, day: u64) {
        self.in_use -= slots.min(self.in_use);
        self.held.slots += slots;
        self.settled += settle;
        self.settle_on(day, settle);
    }

    /// Adds `settle` to what day `day`'s count gets back (a later day's starts afresh; an
    /// earlier day's is dropped: that count is over).
    fn settle_on(&mut self, day: u64, settle: i64) {
        if day == self.settled_day {
            self.settled_today += settle;
        } else if day > self.settled_day {
            self.settled_day = day;
            self.settled_today = settle;
        }
    }

    /// What day `day`'s count gets back, taken (nothing if that is not the day settled).
    fn take_settled_on(&mut self, day: u64) -> i64 {
        if self.settled_day == day {
            std::mem::take(&mut self.settled_today)
        } else {
            0
        }
    }

    /// The buckets as the tenant sees them from here: Redis's levels at the last call plus
    /// what this gateway holds.
    fn view(&self) -> Option<RateDecision> {
        self.seen.map(|d| RateDecision {
            requests_left: d.requests_left + self.held.requests,
            tokens_left: d.tokens_left + self.held.tokens,
            requests_left_today: d.requests_left_today + self.held.requests,
            tokens_left_today: d.tokens_left_today + self.held.tokens,
            ..d
        })
    }
}

/// A limited tenant at this gateway.
pub struct TenantAllowance {
    /// The tenant.
    pub name: Arc<str>,
    /// Its limits, as the routing settings in force say (they change without a restart).
    limits: Mutex<TenantLimits>,
    /// One ALLOWANCE call at a time: admissions that miss wait for the call in flight, and
    /// usually find that it brought enough.
    call: tokio::sync::Mutex<()>,
    local: Mutex<Local>,
}

impl TenantAllowance {
    fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its limits in force.
    pub fn limits(&self) -> TenantLimits {
        *self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request of this tenant charged on UTC day `day` ended: frees its slot (if it took
    /// one) and settles its tokens.
    pub fn release(&self, slots: u64, settle: i64, day: u64) {
        let settle = if self.limits().counts_tokens() {
            settle
        } else {
            0
        };
        self.local().release(slots, settle, day);
    }
}

/// The allowances of the limited tenants that sent requests here.
#[derive(Default)]
pub struct Allowances(Mutex<HashMap<Arc<str>, Arc<TenantAllowance>>>);

impl Allowances {
    /// The tenant's allowance (created empty on its first request), with `limits` in force
    /// (a routing version may have changed them).
    pub fn of(&self, name: &str, limits: TenantLimits) -> Arc<TenantAllowance> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = map.get(name) {
            *t.limits.lock().unwrap_or_else(|p| p.into_inner()) = limits;
            return t.clone();
        }
        let t = Arc::new(TenantAllowance {
            name: name.into(),
            limits: Mutex::new(limits),
            call: tokio::sync::Mutex::new(()),
            local: Mutex::new(Local::default()),
        });
        map.insert(name.into(), t.clone());
        t
    }

    fn all(&self) -> Vec<Arc<TenantAllowance>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

/// Charges one request of `tenant` needing `need`: from the allowance held here, else from
/// Redis. `Ok`: the headers' view (the request then holds `need.slots`); `Err(Ok)`: refused,
/// with Redis's levels; `Err(Err)`: Redis could not be asked.
pub async fn charge(
    state: &AppState,
    tenant: &TenantAllowance,
    need: Amounts,
) -> Result<RateDecision, Result<RateDecision, ssw_queue::QueueError>> {
    match tenant
        .local()
        .take(tenant.limits(), need, ssw_queue::now_ms())
    {
        Taken::Covered(view) => return Ok(view),
        Taken::Refused(view) => return Err(Ok(view)),
        Taken::Ask => {}
    }
    let _turn = tenant.call.lock().await;
    // The call this one waited for may have decided it (`take` counted the demand once; this
    // second look is not new demand).
    let now = ssw_queue::now_ms();
    {
        let mut local = tenant.local();
        let before = local.demand;
        let taken = local.take(tenant.limits(), need, now);
        local.demand = before;
        match taken {
            Taken::Covered(view) => return Ok(view),
            Taken::Refused(view) => return Err(Ok(view)),
            Taken::Ask => {}
        }
    }
    let call = tenant
        .local()
        .call_for_need(tenant.limits(), need, lease_until(state, now), now);
    let (refused, view) = ask(state, tenant, &call, "need").await.map_err(Err)?;
    if refused { Err(Ok(view)) } else { Ok(view) }
}

/// Makes `call` for `tenant` (counted under `reason`) and applies the answer: (refused, the
/// headers' view). The caller holds the tenant's call turn.
async fn ask(
    state: &AppState,
    tenant: &TenantAllowance,
    call: &AllowanceCall,
    reason: &'static str,
) -> Result<(bool, RateDecision), ssw_queue::QueueError> {
    crate::metrics::limit_call(&tenant.name, reason);
    match state
        .redis
        .allowance(&tenant.name, tenant.limits(), &state.instance, call)
        .await
    {
        Ok(d) => Ok((d.refused.is_some(), tenant.local().apply(call, d))),
        Err(e) => {
            tenant.local().failed(call);
            Err(e)
        }
    }
}

/// Settles every tenant's allowance here each [`TICK`], and once more at shutdown (giving
/// back all that is held; requests still in flight keep their slots until their lease ends).
/// The tenants' calls go out together; a tenant with a call in flight (a request's) is left to
/// the next tick.
pub async fn settle(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A lease runs one reply TTL; renewed three times within it.
    let renew_every = state.config.gateway.reply_ttl / 3;
    loop {
        let last = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let tenants = state.allowances.all();
        let calls = tenants
            .iter()
            .map(|tenant| settle_one(&state, tenant, renew_every, last));
        futures::future::join_all(calls).await;
        if last {
            return;
        }
    }
}

/// One tenant's tick (`last`: at shutdown, asking for nothing ahead).
async fn settle_one(state: &AppState, tenant: &TenantAllowance, renew_every: Duration, last: bool) {
    let _turn = if last {
        tenant.call.lock().await
    } else {
        match tenant.call.try_lock() {
            Ok(turn) => turn,
            Err(_) => return,
        }
    };
    let now = ssw_queue::now_ms();
    let Some(mut call) =
        tenant
            .local()
            .call_for_tick(tenant.limits(), lease_until(state, now), now, renew_every)
    else {
        return;
    };
    if last {
        call.more = Amounts::default();
    }
    if let Err(e) = ask(state, tenant, &call, "tick").await {
        tracing::warn!(error = %e, tenant = %tenant.name, "cannot settle the tenant's allowance");
    }
}

/// The lease on this gateway's slots: one reply TTL from now.
fn lease_until(state: &AppState, now_ms: u64) -> u64 {
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
        assert_eq!(reset(Duration::from_secs(50_342)), "13h59m2s");
    }

    const LIMITS: TenantLimits = TenantLimits {
        requests_per_minute: 1000,
        tokens_per_minute: 100_000,
        max_concurrent: 100,
        requests_per_day: 0,
        tokens_per_day: 0,
    };

    /// Redis's answer granting `granted`, with the buckets at `left` requests.
    fn grant(granted: Amounts, left: u64) -> RateDecision {
        RateDecision {
            refused: None,
            retry_after: Duration::ZERO,
            granted,
            requests_left: left,
            requests_reset: Duration::from_secs(1),
            tokens_left: 50_000,
            tokens_reset: Duration::from_secs(1),
            requests_left_today: 0,
            tokens_left_today: 0,
            day_reset: Duration::ZERO,
        }
    }

    fn amounts(requests: u64, tokens: u64, slots: u64) -> Amounts {
        Amounts {
            requests,
            tokens,
            slots,
        }
    }

    #[test]
    fn a_quiet_tenant_asks_redis_for_every_request_and_holds_nothing_ahead() {
        let mut l = Local::default();
        let need = Local::need(LIMITS, 100);
        assert_eq!(need, amounts(1, 100, 1));
        assert!(
            matches!(l.take(LIMITS, need, 0), Taken::Ask),
            "nothing held: Redis decides"
        );
        let call = l.call_for_need(LIMITS, need, 5_000, 0);
        assert_eq!(
            call.more,
            Amounts::default(),
            "no demand seen besides this one"
        );
        let view = l.apply(&call, grant(need, 999));
        assert_eq!(view.requests_left, 999);
        assert!(matches!(l.take(LIMITS, need, 0), Taken::Ask));
        // Its slot ends: spare until the tick, which gives it back with the settled tokens.
        l.release(1, 60, 0);
        let tick = l
            .call_for_tick(LIMITS, 5_000, 100, Duration::from_secs(5))
            .expect("something to give back");
        assert_eq!(
            (tick.requests_back, tick.tokens_back, tick.slots_in_use),
            (0, 60, 0)
        );
    }

    #[test]
    fn a_busy_tenant_takes_from_its_allowance_until_it_runs_out() {
        let mut l = Local::default();
        let need = Local::need(LIMITS, 100);
        // Last tick saw 30 requests: the next miss asks for as many ahead.
        l.last_demand = amounts(30, 3_000, 30);
        assert!(matches!(l.take(LIMITS, need, 0), Taken::Ask));
        let call = l.call_for_need(LIMITS, need, 5_000, 0);
        assert_eq!(
            call.more,
            amounts(30, 3_000, 5),
            "slots capped at 5 % of 100"
        );
        l.apply(&call, grant(amounts(31, 3_100, 6), 969));
        let mut covered = 0;
        while let Taken::Covered(view) = l.take(LIMITS, need, 0) {
            covered += 1;
            assert_eq!(
                view.requests_left,
                969 + 30 - covered,
                "held counts as left"
            );
        }
        assert_eq!(covered, 5, "the spare slots ran out first");
        assert_eq!(l.in_use, 6);
        // The tick gives back the 25 requests and 2 500 tokens not used, asks for the demand.
        let tick = l
            .call_for_tick(LIMITS, 5_000, 100, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            (tick.requests_back, tick.tokens_back, tick.slots_in_use),
            (25, 2_500, 6)
        );
        assert_eq!(
            tick.more,
            amounts(7, 700, 5),
            "this tick's demand, 7 requests"
        );
        assert_eq!(l.held, Amounts::default());
    }

    #[test]
    fn small_limits_are_never_held_ahead() {
        let small = TenantLimits {
            requests_per_minute: 19,
            tokens_per_minute: 0,
            max_concurrent: 2,
            ..TenantLimits::default()
        };
        let mut l = Local {
            last_demand: amounts(100, 0, 100),
            ..Local::default()
        };
        let need = Local::need(small, 100);
        assert_eq!(need, amounts(1, 0, 1), "no token limit: no tokens needed");
        l.take(small, need, 0);
        assert_eq!(l.call_for_need(small, need, 0, 0).more, Amounts::default());
    }

    #[test]
    fn a_refusal_stands_here_for_at_most_a_tick_and_only_for_requests_as_large() {
        let mut l = Local::default();
        let need = Local::need(LIMITS, 1_000);
        l.take(LIMITS, need, 0);
        let call = l.call_for_need(LIMITS, need, 5_000, 1_000);
        let no = RateDecision {
            refused: Some(Limit::Tokens),
            retry_after: Duration::from_secs(3),
            ..grant(Amounts::default(), 10)
        };
        l.apply(&call, no);
        match l.take(LIMITS, need, 1_050) {
            Taken::Refused(d) => {
                assert_eq!(d.refused, Some(Limit::Tokens));
                assert_eq!(d.retry_after, Duration::from_millis(2_950));
            }
            other => panic!("{other:?}"),
        }
        let smaller = Local::need(LIMITS, 10);
        assert!(
            matches!(l.take(LIMITS, smaller, 1_050), Taken::Ask),
            "it may fit"
        );
        assert!(
            matches!(l.take(LIMITS, need, 1_100), Taken::Ask),
            "a tick later, Redis is asked again"
        );
    }

    #[test]
    fn a_miss_keeps_what_is_held_counted_and_asks_only_for_the_rest_of_the_cap() {
        let mut l = Local {
            last_demand: amounts(30, 3_000, 30),
            ..Local::default()
        };
        let need = Local::need(LIMITS, 100);
        l.take(LIMITS, need, 0);
        let call = l.call_for_need(LIMITS, need, 5_000, 0);
        // 1 request, 100 tokens and 1 slot needed, 30 / 3 000 / 5 more ahead; 2 slots granted.
        l.apply(&call, grant(amounts(31, 3_100, 3), 969));
        // A request without tokens held for it (a big one) misses: Redis still counts the spare
        // slots held here, and the allowance asked ahead is what the cap leaves.
        let big = Local::need(LIMITS, 4_000);
        assert!(matches!(l.take(LIMITS, big, 0), Taken::Ask));
        let call = l.call_for_need(LIMITS, big, 5_000, 0);
        assert_eq!(call.slots_in_use, 3, "1 in use and 2 spare, all still held");
        assert_eq!(
            call.more,
            amounts(0, 0, 3),
            "30 requests, 3 000 tokens are held already"
        );
    }

    #[test]
    fn a_failed_call_keeps_the_debt_it_settled_and_reports_again() {
        let mut l = Local::default();
        let need = Local::need(LIMITS, 100);
        l.take(LIMITS, need, 0);
        let call = l.call_for_need(LIMITS, need, 5_000, 0);
        l.apply(&call, grant(need, 999));
        l.demand = Amounts::default();
        // The request used 400 tokens more than charged.
        l.release(1, -400, 0);
        let tick = l
            .call_for_tick(LIMITS, 5_000, 100, Duration::from_secs(5))
            .unwrap();
        assert_eq!((tick.tokens_back, tick.slots_in_use), (-400, 0));
        l.failed(&tick);
        let again = l
            .call_for_tick(LIMITS, 5_000, 200, Duration::from_secs(5))
            .expect("the slots Redis counts are unknown: report");
        assert_eq!(
            again.tokens_back, -400,
            "the debt is settled, not forgotten"
        );
    }

    #[test]
    fn an_idle_tick_calls_only_to_renew_the_lease_of_slots_in_use() {
        let mut l = Local::default();
        assert!(
            l.call_for_tick(LIMITS, 0, 0, Duration::from_secs(5))
                .is_none()
        );
        let need = Local::need(LIMITS, 100);
        l.take(LIMITS, need, 0);
        let call = l.call_for_need(LIMITS, need, 5_000, 1_000);
        l.apply(&call, grant(need, 999));
        l.demand = Amounts::default();
        assert!(
            l.call_for_tick(LIMITS, 0, 1_100, Duration::from_secs(5))
                .is_none(),
            "Redis knows the one slot in use"
        );
        let renew = l
            .call_for_tick(LIMITS, 11_000, 6_000, Duration::from_secs(5))
            .expect("the lease is renewed");
        assert_eq!((renew.slots_in_use, renew.lease_until_ms), (1, 11_000));
    }

    #[test]
    fn what_was_charged_before_midnight_goes_back_to_the_buckets_not_to_the_new_days_quota() {
        let daily = TenantLimits {
            requests_per_minute: 1_000,
            requests_per_day: 100_000,
            tokens_per_day: 10_000_000,
            ..TenantLimits::default()
        };
        let before = DAY_MS - 50;
        let mut l = Local {
            last_demand: amounts(30, 3_000, 0),
            ..Local::default()
        };
        let need = Local::need(daily, 100);
        l.take(daily, need, before);
        let call = l.call_for_need(daily, need, 0, before);
        l.apply(&call, grant(amounts(31, 3_100, 0), 900));
        l.demand = Amounts::default();
        // A request charged yesterday ends after midnight, having used 20 of its 100 tokens.
        l.release(0, 80, utc_day(before));
        let tick = l
            .call_for_tick(daily, 0, DAY_MS + 50, Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            (tick.requests_back, tick.tokens_back),
            (30, 3_080),
            "the buckets get all"
        );
        assert_eq!(tick.day, 1);
        assert_eq!(
            (tick.requests_back_day, tick.tokens_back_day),
            (0, 0),
            "today's count owes yesterday nothing"
        );
        // Today's own grants and settlements do go back to today.
        l.release(0, 40, 1);
        let call = l.call_for_need(daily, need, 0, DAY_MS + 60);
        assert_eq!(call.tokens_back_day, 40);
    }

    #[test]
    fn a_quota_alone_counts_requests_and_tokens_and_caps_what_is_held_ahead() {
        let daily = TenantLimits {
            requests_per_day: 100_000,
            tokens_per_day: 2_000,
            ..TenantLimits::default()
        };
        assert_eq!(Local::need(daily, 50), amounts(1, 50, 0));
        // With a limit per minute too, the smaller of the two caps the allowance ahead.
        let both = TenantLimits {
            requests_per_minute: 600,
            ..daily
        };
        assert_eq!(
            Local::ahead(both, amounts(1_000, 1_000, 0)),
            amounts(30, 100, 0)
        );
        let no = refusal(
            "npc",
            Limit::TokensPerDay,
            daily,
            Duration::from_secs(3_600),
        );
        assert_eq!(no.code, ErrorCode::InsufficientQuota);
        assert_eq!(no.retry_after, Some(Duration::from_secs(3_600)));
        assert!(
            no.message.contains("quota of 2000 tokens per day"),
            "{}",
            no.message
        );
        let mut h = HeaderMap::new();
        RateHeaders {
            limits: daily,
            decision: RateDecision {
                requests_left_today: 7,
                day_reset: Duration::from_secs(3_600),
                ..grant(Amounts::default(), 0)
            },
        }
        .apply(&mut h);
        assert_eq!(h["x-ssw-quota-remaining-requests"], "7");
        assert_eq!(h["x-ssw-quota-reset"], "1h0m0s");
        assert!(
            !h.contains_key("x-ratelimit-limit-requests"),
            "no limit per minute"
        );
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
