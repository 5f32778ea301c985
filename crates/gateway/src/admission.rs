//! Admission: from a request body to a job on its pool's queue, or the reason it is refused.
//!
//! One function decides everything that happens before a worker sees a request: the gateway
//! takes new work, the body is a valid request of a known model, the pool's limits allow it, and
//! the queue has room. Every refusal is an [`ApiError`] with its status and code. The HTTP
//! handler only reads the body before and writes the answer after.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use ssw_protocol::chat::{ChatRequest, quote};
use ssw_protocol::error::ErrorCode;
use ssw_protocol::job::Job;
use ssw_protocol::tier::Tier;
use ssw_queue::QueueError;
use ssw_queue::producer::{Enqueued, Lane, QueueLimits};
use tracing::Instrument;

use crate::error::ApiError;
use crate::http::{X_SSW_POOL, X_SSW_TIER};
use crate::lifecycle::{Charged, Ticket};
use crate::limits::RateHeaders;
use crate::metrics::RouteLabels;
use crate::routing::{Pool, RouteError, Target, Version};
use crate::state::AppState;

/// A request on its pool's queue.
pub struct Admitted {
    /// The pool it was routed to.
    pub pool: Arc<Pool>,
    /// Its place in the reply table; dropping it cancels the job.
    pub ticket: Ticket,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The tier it is served at.
    pub tier: Tier,
    /// The route and variant it was sent to (empty: a pool by name).
    pub route: RouteLabels,
    /// The version of the routing settings that routed it.
    pub routing_version: u64,
    /// `x-ratelimit-*` for a limited tenant.
    pub rate: Option<RateHeaders>,
    /// The request's span (request id, job, pool, worker).
    pub span: tracing::Span,
    /// A Responses request's answer, to be stored when it ends.
    pub response: Option<crate::responses::Pending>,
}

/// Why a request was not admitted.
pub struct Refusal {
    /// The pool, if routing got that far.
    pub pool: Option<Arc<Pool>>,
    /// The route and variant, if routing got that far through a route.
    pub route: RouteLabels,
    /// Whether the client asked for a stream (a metric label).
    pub stream: bool,
    /// What the client is told.
    pub error: ApiError,
    /// Already counted in the request metrics (refused at the queue, with a ticket).
    pub recorded: bool,
    /// `x-ratelimit-*` for a limited tenant, if its limits were checked.
    pub rate: Option<RateHeaders>,
}

impl Refusal {
    /// A refusal before any pool or limit was looked at.
    pub fn new(error: ApiError) -> Self {
        Self {
            pool: None,
            route: RouteLabels::default(),
            stream: false,
            error,
            recorded: false,
            rate: None,
        }
    }
}

/// Admits the request in `body` for `tenant`: validates, routes, picks its tier, applies the
/// pool's limits and enqueues it in its lane.
/// The body is dropped as soon as the job's own copy exists (before the enqueue), so a large
/// request is in memory twice at most at any time. The ticket keeps the job until output
/// reaches the client (it enqueues it again if Redis loses it).
pub async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    request_id: String,
    tenant: &str,
    endpoint: ssw_protocol::job::Endpoint,
) -> Result<Admitted, Refusal> {
    if state.is_draining() {
        return Err(Refusal::new(ApiError::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down; retry",
        )));
    }
    if !state.replies.is_open() {
        return Err(Refusal::new(ApiError::new(
            ErrorCode::QueueUnavailable,
            "the gateway is still connecting to the queue; retry later",
        )));
    }
    // Held until the job is on the queue (or refused): see `state::ADMISSIONS`. The semaphore
    // is never closed.
    let turn = state.admissions.acquire().await.ok();
    let mut req = ChatRequest::parse_for(&body, endpoint).map_err(|e| Refusal::new(e.into()))?;
    let stream = req.stream;
    let routing = state.routing();
    let Routed {
        pool,
        labels,
        guarded,
        shadow,
    } = route(&routing, headers, &req).map_err(|error| Refusal {
        stream,
        ..Refusal::new(error)
    })?;
    let mut rate: Option<RateHeaders> = None;
    let refused = |error: ApiError, recorded: bool, rate: Option<RateHeaders>| Refusal {
        pool: Some(pool.clone()),
        route: labels.clone(),
        stream,
        error,
        recorded,
        rate,
    };
    req.check(&pool.limits())
        .map_err(|e| refused(e.into(), false, None))?;
    let tenant_cfg = routing.tenant(tenant);
    let tier = tier(headers, &req, tenant_cfg).map_err(|e| refused(e, false, None))?;
    let job_id = state.next_job_id();
    // A Responses request: its id, and `previous_response_id` expanded into its input (whose
    // bytes count for its token estimate).
    let (response, expanded) = match endpoint {
        ssw_protocol::job::Endpoint::Responses => {
            let (pending, extra) = crate::responses::prepare(state, &Arc::from(tenant), &mut req)
                .await
                .map_err(|e| refused(e, false, None))?;
            (Some(pending), extra)
        }
        _ => (None, 0),
    };
    let mut charged = None;
    if tenant_cfg.is_limited() {
        // A list of prompts generates for each.
        let max_tokens = req.max_tokens.map(|t| t * req.prompts());
        let (estimate, prompt_estimate) =
            crate::limits::estimate(body.len() + expanded, max_tokens);
        let (allowance, need, r) = charge_tenant(state, tenant, tenant_cfg, estimate)
            .await
            .map_err(|(e, r)| refused(e, false, r))?;
        rate = Some(r);
        charged = Some(Charged {
            allowance,
            slots: need.slots,
            estimate,
            prompt_estimate,
            day: crate::limits::utc_day(ssw_queue::now_ms()),
        });
    }
    let arrived = tokio::time::Instant::now();
    let now = ssw_queue::now_ms();
    let deadline_ms = now + pool.tier_queue_timeout(tier).as_millis() as u64;
    let priority = pool.engine_priority.then(|| tier.engine_priority());
    // A shadow copy asks its pool what the client asked (within that pool's limits).
    let shadow = shadow.and_then(|p| match req.check(&p.limits()) {
        Ok(()) => {
            let engine_priority = p.engine_priority.then(|| Tier::Shadow.engine_priority());
            let body = req
                .clone()
                .into_engine_body(&p.served_model, &p.defaults, engine_priority);
            Some((p, body))
        }
        Err(_) => {
            crate::metrics::shadow_dropped(&labels.route, "invalid");
            None
        }
    });
    let job = Job {
        id: job_id,
        request_id,
        reply_to: state.replies.key().to_owned(),
        enqueued_ms: now,
        deadline_ms,
        stream,
        attempt: 1,
        crashes: 0,
        crashed_on: String::new(),
        tier,
        tenant: tenant.to_owned(),
        endpoint,
        adapter: labels.adapter.to_string(),
        // An adapter's requests name it: the engines serve it under that name.
        body: req.into_engine_body(
            if labels.adapter.is_empty() {
                &pool.served_model
            } else {
                &labels.adapter
            },
            &pool.defaults,
            priority,
        ),
    };
    drop(body);
    let span = tracing::info_span!(
        "request",
        request_id = %job.request_id,
        job = %job.id,
        pool = %pool.name,
        tier = %tier,
        tenant = %tenant,
        routing_version = routing.number,
        route = tracing::field::Empty,
        variant = tracing::field::Empty,
        worker = tracing::field::Empty,
    );
    if !labels.route.is_empty() {
        span.record("route", &*labels.route);
        span.record("variant", &*labels.variant);
    }
    let mut ticket = Ticket::register(
        state,
        pool.name.clone(),
        job.id.clone(),
        Lane::of(&job),
        (arrived, now, deadline_ms),
        stream,
        span.clone(),
    );
    if let Some(c) = charged {
        ticket.charged(c);
    }
    ticket.routed(labels.clone(), guarded);
    let limits = QueueLimits {
        max_queue: pool.max_queue,
        max_queue_bytes: pool.max_queue_bytes,
        max_tier: pool.tier_max_queue(tier),
        max_tenant: tenant_cfg.max_queued.unwrap_or(0),
    };
    let enqueued = state
        .redis
        .enqueue(&pool.name, &job, limits)
        .instrument(span.clone())
        .await;
    drop(turn);
    let error = match enqueued {
        Ok(Enqueued::Accepted(entry)) => {
            tracing::debug!(parent: &span, %entry, deadline_ms, "enqueued");
            if let Some((shadow_pool, body)) = shadow {
                let copy = crate::shadow::Copy {
                    pool: shadow_pool,
                    route: labels.route.clone(),
                    request_id: format!("{}.shadow", job.request_id),
                    stream,
                    endpoint,
                    body,
                };
                tokio::spawn(crate::shadow::run(state.clone(), copy));
            }
            ticket.enqueued(entry, job, limits);
            return Ok(Admitted {
                pool,
                ticket,
                stream,
                tier,
                route: labels,
                routing_version: routing.number,
                rate,
                span,
                response,
            });
        }
        Ok(full) => {
            let p = &pool.name;
            let what = match full {
                Enqueued::Full { backlog } => format!("pool `{p}` has {backlog} requests waiting"),
                Enqueued::FullBytes { bytes } => {
                    format!("pool `{p}` has {} MiB of requests waiting", bytes >> 20)
                }
                Enqueued::FullTier { waiting } => {
                    format!("pool `{p}` has {waiting} {tier} requests waiting")
                }
                Enqueued::FullTenant { waiting } => format!(
                    "tenant `{tenant}` has {waiting} requests waiting in pool `{p}` (its max_queued)"
                ),
                Enqueued::Accepted(_) => unreachable!("matched above"),
            };
            ApiError::new(ErrorCode::QueueFull, format!("{what}; retry later"))
                .retry_after(state.config.gateway.retry_after)
        }
        Err(QueueError::OutOfMemory(e)) => {
            tracing::warn!(parent: &span, error = %e, "redis is at maxmemory; refusing");
            ApiError::new(
                ErrorCode::QueueMemoryFull,
                "the queue is out of memory; retry later",
            )
            .retry_after(state.config.gateway.retry_after)
        }
        Err(e) => {
            tracing::warn!(parent: &span, error = %e, "cannot enqueue");
            // The enqueue may have happened before the connection failed or timed out; the
            // client is told it did not, so make sure no worker runs it.
            ticket.cancel_unconfirmed();
            ApiError::new(
                ErrorCode::QueueUnavailable,
                "the queue is unavailable; retry later",
            )
        }
    };
    ticket.finish();
    ticket.record(error.code.status(), error.code.as_str());
    Err(refused(error, true, rate))
}

/// The tier a request is served at: its `service_tier` (else its `x-ssw-tier` header, else
/// the tenant's default), lowered to the tenant's highest tier.
fn tier(
    headers: &HeaderMap,
    req: &ChatRequest<'_>,
    tenant: &ssw_config::TenantConfig,
) -> Result<Tier, ApiError> {
    let asked = match req.service_tier().map_err(ApiError::from)? {
        Some(t) => Some(t),
        None => match headers.get(&X_SSW_TIER) {
            None => None,
            Some(v) => Some(v.to_str().ok().and_then(Tier::from_header).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "`x-ssw-tier` must be `gold`, `silver` or `bronze`",
                )
                .param("x-ssw-tier")
            })?),
        },
    };
    Ok(asked
        .unwrap_or(tenant.default_tier)
        .at_most(tenant.max_tier))
}

/// Where a request goes.
struct Routed {
    /// The pool that serves it.
    pool: Arc<Pool>,
    /// Its route and variant (empty: a pool by name), and the LoRA adapter it asks for
    /// (empty: none).
    labels: RouteLabels,
    /// Its route has a guard (which counts its outcome).
    guarded: bool,
    /// Where a copy goes (a route's shadow, drawn at its share).
    shadow: Option<Arc<Pool>>,
}

/// The pool a request goes to: the `x-ssw-pool` header wins over `model`; a route picks one of
/// its variants by the request's sticky key.
/// Charges one request of a limited tenant, `estimate` tokens (0 for a request that generates
/// nothing): its allowance, what it took, and the `x-ratelimit-*` view; or the refusal (with
/// the view, when Redis answered).
async fn charge_tenant(
    state: &AppState,
    tenant: &str,
    cfg: &ssw_config::TenantConfig,
    estimate: u64,
) -> Result<
    (
        Arc<crate::limits::TenantAllowance>,
        ssw_queue::limits::Amounts,
        RateHeaders,
    ),
    (ApiError, Option<RateHeaders>),
> {
    let limits = crate::limits::of(cfg);
    let allowance = state.allowances.of(tenant, limits);
    let need = crate::limits::Local::need(limits, estimate);
    match crate::limits::charge(state, &allowance, need).await {
        Ok(decision) => Ok((allowance, need, RateHeaders { limits, decision })),
        Err(Ok(decision)) => {
            let limit = decision.refused.expect("a refusal names its limit");
            crate::metrics::rate_limited(tenant, limit.as_str());
            let error = crate::limits::refusal(tenant, limit, limits, decision.retry_after);
            Err((error, Some(RateHeaders { limits, decision })))
        }
        Err(Err(e)) => {
            tracing::warn!(error = %e, %tenant, "cannot check the tenant's limits");
            let error = ApiError::new(
                ErrorCode::QueueUnavailable,
                "the queue is unavailable; retry later",
            );
            Err((error, None))
        }
    }
}

fn route(
    routing: &Version,
    headers: &HeaderMap,
    req: &ChatRequest<'_>,
) -> Result<Routed, ApiError> {
    let header = match headers.get(&X_SSW_POOL) {
        None => None,
        Some(v) => Some(v.to_str().map(str::trim).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "`x-ssw-pool` must be a pool name in visible ASCII",
            )
            .param("x-ssw-pool")
        })?),
    };
    match routing.router.resolve(header, req.model.as_deref()) {
        Ok(Target::Pool(pool)) => Ok(Routed {
            pool,
            labels: RouteLabels::default(),
            guarded: false,
            shadow: None,
        }),
        Ok(Target::Adapter(pool, adapter)) => Ok(Routed {
            pool,
            labels: RouteLabels {
                adapter,
                ..RouteLabels::default()
            },
            guarded: false,
            shadow: None,
        }),
        Ok(Target::Route(route)) => {
            let key = route.sticky_key(headers, req);
            let variant = route.variant(route.bucket(key.as_deref()));
            let labels = RouteLabels {
                route: route.name.clone(),
                variant: variant.name.clone(),
                adapter: variant.adapter.clone().unwrap_or_default(),
            };
            Ok(Routed {
                pool: variant.pool.clone(),
                labels,
                guarded: route.guard.is_some(),
                shadow: route.shadowed().cloned(),
            })
        }
        Err(RouteError::Unknown(m)) => Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!("the model `{}` does not exist; see /v1/models", quote(&m)),
        )
        .param(if header.is_some() {
            "x-ssw-pool"
        } else {
            "model"
        })),
        Err(RouteError::Missing) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "`model` is required (or an `x-ssw-pool` header)",
        )
        .param("model")),
    }
}

/// How long a fast-lane request (`/tokenize`, `/detokenize`) waits for a worker's answer.
pub const FAST_TIMEOUT: Duration = Duration::from_secs(10);

/// A fast-lane request's answer.
pub struct FastAnswer {
    /// The pool that answered (or refused) it, if routing got that far.
    pub pool: Option<Arc<Pool>>,
    /// The worker that answered it.
    pub worker: String,
    /// The answer: (status, body), or why there is none.
    pub result: Result<(u16, Vec<u8>), ApiError>,
    /// `x-ratelimit-*` for a limited tenant.
    pub rate: Option<RateHeaders>,
}

/// Gives a fast request's concurrency slot back when it ends, however it ends.
struct Release(Option<(Arc<crate::limits::TenantAllowance>, u64)>);

impl Drop for Release {
    fn drop(&mut self) {
        if let Some((allowance, slots)) = self.0.take() {
            allowance.release(slots, 0, crate::limits::utc_day(ssw_queue::now_ms()));
        }
    }
}

/// Serves a request that generates nothing (`/tokenize`, `/detokenize`) on its pool's fast lane:
/// validated and routed like any request, then one job pushed where any worker of the pool
/// takes it beside its generation slots (it never waits behind generation work), answered
/// within [`FAST_TIMEOUT`]. A tenant's limits count it as a request (no tokens: nothing is
/// generated); tiers do not apply; the lane's bound (1 024 per pool) does.
pub async fn fast(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Bytes,
    request_id: String,
    tenant: &str,
    endpoint: ssw_protocol::job::Endpoint,
) -> FastAnswer {
    let mut answer = FastAnswer {
        pool: None,
        worker: String::new(),
        result: Err(ApiError::new(ErrorCode::InternalError, "internal error")),
        rate: None,
    };
    if state.is_draining() {
        answer.result = Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down; retry",
        ));
        return answer;
    }
    let req = match ChatRequest::parse_for(&body, endpoint) {
        Ok(r) => r,
        Err(e) => {
            answer.result = Err(e.into());
            return answer;
        }
    };
    let routing = state.routing();
    let pool = match route(&routing, headers, &req) {
        Ok(r) => r.pool,
        Err(e) => {
            answer.result = Err(e);
            return answer;
        }
    };
    answer.pool = Some(pool.clone());
    if let Err(e) = req.check(&pool.limits()) {
        answer.result = Err(e.into());
        return answer;
    }
    // A limited tenant's requests and concurrency count; it generates no tokens.
    let tenant_cfg = routing.tenant(tenant);
    let mut charged = None;
    if tenant_cfg.is_limited() {
        match charge_tenant(state, tenant, tenant_cfg, 0).await {
            Ok((allowance, need, rate)) => {
                answer.rate = Some(rate);
                charged = Some((allowance, need.slots));
            }
            Err((e, rate)) => {
                answer.rate = rate;
                answer.result = Err(e);
                return answer;
            }
        }
    }
    let release = Release(charged);
    let now = ssw_queue::now_ms();
    let job = Job {
        id: state.next_job_id(),
        request_id,
        reply_to: state.replies.key().to_owned(),
        enqueued_ms: now,
        deadline_ms: now + FAST_TIMEOUT.as_millis() as u64,
        stream: false,
        attempt: 1,
        crashes: 0,
        crashed_on: String::new(),
        tier: Tier::Default,
        tenant: tenant.to_owned(),
        endpoint,
        adapter: String::new(),
        body: req.into_engine_body(&pool.served_model, &pool.defaults, None),
    };
    drop(body);
    // Listening before the push: the answer may come at once.
    let mut rx = state.replies.register(&job.id, pool.name.clone());
    let pushed = state.redis.fast_push(&pool.name, &job).await;
    let lost = || {
        ApiError::new(
            ErrorCode::UpstreamError,
            "the answer was lost on the way; retry",
        )
    };
    answer.result = match pushed {
        Ok(true) => match tokio::time::timeout(FAST_TIMEOUT, rx.recv()).await {
            Ok(Some(crate::replies::Delivery::Event(ev))) => match ev.into_answer() {
                Ok((status, worker, body)) => {
                    answer.worker = worker;
                    Ok((status, body))
                }
                Err(_) => Err(lost()),
            },
            Ok(_) => Err(lost()),
            Err(_) => Err(ApiError::new(
                ErrorCode::QueueTimeout,
                format!(
                    "no worker of pool `{}` answered within {}s",
                    pool.name,
                    FAST_TIMEOUT.as_secs()
                ),
            )
            .retry_after(state.config.gateway.retry_after)),
        },
        Ok(false) => Err(ApiError::new(
            ErrorCode::QueueFull,
            format!(
                "pool `{}` has too many tokenizer requests waiting; retry later",
                pool.name
            ),
        )
        .retry_after(state.config.gateway.retry_after)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot push a fast-lane job");
            Err(ApiError::new(
                ErrorCode::QueueUnavailable,
                "the queue is unavailable; retry later",
            ))
        }
    };
    state.replies.unregister(&job.id);
    drop(release);
    answer
}
