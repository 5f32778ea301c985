//! Routes' guards: automatic fallback to the control variant.
//!
//! Every gateway counts, per guarded route and variant, its requests, its server errors (5xx)
//! and its time-to-first-token histogram, and adds them every [`FLUSH`] to the route's stats in
//! Redis, one hash per [`SLICE`] of time (`P:{r:<route>}:stats:<slice>`, expiring after the
//! window). One gateway at a time — the holder of the route's lease (`P:{r:<route>}:guard`,
//! `SET NX PX`) — sums the slices of the guard's window every [`EVALUATE`] and compares each
//! non-control variant with the control (the route's first variant): an error rate above
//! `max_error_rate`, or a TTFT p95 above `max_ttft_p95_ratio` × the control's, with at least
//! `min_requests` requests of both in the window, is a breach. On a breach it publishes a new
//! routing version in which the route sends everyone to the control (author `guard`, the
//! evidence as the reason): every gateway takes it within a second, it survives restarts like
//! any published version, `ssw_gateway_route_rollbacks_total` counts it (an alert fires) and
//! the log states the evidence. Taking the candidate back in is an operator's `ssw routes
//! apply`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssw_config::routing::Published;
use ssw_queue::routing::Publish;
use ssw_telemetry::LATENCY_BUCKETS;
use tokio_util::sync::CancellationToken;

use crate::metrics::RouteLabels;
use crate::state::AppState;

/// How often a gateway adds its counts to Redis.
pub const FLUSH: Duration = Duration::from_secs(1);
/// The time slice of the stats in Redis.
pub const SLICE: Duration = Duration::from_secs(10);
/// How often the lease holder evaluates its routes.
pub const EVALUATE: Duration = Duration::from_secs(5);

/// Counts of one variant since the last flush.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    requests: u64,
    errors: u64,
    /// TTFT samples per [`LATENCY_BUCKETS`] bound (`le`), plus one above the last.
    ttft: Vec<u64>,
}

/// This gateway's counts per (route, variant) of guarded routes, not yet in Redis.
#[derive(Default)]
pub struct Tally(Mutex<HashMap<RouteVariant, Counts>>);

/// A route's name and one of its variants' (the labels' `Arc`s: no allocation per request).
type RouteVariant = (Arc<str>, Arc<str>);

/// A route's stats to add: how long its slices live, and field → amount.
type Additions = (Duration, Vec<(String, u64)>);

impl Tally {
    /// Counts one request of a guarded route that ended with `status`, its first token after
    /// `ttft`.
    pub fn observe(&self, route: &RouteLabels, status: u16, ttft: Option<Duration>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let c = map
            .entry((route.route.clone(), route.variant.clone()))
            .or_default();
        c.requests += 1;
        if status >= 500 {
            c.errors += 1;
        }
        if let Some(t) = ttft {
            if c.ttft.is_empty() {
                c.ttft = vec![0; LATENCY_BUCKETS.len() + 1];
            }
            let s = t.as_secs_f64();
            let i = LATENCY_BUCKETS
                .iter()
                .position(|b| s <= *b)
                .unwrap_or(LATENCY_BUCKETS.len());
            c.ttft[i] += 1;
        }
    }

    fn take(&self) -> HashMap<RouteVariant, Counts> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// One variant's figures over the window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    /// Requests.
    pub requests: u64,
    /// Server errors.
    pub errors: u64,
    /// TTFT histogram (per bucket, not cumulative).
    pub ttft: Vec<u64>,
}

impl Window {
    /// Share of requests answered with a server error.
    pub fn error_rate(&self) -> f64 {
        self.errors as f64 / self.requests.max(1) as f64
    }

    /// TTFT p95 in seconds: the upper bound of the bucket holding it (none without samples).
    pub fn ttft_p95(&self) -> Option<f64> {
        let total: u64 = self.ttft.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (0.95 * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.ttft.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// Why a variant is taken out, with the figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    /// The variant.
    pub variant: String,
    /// `error_rate` or `ttft_p95_ratio`.
    pub reason: &'static str,
    /// What was seen, in words (logged, and the published version's reason).
    pub evidence: String,
}

/// Judges a route's variants over the window: the first breach of a non-control variant.
pub fn judge(
    guard: &ssw_config::route::GuardConfig,
    control: (&str, &Window),
    others: &[(String, Window)],
) -> Option<Breach> {
    let (control_name, c) = control;
    if c.requests < guard.min_requests {
        return None;
    }
    for (name, v) in others {
        if v.requests < guard.min_requests {
            continue;
        }
        if let Some(max) = guard.max_error_rate
            && v.error_rate() > max
        {
            return Some(Breach {
                variant: name.clone(),
                reason: "error_rate",
                evidence: format!(
                    "variant {name}: {} of {} requests failed ({:.1} %, the guard allows {:.1} %; control {control_name}: {:.1} % of {})",
                    v.errors,
                    v.requests,
                    v.error_rate() * 100.0,
                    max * 100.0,
                    c.error_rate() * 100.0,
                    c.requests
                ),
            });
        }
        if let (Some(max), Some(vp), Some(cp)) =
            (guard.max_ttft_p95_ratio, v.ttft_p95(), c.ttft_p95())
            && vp > max * cp
        {
            return Some(Breach {
                variant: name.clone(),
                reason: "ttft_p95_ratio",
                evidence: format!(
                    "variant {name}: time to first token p95 ≤ {vp:.3} s over {} requests, {:.2} × control {control_name}'s {cp:.3} s over {} (the guard allows {max:.2} ×)",
                    v.requests,
                    vp / cp,
                    c.requests
                ),
            });
        }
    }
    None
}

/// Adds this gateway's counts to Redis every [`FLUSH`], and evaluates the routes whose lease
/// it holds every [`EVALUATE`], until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_eval = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        flush(&state).await;
        if last_eval.elapsed() >= EVALUATE {
            last_eval = tokio::time::Instant::now();
            evaluate(&state).await;
        }
    }
}

async fn flush(state: &AppState) {
    let counts = state.guard_tally.take();
    if counts.is_empty() {
        return;
    }
    let routing = state.routing();
    let slice = ssw_queue::now_ms() / SLICE.as_millis() as u64;
    // Per route: how long its slices live (its guard's window and two slices), and the counts.
    let mut by_route: HashMap<Arc<str>, Additions> = HashMap::new();
    for ((route, variant), c) in counts {
        // A route no longer guarded (a new routing version) has nothing to add.
        let Some(guard) = routing.router.route(&route).and_then(|r| r.guard.as_ref()) else {
            continue;
        };
        let (_, fields) = by_route
            .entry(route)
            .or_insert_with(|| (guard.window + 2 * SLICE, Vec::new()));
        fields.push((format!("{variant}:n"), c.requests));
        if c.errors > 0 {
            fields.push((format!("{variant}:e"), c.errors));
        }
        for (i, n) in c.ttft.iter().enumerate().filter(|(_, n)| **n > 0) {
            fields.push((format!("{variant}:t{i}"), *n));
        }
    }
    for (route, (ttl, fields)) in by_route {
        if let Err(e) = state
            .redis
            .add_route_stats(&route, slice, &fields, ttl)
            .await
        {
            tracing::debug!(error = %e, route = %route, "cannot add route stats");
        }
    }
}

async fn evaluate(state: &AppState) {
    let routing = state.routing();
    for route in routing.router.routes() {
        let Some(guard) = &route.guard else { continue };
        if route.variants.len() < 2 || route.variants[1..].iter().all(|v| v.weight == 0) {
            continue;
        }
        let lease = state.redis.keys().route_guard(&route.name);
        let mine = state
            .redis
            .lease(&lease, &state.instance, 3 * EVALUATE)
            .await
            .unwrap_or(false);
        if !mine {
            continue;
        }
        let windows = match read_window(state, &route.name, guard.window).await {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read route stats");
                continue;
            }
        };
        let empty = Window::default();
        let control = &route.variants[0].name;
        let others: Vec<(String, Window)> = route.variants[1..]
            .iter()
            .filter(|v| v.weight > 0)
            .map(|v| {
                let w = windows.get(&*v.name).cloned().unwrap_or_default();
                (v.name.to_string(), w)
            })
            .collect();
        let c = windows.get(&**control).unwrap_or(&empty);
        if let Some(breach) = judge(guard, (control, c), &others) {
            fall_back(state, &route.name, &breach).await;
        }
    }
}

/// Sums the route's stats slices over `window`, per variant.
async fn read_window(
    state: &AppState,
    route: &str,
    window: Duration,
) -> Result<HashMap<String, Window>, ssw_queue::QueueError> {
    let now = ssw_queue::now_ms() / SLICE.as_millis() as u64;
    let slices = (window.as_millis() / SLICE.as_millis()).max(1) as u64;
    let all = state
        .redis
        .route_stats(route, now.saturating_sub(slices - 1), now)
        .await?;
    let mut out: HashMap<String, Window> = HashMap::new();
    for (field, n) in all {
        let Some((variant, what)) = field.rsplit_once(':') else {
            continue;
        };
        let w = out.entry(variant.to_owned()).or_default();
        match what {
            "n" => w.requests += n,
            "e" => w.errors += n,
            t => {
                if let Some(i) = t.strip_prefix('t').and_then(|i| i.parse::<usize>().ok())
                    && i <= LATENCY_BUCKETS.len()
                {
                    if w.ttft.is_empty() {
                        w.ttft = vec![0; LATENCY_BUCKETS.len() + 1];
                    }
                    w.ttft[i] += n;
                }
            }
        }
    }
    Ok(out)
}

/// Publishes the routing in force with `route` sending everyone to its control.
async fn fall_back(state: &AppState, route: &str, breach: &Breach) {
    let current = state.routing();
    let mut routing = match current.document.as_deref() {
        Some(d) => match serde_json::from_str::<Published>(d) {
            Ok(p) => p.routing,
            Err(_) => return,
        },
        None => state.file().routing(),
    };
    let Some(r) = routing.routes.get_mut(route) else {
        return;
    };
    for (i, v) in r.variants.iter_mut().enumerate() {
        v.weight = u32::from(i == 0);
    }
    let reason = format!(
        "guard: route {route} back to its control: {}",
        breach.evidence
    );
    let published = Published {
        based_on: current.number,
        author: "guard".into(),
        reason: reason.clone(),
        created_ms: ssw_queue::now_ms(),
        routing,
    };
    let Ok(doc) = serde_json::to_string(&published) else {
        return;
    };
    match state.redis.publish_routing(current.number, &doc).await {
        Ok(Publish::Published(v)) => {
            tracing::error!(
                route,
                variant = %breach.variant,
                reason = breach.reason,
                version = v,
                "{reason}"
            );
            metrics::counter!(
                ssw_telemetry::names::GATEWAY_ROUTE_ROLLBACKS,
                "route" => route.to_owned(),
                "variant" => breach.variant.clone(),
                "reason" => breach.reason,
            )
            .increment(1);
        }
        // Someone published meanwhile: judge again on the next evaluation, under it.
        Ok(Publish::Conflict { .. }) => {}
        Err(e) => tracing::warn!(error = %e, route, "cannot publish the guard's fallback"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssw_config::route::GuardConfig;

    fn guard() -> GuardConfig {
        GuardConfig {
            max_error_rate: Some(0.05),
            max_ttft_p95_ratio: Some(1.5),
            window: Duration::from_secs(300),
            min_requests: 100,
        }
    }

    fn window(requests: u64, errors: u64, ttft: f64) -> Window {
        let tally = Tally::default();
        let labels = RouteLabels {
            route: "r".into(),
            variant: "v".into(),
            adapter: "".into(),
        };
        for i in 0..requests {
            let status = if i < errors { 502 } else { 200 };
            tally.observe(&labels, status, Some(Duration::from_secs_f64(ttft)));
        }
        let c = tally.take().remove(&("r".into(), "v".into())).unwrap();
        Window {
            requests: c.requests,
            errors: c.errors,
            ttft: c.ttft,
        }
    }

    #[test]
    fn a_variant_is_judged_only_with_enough_requests_and_by_each_bound() {
        let g = guard();
        let control = window(200, 0, 0.08);
        // Healthy.
        let ok = [("light".to_owned(), window(200, 2, 0.09))];
        assert_eq!(judge(&g, ("heavy", &control), &ok), None);
        // Failing, but too few requests yet.
        let few = [("light".to_owned(), window(50, 25, 0.09))];
        assert_eq!(judge(&g, ("heavy", &control), &few), None);
        // Failing.
        let failing = [("light".to_owned(), window(200, 20, 0.09))];
        let b = judge(&g, ("heavy", &control), &failing).unwrap();
        assert_eq!((b.variant.as_str(), b.reason), ("light", "error_rate"));
        assert!(b.evidence.contains("20 of 200"), "{}", b.evidence);
        // Slow: 0.25 s against 0.1 s (bucket bounds) is above 1.5 ×.
        let slow = [("light".to_owned(), window(200, 0, 0.2))];
        let b = judge(&g, ("heavy", &control), &slow).unwrap();
        assert_eq!(b.reason, "ttft_p95_ratio");
        // The control without enough requests: nothing is judged.
        assert_eq!(judge(&g, ("heavy", &window(10, 0, 0.08)), &failing), None);
    }
}
