//! One request's life after admission: waiting in the queue, running, and cancellation.
//!
//! A [`Ticket`] owns the request's place in the reply table. Dropping it before the job
//! finished — the client disconnected, so axum dropped the handler or the response body —
//! cancels the job in Redis: a queued job is removed and never runs, a running one is aborted by
//! its worker within the worker's cancel-poll interval. That holds also while the enqueue is
//! still on its way (the job is then marked cancelled by id, so a worker that claims it skips
//! it).
//!
//! The ticket keeps the job until output reaches the client: if Redis restarts and loses it,
//! the ticket enqueues it again (under a new id, within its original deadline), so a request
//! nobody had answered yet does not fail.

use std::sync::Arc;
use std::time::Duration;

use ssw_protocol::error::ErrorCode;
use ssw_protocol::job::Job;
use ssw_protocol::reply::ReplyEvent;
use ssw_queue::QueueError;
use ssw_queue::producer::{Enqueued, Expiry, Lane, QueueLimits};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::replies::{Delivery, EventRx};
use crate::state::AppState;

/// How long a cancellation marker outlives the job's deadline (after it, a claim refuses the
/// job as expired anyway; a running job's worker sees the marker within a poll interval).
const CANCEL_GRACE: Duration = Duration::from_secs(60);

enum Phase {
    /// On the stream; no worker has said anything yet.
    Queued { deadline: Instant },
    /// A worker owns it; silence longer than the stall timeout is a failure.
    Running,
}

/// What the waiting produced.
pub enum Next {
    /// An event from the worker (never `KeepAlive` or `Requeued`, which are handled here).
    Event(ReplyEvent),
    /// A failure decided by the gateway (timeout, stall, Redis down).
    Failed(ApiError),
}

/// Timings of one request, turned into histograms as its events arrive.
struct Timing {
    arrived: Instant,
    enqueued_ms: u64,
    first_token: Option<Instant>,
    last_chunk: Option<Instant>,
    /// The latest usage the answer reported, counted once when the request ends: with
    /// `stream_options.continuous_usage_stats` every chunk carries running totals.
    usage: Option<ssw_protocol::chat::Usage>,
    /// SSE events of a stream so far (about one per token with vLLM).
    events: u64,
    /// How long the job waited for a worker (from enqueue to its claim), once claimed.
    queued: Option<Duration>,
}

/// What a limited tenant's request was charged at admission; settled with what it used when
/// it ends.
pub struct Charged {
    /// The tenant's allowance at this gateway.
    pub allowance: Arc<crate::limits::TenantAllowance>,
    /// The concurrency slot it holds (0 or 1).
    pub slots: u64,
    /// Tokens charged: the prompt's estimate plus `max_tokens` (or a default).
    pub estimate: u64,
    /// The prompt's part of it.
    pub prompt_estimate: u64,
    /// The UTC day it was charged on (its settlement reaches that day's quota only).
    pub day: u64,
}

/// A request in flight.
pub struct Ticket {
    timing: Timing,
    /// The request's span (request id, job, pool, worker): lifecycle events are logged in it,
    /// also while the response body streams outside the handler.
    span: tracing::Span,
    state: AppState,
    pool: Arc<str>,
    job: String,
    /// The lane it waits in (its tier and tenant).
    lane: Lane,
    entry_id: String,
    /// The job as enqueued, kept until output reaches the client (to enqueue it again if
    /// Redis loses it), with the pool's limits.
    resubmit: Option<(Job, QueueLimits)>,
    /// What the job counts for in the pool's queued bytes.
    size: u64,
    deadline_ms: u64,
    rx: EventRx,
    phase: Phase,
    stream: bool,
    /// No cancellation needed on drop (answered, expired, or never enqueued).
    finished: bool,
    /// The request has been counted in the metrics.
    recorded: bool,
    /// Its tenant's limits' charge, settled on drop.
    charged: Option<Charged>,
    /// Its route and variant (metric labels).
    route: crate::metrics::RouteLabels,
    /// Its route has a guard: its outcome is tallied for it.
    guarded: bool,
}

impl Ticket {
    /// Registers `job` in the reply table; call before enqueueing so no event can be missed.
    pub fn register(
        state: &AppState,
        pool: Arc<str>,
        job: String,
        lane: Lane,
        (arrived, enqueued_ms, deadline_ms): (Instant, u64, u64),
        stream: bool,
        span: tracing::Span,
    ) -> Self {
        let rx = state.replies.register(&job, pool.clone());
        crate::metrics::inflight(&pool, 1.0);
        Self {
            span,
            timing: Timing {
                arrived,
                enqueued_ms,
                first_token: None,
                last_chunk: None,
                usage: None,
                events: 0,
                queued: None,
            },
            state: state.clone(),
            pool,
            job,
            lane,
            entry_id: String::new(),
            resubmit: None,
            size: 0,
            deadline_ms,
            rx,
            phase: Phase::Queued {
                deadline: instant_of(deadline_ms),
            },
            stream,
            finished: false,
            recorded: false,
            charged: None,
            route: crate::metrics::RouteLabels::default(),
            guarded: false,
        }
    }

    /// Records the route and variant the request was sent to (metric labels), and whether the
    /// route's guard counts it.
    pub fn routed(&mut self, route: crate::metrics::RouteLabels, guarded: bool) {
        self.route = route;
        self.guarded = guarded;
    }

    /// Records what the tenant's limits charged for this request (released when it ends).
    pub fn charged(&mut self, charged: Charged) {
        self.charged = Some(charged);
    }

    /// Tokens used minus tokens charged: the usage the answer reported; for a stream without
    /// one, the prompt's estimate and one token per event; for a request that never started,
    /// nothing; else (no usage reported) the estimate stands.
    fn usage_delta(&self, c: &Charged) -> i64 {
        let t = &self.timing;
        let used = match (t.usage, t.first_token, &self.phase) {
            (Some(u), ..) => u.prompt_tokens + u.completion_tokens,
            (None, Some(_), _) if self.stream => c.prompt_estimate + t.events,
            (None, Some(_), _) => c.estimate,
            (None, None, Phase::Running) => c.prompt_estimate,
            (None, None, Phase::Queued { .. }) => 0,
        };
        used as i64 - c.estimate as i64
    }

    /// Records the stream entry id once enqueued, and keeps the job.
    pub fn enqueued(&mut self, entry_id: String, job: Job, limits: QueueLimits) {
        self.entry_id = entry_id;
        self.size = job.size();
        self.resubmit = Some((job, limits));
    }

    /// Marks the job as over (answered, or refused before it was enqueued): no cancellation.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The enqueue failed without a clear answer (a timeout, a dropped connection): the job
    /// may sit in the stream although its client is told otherwise. Marks it cancelled, so a
    /// worker that claims it skips it; best effort, since Redis may be the problem.
    pub fn cancel_unconfirmed(&mut self) {
        self.finished = true;
        spawn_cancel(
            &self.state,
            self.pool.clone(),
            self.job.clone(),
            String::new(),
            (self.cancel_ttl(), 0),
            self.lane.clone(),
        );
    }

    /// The cancellation marker's TTL: past the deadline by [`CANCEL_GRACE`].
    fn cancel_ttl(&self) -> Duration {
        Duration::from_millis(self.deadline_ms.saturating_sub(ssw_queue::now_ms())) + CANCEL_GRACE
    }

    /// Counts the request's outcome once (`code` is `ok` or an error code) and logs its end
    /// with the durations.
    pub fn record(&mut self, status: u16, code: &'static str) {
        if !self.recorded {
            self.recorded = true;
            crate::metrics::request_done(&self.pool, &self.route, self.stream, status, code);
            crate::metrics::tier_request(&self.pool, self.lane.tier, &self.lane.tenant, code);
            if let Some(u) = self.timing.usage {
                crate::metrics::tokens(&self.pool, &self.route, u);
            }
            let t = &self.timing;
            if self.guarded {
                let ttft = t.first_token.map(|f| f - t.arrived);
                self.state.guard_tally.observe(&self.route, status, ttft);
            }
            let ttft_ms = t.first_token.map(|f| (f - t.arrived).as_millis() as u64);
            tracing::info!(
                parent: &self.span,
                status,
                code,
                stream = self.stream,
                total_ms = t.arrived.elapsed().as_millis() as u64,
                ttft_ms,
                "finished"
            );
        }
    }

    /// How long the job waited for a worker, once a worker claimed it (`x-ssw-queue-ms`).
    pub fn queued(&self) -> Option<Duration> {
        self.timing.queued
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<str> {
        &self.pool
    }

    /// Waits for the next meaningful event.
    pub async fn next(&mut self) -> Next {
        let stall = self.state.config.gateway.stall_timeout;
        loop {
            let event = match self.phase {
                Phase::Queued { deadline } => {
                    tokio::select! {
                        ev = self.rx.recv() => ev,
                        _ = tokio::time::sleep_until(deadline) => {
                            match self.on_deadline().await {
                                Ok(()) => continue,
                                Err(e) => return Next::Failed(e),
                            }
                        }
                    }
                }
                Phase::Running => match tokio::time::timeout(stall, self.rx.recv()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        tracing::warn!(job = %self.job, pool = %self.pool, "worker went silent; failing the request");
                        return Next::Failed(ApiError::new(
                            ErrorCode::UpstreamError,
                            format!("the worker stopped responding for {}s", stall.as_secs_f32()),
                        ));
                    }
                },
            };
            match event {
                None => {
                    return Next::Failed(ApiError::new(
                        ErrorCode::QueueUnavailable,
                        "the gateway lost its reply stream",
                    ));
                }
                Some(Delivery::Resubmit) => {
                    if let Err(e) = self.resubmit().await {
                        return Next::Failed(e);
                    }
                }
                Some(Delivery::Overflow) => {
                    tracing::warn!(job = %self.job, pool = %self.pool, "client reads too slowly; ending its stream");
                    return Next::Failed(ApiError::new(
                        ErrorCode::ClientTooSlow,
                        "the answer was produced faster than it was read; the rest was dropped",
                    ));
                }
                Some(Delivery::Event(ReplyEvent::KeepAlive)) => self.phase = Phase::Running,
                Some(Delivery::Event(ReplyEvent::Requeued {
                    entry_id,
                    deadline_ms,
                })) => {
                    tracing::info!(job = %self.job, "engine refused the job; requeued for another worker");
                    self.entry_id = entry_id;
                    self.deadline_ms = deadline_ms;
                    if let Some((job, _)) = &mut self.resubmit {
                        job.deadline_ms = deadline_ms;
                    }
                    self.phase = Phase::Queued {
                        deadline: instant_of(deadline_ms),
                    };
                }
                Some(Delivery::Event(ev)) => {
                    self.phase = Phase::Running;
                    if matches!(ev, ReplyEvent::Head { .. } | ReplyEvent::Data(_)) {
                        // Output reaches the client: the job can no longer be run again.
                        self.resubmit = None;
                    }
                    self.observe(&ev);
                    return Next::Event(ev);
                }
            }
        }
    }

    /// Records what an event says about latency and tokens.
    fn observe(&mut self, ev: &ReplyEvent) {
        let now = Instant::now();
        let (pool, route, span, stream) = (&*self.pool, &self.route, &self.span, self.stream);
        let tier = self.lane.tier;
        let t = &mut self.timing;
        let enqueued_ms = t.enqueued_ms;
        let claimed = |t: &mut Timing, worker: &str, claimed_ms: u64| {
            let queued = Duration::from_millis(claimed_ms.saturating_sub(enqueued_ms));
            t.queued = Some(queued);
            crate::metrics::queue_wait(pool, route, tier, queued);
            span.record("worker", worker);
            tracing::debug!(parent: span, queue_ms = queued.as_millis() as u64, "claimed");
        };
        let chunk = |t: &mut Timing, chunk: &[u8]| {
            match t.last_chunk {
                None => {
                    crate::metrics::ttft(pool, route, tier, true, now - t.arrived);
                    let ttft_ms = (now - t.arrived).as_millis() as u64;
                    tracing::debug!(parent: span, ttft_ms, "first token");
                }
                Some(last) => {
                    let events = ssw_protocol::chat::sse_events(chunk).max(1) as u32;
                    crate::metrics::inter_token(pool, route, (now - last) / events);
                }
            }
            t.first_token.get_or_insert(now);
            t.last_chunk = Some(now);
            t.events += ssw_protocol::chat::sse_events(chunk) as u64;
            if let Some(u) = ssw_protocol::chat::usage_of_sse(chunk) {
                t.usage = Some(u);
            }
        };
        match ev {
            ReplyEvent::Head {
                worker,
                claimed_ms,
                data,
            } => {
                claimed(t, worker, *claimed_ms);
                if !data.is_empty() {
                    chunk(t, data);
                }
            }
            ReplyEvent::Full {
                status,
                claimed_ms,
                body,
                worker,
            } => {
                claimed(t, worker, *claimed_ms);
                if *status < 400 {
                    t.first_token.get_or_insert(now);
                    crate::metrics::ttft(pool, route, tier, stream, now - t.arrived);
                    t.usage = ssw_protocol::chat::usage_of_body(body);
                }
                crate::metrics::duration(pool, route, stream, now - t.arrived);
            }
            ReplyEvent::Data(data) => chunk(t, data),
            ReplyEvent::End | ReplyEvent::Fail { .. } => {
                crate::metrics::duration(pool, route, stream, now - t.arrived)
            }
            ReplyEvent::KeepAlive | ReplyEvent::Requeued { .. } => {}
        }
    }

    async fn on_deadline(&mut self) -> Result<(), ApiError> {
        let timeout = self.timeout_error();
        match self
            .state
            .redis
            .expire(
                &self.pool,
                &self.job,
                &self.entry_id,
                CANCEL_GRACE,
                self.size,
                &self.lane,
            )
            .await
        {
            Ok(Expiry::Expired) => {
                self.finished = true;
                Err(timeout)
            }
            Ok(Expiry::Running(_)) => {
                self.phase = Phase::Running;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, job = %self.job, "cannot expire job");
                Err(ApiError::new(
                    ErrorCode::QueueUnavailable,
                    "the queue is unavailable",
                ))
            }
        }
    }

    /// Enqueues the job again after Redis lost it: under a new id (events of the lost job
    /// that Redis kept, with persistence, are then nobody's), with its original deadline. The
    /// old id is marked cancelled, so a copy Redis kept never runs. Retries while Redis is
    /// unreachable, until the deadline.
    async fn resubmit(&mut self) -> Result<(), ApiError> {
        let Some((mut job, limits)) = self.resubmit.take() else {
            return Err(ApiError::new(
                ErrorCode::QueueUnavailable,
                "the queue lost this request; retry it",
            ));
        };
        let old = std::mem::replace(&mut self.job, self.state.next_job_id());
        spawn_cancel(
            &self.state,
            self.pool.clone(),
            old,
            String::new(),
            (self.cancel_ttl(), 0),
            self.lane.clone(),
        );
        self.rx = self.state.replies.register(&self.job, self.pool.clone());
        job.id.clone_from(&self.job);
        let deadline = instant_of(self.deadline_ms);
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.state.redis.enqueue(&self.pool, &job, limits).await {
                Ok(Enqueued::Accepted(entry)) => {
                    tracing::info!(job = %self.job, "redis lost the request; enqueued it again");
                    crate::metrics::resubmitted(&self.pool);
                    self.entry_id = entry;
                    self.phase = Phase::Queued { deadline };
                    self.resubmit = Some((job, limits));
                    return Ok(());
                }
                Ok(
                    Enqueued::Full { .. }
                    | Enqueued::FullBytes { .. }
                    | Enqueued::FullTier { .. }
                    | Enqueued::FullTenant { .. },
                ) => {
                    self.finished = true;
                    return Err(ApiError::new(
                        ErrorCode::QueueFull,
                        "the queue lost this request and is now full; retry later",
                    )
                    .retry_after(self.state.config.gateway.retry_after));
                }
                Err(QueueError::OutOfMemory(_)) => {
                    self.finished = true;
                    return Err(ApiError::new(
                        ErrorCode::QueueMemoryFull,
                        "the queue lost this request and is now out of memory; retry later",
                    )
                    .retry_after(self.state.config.gateway.retry_after));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "enqueueing again failed; retrying");
                    if Instant::now() + backoff >= deadline {
                        self.finished = true;
                        return Err(self.timeout_error());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn timeout_error(&self) -> ApiError {
        ApiError::new(
            ErrorCode::QueueTimeout,
            "no worker could start this request in time; retry later",
        )
        .retry_after(Duration::from_secs(5))
    }
}

fn instant_of(deadline_ms: u64) -> Instant {
    let now = ssw_queue::now_ms();
    Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(now))
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.replies.unregister(&self.job);
        if let Some(c) = self.charged.take() {
            let delta = self.usage_delta(&c);
            c.allowance.release(c.slots, -delta, c.day);
        }
        crate::metrics::inflight(&self.pool, -1.0);
        if !self.recorded {
            // nginx's 499: the client closed the connection before the answer was complete.
            self.record(499, "client_closed");
        }
        if self.finished {
            return;
        }
        // An empty entry id: the enqueue was still on its way. The marker alone then keeps
        // any worker from running the job.
        let ttl = (self.cancel_ttl(), self.size);
        let (job, entry) = (
            std::mem::take(&mut self.job),
            std::mem::take(&mut self.entry_id),
        );
        tracing::info!(%job, pool = %self.pool, "client disconnected; cancelling the job");
        crate::metrics::client_disconnected(&self.pool);
        spawn_cancel(
            &self.state,
            self.pool.clone(),
            job,
            entry,
            ttl,
            self.lane.clone(),
        );
    }
}

/// Cancels a job on its own task: it needs Redis, and its caller may be a `Drop`. A Redis
/// hiccup gets a few retries; after that the job may still run, its answer unread.
/// `(ttl, size)`: the marker's TTL and the job's size in the pool's queued bytes.
fn spawn_cancel(
    state: &AppState,
    pool: Arc<str>,
    job: String,
    entry: String,
    (ttl, size): (Duration, u64),
    lane: Lane,
) {
    const ATTEMPTS: u32 = 3;
    let redis = state.redis.clone();
    tokio::spawn(async move {
        for attempt in 1..=ATTEMPTS {
            match redis.cancel(&pool, &job, &entry, ttl, size, &lane).await {
                Ok(_) => return,
                Err(e) if attempt == ATTEMPTS => {
                    tracing::warn!(error = %e, %job, "cannot cancel job; it may run unread");
                }
                Err(e) => {
                    tracing::debug!(error = %e, %job, attempt, "cancel failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250) * attempt).await;
                }
            }
        }
    });
}
