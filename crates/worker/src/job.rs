//! Running one job on the engine and reporting back.
//!
//! Outcomes: the engine's answer goes back chunk by chunk (streaming) or whole; an engine 4xx
//! goes back as an OpenAI error with the engine's status; a refused connection or a 5xx before
//! any output puts the job back on the queue for another worker (bounded attempts, then 502);
//! a request that looks like it crashed its engine (the connection reset, the answer broke off
//! before output) is retried at most `max_crash_retries` times, elsewhere, then answered 502
//! `engine_crashed`; a failure after output is an explicit error event. A cancelled job's
//! engine request is dropped, which closes the connection: vLLM aborts a request whose client
//! goes away.
//!
//! Every event of a run carries the run's fence (from its claim) and its place in the run
//! (a sequence number from 0), so the gateway can drop events of a superseded run and notice
//! lost or repeated ones. A run that learns it no longer owns its job (another worker took it
//! over, or Redis lost it) stops without writing anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use ssw_protocol::error::{ErrorCode, ErrorEnvelope};
use ssw_protocol::job::Job;
use ssw_protocol::reply::{Reply, ReplyEvent};
use ssw_queue::consumer::{Claim, Commit, Requeue};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::engine::error_chain;

/// How a job ended, as far as the queue is concerned.
enum Outcome {
    /// Send this last event (if any) and remove the job.
    Done(Option<ReplyEvent>),
    /// Nothing reached the client; another worker may try. `crash`: the failure looks like the
    /// request crashed the engine.
    Retry { reason: String, crash: bool },
    /// The client or its gateway is gone, or the job was aborted: remove it silently.
    Gone,
    /// This run no longer owns the job (taken over, or Redis lost it): touch nothing.
    Lost,
}

fn retry(reason: String) -> Outcome {
    Outcome::Retry {
        reason,
        crash: false,
    }
}

fn crashed(reason: String) -> Outcome {
    Outcome::Retry {
        reason,
        crash: true,
    }
}

fn fail(ctx: &Ctx, code: ErrorCode, message: &str) -> ReplyEvent {
    ReplyEvent::fail(code, ctx.id.clone(), message)
}

/// Stamps a run's events with its fence and their order.
pub struct Sender {
    job: String,
    seq: AtomicU32,
}

impl Sender {
    fn new(job: &str) -> Self {
        Self {
            job: job.to_owned(),
            seq: AtomicU32::new(0),
        }
    }

    /// The run's next event.
    fn reply(&self, fence: u32, event: ReplyEvent) -> Reply {
        Reply {
            job: self.job.clone(),
            fence,
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            event,
        }
    }
}

/// Most engine bytes coalesced into one reply entry while a write is in flight; beyond, the
/// engine is read no further until the write is done (so a job holds at most this much).
const COALESCE_MAX: usize = 64 * 1024;

/// Reads a whole engine body, up to `max` bytes; `Ok(None)` if it is longer.
async fn read_capped(
    resp: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A job as pulled from its stream, with what decides how it starts.
pub struct Pulled {
    /// Stream entry id.
    pub entry_id: String,
    /// The job.
    pub job: Job,
    /// What it counts for in the pool's queued bytes.
    pub size: u64,
    /// When this worker pulled it (reported to the gateway as the claim time).
    pub pulled_ms: u64,
    /// Taken over from a worker that died.
    pub reclaimed: bool,
    /// Start the engine request before the claim's verdict arrives.
    pub early: bool,
}

/// What the claim decided, with what the worker checked beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run it, as run `fence`.
    Run {
        /// The run's fence.
        fence: u32,
    },
    /// The claim did not let this worker run it (never [`Claim::Run`]).
    Refused(Claim),
    /// The claim let it run, but the gateway that owns it is gone: nobody would read the
    /// answer. Finished silently as run `fence`.
    GatewayGone {
        /// The run's fence.
        fence: u32,
    },
}

/// The claim's verdict on one job, awaited wherever it matters; `None` when the claim failed.
pub type Verdict = Shared<BoxFuture<'static, Option<Decision>>>;

/// A verdict to be sent once the batch's claim has answered.
pub fn verdict() -> (oneshot::Sender<Option<Decision>>, Verdict) {
    let (tx, rx) = oneshot::channel();
    (tx, async move { rx.await.ok().flatten() }.boxed().shared())
}

/// The verdict, if it does not let this worker run the job.
async fn refusal(verdict: &Verdict) -> Option<Option<Decision>> {
    let v = verdict.clone().await;
    (!matches!(v, Some(Decision::Run { .. }))).then_some(v)
}

/// Resolves with the run's fence once the claim lets this worker run the job; never if it
/// does not.
async fn claimed(verdict: &Verdict) -> u32 {
    match verdict.clone().await {
        Some(Decision::Run { fence }) => fence,
        _ => std::future::pending().await,
    }
}

/// Resolves with the verdict if it does not let this worker run the job; never otherwise.
async fn refused(verdict: &Verdict) -> Option<Decision> {
    match refusal(verdict).await {
        Some(v) => v,
        None => std::future::pending().await,
    }
}

/// How the engine request ended, or why it stopped.
enum Race {
    /// The client cancelled (or the drain timed out).
    Cancelled,
    /// The claim refused the job while its engine request was starting.
    Refused(Option<Decision>),
    /// The engine request ended (or timed out).
    Done(Result<Outcome, tokio::time::error::Elapsed>),
}

/// Why a running job was told to stop (set before its cancel token fires).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Its client cancelled.
    Cancelled,
    /// Another run owns the job now, or Redis lost its state.
    Lost,
    /// The gateway that owns it is gone.
    GatewayGone,
    /// The worker is shutting down and the drain timed out.
    Drain,
}

/// Runs a pulled job to its end. A job marked `early` starts its engine request while the claim
/// is on its way, but nothing about it reaches Redis or the client before the claim lets this
/// worker run it; a refusal drops the engine request, which aborts it. `stop` says why `cancel`
/// fired. Returns whether the engine request was made.
pub async fn run(
    ctx: Arc<Ctx>,
    pulled: Pulled,
    verdict: Verdict,
    cancel: CancellationToken,
    stop: Arc<std::sync::Mutex<Option<Stop>>>,
) -> bool {
    let Pulled {
        entry_id,
        job,
        size,
        pulled_ms: claimed_ms,
        reclaimed,
        early,
    } = pulled;
    let sender = Sender::new(&job.id);
    if !early && let Some(v) = refusal(&verdict).await {
        refuse(&ctx, &entry_id, &job, size, &sender, v).await;
        return false;
    }
    if let Some(Decision::Run { fence }) = verdict.clone().now_or_never().flatten()
        && job.crashed_on == ctx.id
        && ctx.bounce(&job.id)
    {
        // It crashed this worker's engine last time: let another replica try first (once).
        tracing::info!("job crashed this engine before; handing it to another replica");
        crate::telemetry::job(&ctx, "bounced");
        if let Err(e) = put_back(&ctx, &entry_id, job, fence, &sender).await {
            tracing::warn!(error = %e, "cannot hand the job back");
        }
        return false;
    }
    let started = tokio::time::Instant::now();
    let mut head_sent = false;
    let race = tokio::select! {
        biased;
        _ = cancel.cancelled() => Race::Cancelled,
        v = refused(&verdict) => Race::Refused(v),
        r = tokio::time::timeout(ctx.cfg.engine_request_timeout, execute(&ctx, &job, claimed_ms, &mut head_sent, &verdict, &sender)) => Race::Done(r),
    };
    let refused = match race {
        Race::Refused(v) => Some(v),
        _ => refusal(&verdict).await,
    };
    if let Some(v) = refused {
        refuse(&ctx, &entry_id, &job, size, &sender, v).await;
        return true;
    }
    let fence = claimed(&verdict).await;
    if reclaimed {
        crate::telemetry::job(&ctx, "reclaimed");
    }
    tracing::debug!(
        queued_ms = claimed_ms.saturating_sub(job.enqueued_ms),
        fence,
        "claimed"
    );
    let outcome = match race {
        Race::Done(r) => Some(r),
        Race::Cancelled | Race::Refused(_) => None,
    };
    let why = *stop.lock().unwrap_or_else(|p| p.into_inner());
    let outcome = match outcome {
        Some(Ok(o)) => o,
        Some(Err(_)) => Outcome::Done(Some(fail(
            &ctx,
            ErrorCode::UpstreamError,
            "the engine took too long",
        ))),
        None => match why {
            // Shutting down with the job unfinished: give it to another worker if the client
            // has not seen anything yet.
            Some(Stop::Drain) if head_sent => Outcome::Done(Some(fail(
                &ctx,
                ErrorCode::UpstreamError,
                "the worker shut down mid-answer",
            ))),
            Some(Stop::Drain) => retry("worker shut down".into()),
            Some(Stop::Lost) => {
                tracing::warn!("job taken over or lost by the queue; engine request dropped");
                Outcome::Lost
            }
            Some(Stop::GatewayGone) => {
                tracing::info!("job's gateway is gone; engine request dropped");
                Outcome::Gone
            }
            Some(Stop::Cancelled) | None => {
                tracing::info!("job cancelled by its client; engine request dropped");
                Outcome::Gone
            }
        },
    };
    crate::telemetry::engine_duration(&ctx, started.elapsed());
    let max_crashes = ctx.max_crash_retries;
    crate::telemetry::job(
        &ctx,
        match &outcome {
            Outcome::Done(Some(ReplyEvent::Fail {
                code: ErrorCode::ResponseTooLarge,
                ..
            })) => "too_large",
            Outcome::Done(Some(ReplyEvent::Fail { .. })) => "engine_error",
            Outcome::Done(Some(ReplyEvent::Full { status, .. })) if *status >= 400 => {
                "engine_rejected"
            }
            Outcome::Done(_) => "ok",
            Outcome::Retry { crash: true, .. } if job.crashes >= max_crashes => "engine_crashed",
            Outcome::Retry { crash: true, .. } => "crash_requeued",
            Outcome::Retry { .. } if job.attempt >= ctx.max_attempts => "engine_error",
            Outcome::Retry { .. } => "requeued",
            Outcome::Gone => "cancelled",
            Outcome::Lost => "lost",
        },
    );
    let pool = &ctx.pool;
    let run = (ctx.id.as_str(), fence);
    let reply = match &outcome {
        Outcome::Done(event) => event.clone().map(|event| sender.reply(fence, event)),
        _ => None,
    };
    let (c, outcome, entry_id, job, reply, sender) =
        (&*ctx, &outcome, &entry_id, &job, reply.as_ref(), &sender);
    let result = settle(c, move || async move {
        match outcome {
            Outcome::Done(_) | Outcome::Gone => c
                .redis
                .finish(pool, entry_id, &job.reply_to, reply, &job.id, run, size)
                .await
                .map(|_| ()),
            Outcome::Lost => Ok(()),
            Outcome::Retry { reason, crash } => {
                give_back(
                    c,
                    entry_id,
                    job.clone(),
                    size,
                    fence,
                    sender,
                    reason.clone(),
                    *crash,
                )
                .await
            }
        }
    })
    .await;
    if let Err(e) = result {
        // The entry stays pending under this worker; its state expires after `state_ttl`.
        tracing::error!(error = %e, "cannot report the job's end to redis; giving up");
    }
    tracing::info!(
        queue_ms = claimed_ms.saturating_sub(job.enqueued_ms),
        engine_ms = started.elapsed().as_millis() as u64,
        "finished"
    );
    true
}

/// Reports a job's end, retrying while Redis cannot take it (restarting, frozen). Until the
/// report lands, the job's entry stays pending under this worker, which is alive, so no reclaim
/// would ever settle it and its client would wait in silence. The scripts are fenced, so
/// retrying a report that did land changes nothing (a repeated reply event is dropped by its
/// sequence number). Gives up after `state_ttl`, when the job's state is gone anyway.
async fn settle<F, Fut>(ctx: &Ctx, mut report: F) -> Result<(), ssw_queue::QueueError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ssw_queue::QueueError>>,
{
    let deadline = tokio::time::Instant::now() + ctx.state_ttl;
    let mut backoff = Duration::from_millis(100);
    loop {
        match report().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, "cannot report the job's end to redis; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Handles a job the claim did not let this worker run (`None`: the claim failed, so the entry
/// stays pending until a live worker reclaims it).
async fn refuse(
    ctx: &Ctx,
    entry_id: &str,
    job: &Job,
    size: u64,
    sender: &Sender,
    verdict: Option<Decision>,
) {
    match verdict {
        None | Some(Decision::Run { .. } | Decision::Refused(Claim::Run { .. })) => {}
        Some(Decision::GatewayGone { fence }) => {
            tracing::info!("job's gateway is gone; not running it");
            crate::telemetry::job(ctx, "orphaned_gateway");
            let run = (ctx.id.as_str(), fence);
            let _ = ctx
                .redis
                .finish(&ctx.pool, entry_id, &job.reply_to, None, &job.id, run, size)
                .await;
        }
        Some(Decision::Refused(claim @ (Claim::Cancelled | Claim::Expired))) => {
            tracing::debug!(?claim, "skipping a job nobody waits for");
            crate::telemetry::job(
                ctx,
                if claim == Claim::Cancelled {
                    "cancelled"
                } else {
                    "expired"
                },
            );
            let _ = ctx.redis.drop_entry(&ctx.pool, entry_id, size).await;
        }
        Some(Decision::Refused(Claim::Orphaned { fence })) => {
            tracing::warn!("job's worker died mid-answer; telling its client");
            crate::telemetry::job(ctx, "orphaned");
            let reply = sender.reply(
                fence,
                fail(
                    ctx,
                    ErrorCode::UpstreamError,
                    "the worker running this request died mid-answer",
                ),
            );
            // The dead run's state is `output:…`, not this run's: drop the entry directly.
            let _ = ctx.redis.send_reply(&job.reply_to, &reply).await;
            let _ = ctx.redis.drop_entry(&ctx.pool, entry_id, size).await;
        }
    }
}

/// Puts a job the engine failed before output back on the queue, or answers it when it has
/// had its attempts (or crashed engines often enough).
#[allow(clippy::too_many_arguments)] // the run's identity and what went wrong
async fn give_back(
    ctx: &Ctx,
    entry_id: &str,
    mut job: Job,
    size: u64,
    fence: u32,
    sender: &Sender,
    reason: String,
    crash: bool,
) -> Result<(), ssw_queue::QueueError> {
    let last = if crash {
        (job.crashes >= ctx.max_crash_retries).then_some((
            ErrorCode::EngineCrashed,
            "the request crashed the engine on every replica it was tried on",
        ))
    } else {
        (job.attempt >= ctx.max_attempts).then_some((
            ErrorCode::UpstreamError,
            "the engine failed this request on every attempt",
        ))
    };
    if let Some((code, message)) = last {
        if crash {
            // An operator looks for these: the request id and the body's size identify it.
            tracing::error!(attempt = job.attempt, crashes = job.crashes, bytes = size, %reason,
                "request crashed its engine on every replica it was tried on; answering 502 engine_crashed");
        } else {
            tracing::warn!(attempt = job.attempt, %reason, "engine failed the job on every attempt");
        }
        let reply = sender.reply(fence, fail(ctx, code, message));
        let run = (ctx.id.as_str(), fence);
        return ctx
            .redis
            .finish(
                &ctx.pool,
                entry_id,
                &job.reply_to,
                Some(&reply),
                &job.id,
                run,
                size,
            )
            .await
            .map(|_| ());
    }
    job.attempt += 1;
    if crash {
        job.crashes += 1;
        job.crashed_on = ctx.id.clone();
        tracing::warn!(attempt = job.attempt, crashes = job.crashes, %reason,
            "the request may have crashed the engine; putting it back for another replica");
    } else {
        tracing::info!(attempt = job.attempt, %reason, "engine refused the job; putting it back");
    }
    put_back(ctx, entry_id, job, fence, sender).await
}

/// REQUEUE with a new deadline, and tell the gateway the job's new entry.
async fn put_back(
    ctx: &Ctx,
    entry_id: &str,
    mut job: Job,
    fence: u32,
    sender: &Sender,
) -> Result<(), ssw_queue::QueueError> {
    job.deadline_ms =
        ssw_queue::now_ms() + ctx.queue_timeouts[job.tier as usize].as_millis() as u64;
    let run = (ctx.id.as_str(), fence);
    match ctx
        .redis
        .requeue(&ctx.pool, entry_id, &job, run, ctx.state_ttl)
        .await?
    {
        Requeue::Queued(new_entry) => {
            let reply = sender.reply(
                fence,
                ReplyEvent::Requeued {
                    entry_id: new_entry,
                    deadline_ms: job.deadline_ms,
                },
            );
            ctx.redis.send_reply(&job.reply_to, &reply).await?;
        }
        Requeue::Cancelled | Requeue::Lost => {}
    }
    Ok(())
}

/// Waits for `fut`, sending a keep-alive for the job whenever it takes longer than the
/// keep-alive interval, so the gateway knows the job is alive.
async fn with_keepalive<F: Future>(
    ctx: &Ctx,
    job: &Job,
    verdict: &Verdict,
    sender: &Sender,
    fut: F,
) -> Result<F::Output, Outcome> {
    tokio::pin!(fut);
    let every = ctx.cfg.keepalive_interval;
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep(every) => {
                // Nothing is said of a job before its claim; a refusal ends this from `run`.
                let fence = claimed(verdict).await;
                let ka = sender.reply(fence, ReplyEvent::KeepAlive);
                match ctx.redis.send_reply(&job.reply_to, &ka).await {
                    Ok(true) => {}
                    Ok(false) => return Err(Outcome::Gone),
                    Err(e) => tracing::warn!(error = %e, "keep-alive not sent"),
                }
            }
        }
    }
}

async fn execute(
    ctx: &Ctx,
    job: &Job,
    claimed_ms: u64,
    head_sent: &mut bool,
    verdict: &Verdict,
    sender: &Sender,
) -> Outcome {
    // The engine's own model name: during a rollout the pool's replicas serve two. A job for
    // a LoRA adapter names the adapter, which the engine serves under that name.
    let sent_model = ctx.engine_state.model().map(|m| m.name);
    let body = if job.adapter.is_empty() {
        sent_model
            .as_deref()
            .and_then(|name| ssw_protocol::chat::with_model(&job.body, name))
            .unwrap_or_else(|| job.body.clone())
    } else {
        job.body.clone()
    };
    let request = ctx
        .engine
        .http
        .post(format!("{}{}", ctx.engine.base, job.endpoint.path()))
        .header("content-type", "application/json")
        .header("x-request-id", &job.request_id)
        .body(body)
        .send();
    let resp = match with_keepalive(ctx, job, verdict, sender, request).await {
        Err(o) => return o,
        Ok(Err(e)) => {
            let detail = error_chain(&e);
            // Stop pulling until a probe finds the engine healthy again.
            ctx.engine_state.set_up(false, Some(detail.clone()));
            // A refused connection reached no engine; anything else (reset, closed without an
            // answer) happened while the engine had the request.
            return if e.is_connect() {
                retry(detail)
            } else {
                crashed(detail)
            };
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    if status >= 500 {
        // The detail goes to the log only, cut short: the body may be anything.
        let body = read_capped(resp, 4096)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        return retry(format!(
            "engine answered {status}: {}",
            ssw_protocol::chat::quote(&String::from_utf8_lossy(&body))
        ));
    }
    if status == 404 {
        // The request named the model the engine served at the last probe. If it serves
        // another now (restarted or reloaded under the worker), the job runs again with the new
        // name; any other 404 is the engine's answer, passed on.
        // Compared with the name this request carried: the probe may have read the new one
        // since it was sent.
        if let Ok((m, held)) = ctx.engine.served_model(Duration::from_secs(5)).await {
            if sent_model.as_ref() != Some(&m.name) {
                let reason = format!("engine answered 404: it serves {} now", m.name);
                ctx.engine_state.set_model(Some(m));
                return retry(reason);
            }
            // A routed adapter the engine lost (restarted between two probes): load it and
            // run the job again; if it cannot be loaded, the engine's 404 stands.
            let source = ctx
                .engine_state
                .routed()
                .into_iter()
                .find(|(a, _)| *a == job.adapter)
                .map(|(_, s)| s);
            if let Some(source) = source
                && !held.contains(&job.adapter)
            {
                let load = ctx
                    .engine
                    .load_adapter(&ctx.engine_state, &job.adapter, &source);
                match with_keepalive(ctx, job, verdict, sender, load).await {
                    Err(o) => return o,
                    Ok(Err(_)) => {}
                    Ok(Ok(_)) => {
                        return retry(format!(
                            "engine answered 404: it had lost adapter {}; loaded again",
                            job.adapter
                        ));
                    }
                }
            }
        }
    }
    if status >= 400 || !job.stream {
        let max = ctx.cfg.max_response_bytes.bytes() as usize;
        let body = match with_keepalive(ctx, job, verdict, sender, read_capped(resp, max)).await {
            Err(o) => return o,
            Ok(Err(e)) => {
                ctx.engine_state
                    .set_up(false, Some("the engine broke off an answer".into()));
                return crashed(format!("engine response cut short: {}", error_chain(&e)));
            }
            Ok(Ok(None)) => {
                tracing::warn!(
                    max,
                    "engine answer exceeds worker.max_response_bytes; dropped"
                );
                return Outcome::Done(Some(too_large(ctx)));
            }
            Ok(Ok(Some(b))) => b,
        };
        let body = if status >= 400 {
            tracing::info!(status, "engine rejected the request");
            ErrorEnvelope::from_engine(status, &body).to_json()
        } else {
            body
        };
        return Outcome::Done(Some(ReplyEvent::Full {
            status,
            worker: ctx.id.clone(),
            claimed_ms,
            body,
        }));
    }
    stream_body(ctx, job, claimed_ms, resp, head_sent, verdict, sender).await
}

/// Forwards the engine's SSE bytes. The response is committed (head sent, job marked as
/// answered) only with the first chunk: until then nothing reached the client, so if this
/// worker dies during prefill another one may run the job from the start.
///
/// Reading the engine and writing to Redis overlap: at most one reply write is in flight, and
/// whatever the engine sends meanwhile is coalesced into the next one. A fast engine thus costs
/// few Redis writes per stream, a slow one gets each token forwarded at once.
async fn stream_body(
    ctx: &Ctx,
    job: &Job,
    claimed_ms: u64,
    resp: reqwest::Response,
    head_sent: &mut bool,
    verdict: &Verdict,
    sender: &Sender,
) -> Outcome {
    type Write<'a> =
        std::pin::Pin<Box<dyn Future<Output = Result<Commit, ssw_queue::QueueError>> + Send + 'a>>;
    let mut body = resp.bytes_stream();
    let every = ctx.cfg.keepalive_interval;
    let max = ctx.cfg.max_response_bytes.bytes() as usize;
    let mut received = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut ended = false;
    let mut broken: Option<String> = None;
    let mut inflight: Option<Write<'_>> = None;
    let mut committing = false;
    let mut last_write = tokio::time::Instant::now();
    loop {
        if inflight.is_none() && !pending.is_empty() {
            let redis = ctx.redis.clone();
            let reply_to = job.reply_to.clone();
            let data = std::mem::take(&mut pending);
            inflight = Some(if *head_sent {
                let fence = claimed(verdict).now_or_never().unwrap_or_default();
                let reply = sender.reply(fence, ReplyEvent::Data(data));
                let write: Write<'_> = Box::pin(async move {
                    Ok(match redis.send_reply(&reply_to, &reply).await? {
                        true => Commit::Committed,
                        false => Commit::GatewayGone,
                    })
                });
                write
            } else {
                committing = true;
                let (pool, id, ttl) = (ctx.pool.clone(), ctx.id.clone(), ctx.state_ttl);
                let verdict = verdict.clone();
                let worker = ctx.id.clone();
                Box::pin(async move {
                    let fence = claimed(&verdict).await;
                    let head = sender.reply(
                        fence,
                        ReplyEvent::Head {
                            worker,
                            claimed_ms,
                            data,
                        },
                    );
                    redis
                        .commit_reply(&pool, &id, fence, &reply_to, &head, ttl)
                        .await
                })
            });
        }
        if inflight.is_none() && pending.is_empty() {
            if let Some(reason) = broken {
                if !*head_sent {
                    ctx.engine_state
                        .set_up(false, Some("the engine broke off a stream".into()));
                    return crashed(format!("engine stream broke before output: {reason}"));
                }
                tracing::warn!(error = %reason, "engine stream broke");
                return Outcome::Done(Some(fail(
                    ctx,
                    ErrorCode::UpstreamError,
                    "the engine failed mid-answer",
                )));
            }
            if ended {
                return Outcome::Done(Some(ReplyEvent::End));
            }
        }
        tokio::select! {
            next = body.next(), if !ended && broken.is_none() && pending.len() < COALESCE_MAX => match next {
                None => ended = true,
                Some(Ok(c)) => {
                    received += c.len();
                    if received > max {
                        // Dropping the engine request aborts it in vLLM.
                        tracing::warn!(max, "engine stream exceeds worker.max_response_bytes; ended");
                        return Outcome::Done(Some(too_large(ctx)));
                    }
                    pending.extend_from_slice(&c);
                }
                Some(Err(e)) => broken = Some(error_chain(&e)),
            },
            written = async { inflight.as_mut().expect("guarded by the precondition").await }, if inflight.is_some() => {
                inflight = None;
                last_write = tokio::time::Instant::now();
                match written {
                    Ok(Commit::Committed) if committing => {
                        committing = false;
                        *head_sent = true;
                    }
                    Ok(Commit::Committed) => {}
                    Ok(Commit::GatewayGone) => return Outcome::Gone,
                    Ok(Commit::Lost) => return Outcome::Lost,
                    Err(e) if committing => return retry(format!("cannot send the head: {e}")),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot forward a chunk");
                        return Outcome::Done(Some(fail(ctx, ErrorCode::UpstreamError, "the worker lost its queue mid-answer")));
                    }
                }
            }
            _ = tokio::time::sleep_until(last_write + every), if inflight.is_none() => {
                let fence = claimed(verdict).await;
                let ka = sender.reply(fence, ReplyEvent::KeepAlive);
                if let Ok(false) = ctx.redis.send_reply(&job.reply_to, &ka).await {
                    return Outcome::Gone;
                }
                last_write = tokio::time::Instant::now();
            }
        }
    }
}

fn too_large(ctx: &Ctx) -> ReplyEvent {
    fail(
        ctx,
        ErrorCode::ResponseTooLarge,
        "the answer exceeds the platform's size limit",
    )
}

/// How long job state markers live (longer than any job runs).
pub fn state_ttl(cfg: &ssw_config::WorkerConfig) -> Duration {
    cfg.engine_request_timeout + Duration::from_secs(600)
}

/// Runs a fast-lane job (`/tokenize`, `/detokenize`): one engine call, its answer (or refusal)
/// sent back as a complete answer. Nothing is retried or reclaimed: the gateway's deadline
/// tells its client when no answer comes.
pub async fn run_fast(ctx: &Ctx, job: Job) {
    let claimed_ms = ssw_queue::now_ms();
    if job.deadline_ms <= claimed_ms {
        tracing::debug!(job = %job.id, "fast job past its deadline; dropped");
        return;
    }
    let model = ctx.engine_state.model().map(|m| m.name);
    let body = model
        .as_deref()
        .and_then(|name| ssw_protocol::chat::with_model(&job.body, name))
        .unwrap_or_else(|| job.body.clone());
    let wait = Duration::from_millis(job.deadline_ms - claimed_ms);
    let sent = ctx
        .engine
        .http
        .post(format!("{}{}", ctx.engine.base, job.endpoint.path()))
        .header("content-type", "application/json")
        .header("x-request-id", &job.request_id)
        .timeout(wait)
        .body(body)
        .send()
        .await;
    let max = ctx.cfg.max_response_bytes.bytes() as usize;
    let event = match sent {
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), job = %job.id, "fast job: the engine did not answer");
            fail(ctx, ErrorCode::UpstreamError, "the engine did not answer")
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            match read_capped(resp, max).await {
                Ok(Some(body)) if status < 400 => ReplyEvent::Full {
                    status,
                    worker: ctx.id.clone(),
                    claimed_ms,
                    body,
                },
                Ok(Some(body)) if status < 500 => ReplyEvent::Full {
                    status,
                    worker: ctx.id.clone(),
                    claimed_ms,
                    body: ErrorEnvelope::from_engine(status, &body).to_json(),
                },
                Ok(Some(_)) => fail(ctx, ErrorCode::UpstreamError, "the engine failed"),
                Ok(None) => too_large(ctx),
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), job = %job.id, "fast job: answer cut short");
                    fail(
                        ctx,
                        ErrorCode::UpstreamError,
                        "the engine's answer was cut short",
                    )
                }
            }
        }
    };
    let reply = Sender::new(&job.id).reply(1, event);
    if let Err(e) = ctx.redis.send_reply(&job.reply_to, &reply).await {
        tracing::warn!(error = %e, job = %job.id, "fast job: cannot send the answer");
    }
}
