//! Running one job on the engine and reporting back.
//!
//! Outcomes: the engine's answer goes back chunk by chunk (streaming) or whole; an engine 4xx
//! goes back as an OpenAI error with the engine's status; a refused connection or a 5xx before
//! any output puts the job back on the queue for another worker (bounded attempts, then 502);
//! a failure after output is an explicit error event. A cancelled job's engine request is
//! dropped, which closes the connection: vLLM aborts a request whose client goes away.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use ssw_protocol::error::{ErrorCode, ErrorEnvelope};
use ssw_protocol::job::Job;
use ssw_protocol::reply::{Reply, ReplyEvent};
use ssw_queue::consumer::Claim;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Ctx;
use crate::engine::error_chain;

/// How a job ended, as far as the queue is concerned.
enum Outcome {
    /// Send this last event (if any) and remove the job.
    Done(Option<ReplyEvent>),
    /// Nothing reached the client; another worker may try.
    Retry(String),
    /// The client or its gateway is gone, or the job was aborted: remove it silently.
    Gone,
}

fn fail(ctx: &Ctx, code: ErrorCode, message: &str) -> ReplyEvent {
    ReplyEvent::fail(code, ctx.id.clone(), message)
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
    /// When this worker pulled it (reported to the gateway as the claim time).
    pub pulled_ms: u64,
    /// Taken over from a worker that died.
    pub reclaimed: bool,
    /// Start the engine request before the claim's verdict arrives.
    pub early: bool,
}

/// The claim's verdict on one job, awaited wherever it matters; `None` when the claim failed.
pub type Verdict = Shared<BoxFuture<'static, Option<Claim>>>;

/// A verdict to be sent once the batch's claim has answered.
pub fn verdict() -> (oneshot::Sender<Option<Claim>>, Verdict) {
    let (tx, rx) = oneshot::channel();
    (tx, async move { rx.await.ok().flatten() }.boxed().shared())
}

/// The verdict, if it does not let this worker run the job.
async fn refusal(verdict: &Verdict) -> Option<Option<Claim>> {
    let v = verdict.clone().await;
    (v != Some(Claim::Run)).then_some(v)
}

/// Resolves once the claim lets this worker run the job; never if it does not.
async fn claimed(verdict: &Verdict) {
    if refusal(verdict).await.is_some() {
        std::future::pending::<()>().await;
    }
}

/// Resolves with the verdict if it does not let this worker run the job; never otherwise.
async fn refused(verdict: &Verdict) -> Option<Claim> {
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
    Refused(Option<Claim>),
    /// The engine request ended (or timed out).
    Done(Result<Outcome, tokio::time::error::Elapsed>),
}

/// Runs a pulled job to its end. A job marked `early` starts its engine request while the claim
/// is on its way, but nothing about it reaches Redis or the client before the claim lets this
/// worker run it; a refusal drops the engine request, which aborts it. Returns whether the
/// engine request was made.
pub async fn run(
    ctx: Arc<Ctx>,
    pulled: Pulled,
    verdict: Verdict,
    cancel: CancellationToken,
) -> bool {
    let Pulled {
        entry_id,
        job,
        pulled_ms: claimed_ms,
        reclaimed,
        early,
    } = pulled;
    if !early && let Some(v) = refusal(&verdict).await {
        refuse(&ctx, &entry_id, &job, v).await;
        return false;
    }
    let started = tokio::time::Instant::now();
    let mut head_sent = false;
    let race = tokio::select! {
        biased;
        _ = cancel.cancelled() => Race::Cancelled,
        v = refused(&verdict) => Race::Refused(v),
        r = tokio::time::timeout(ctx.cfg.engine_request_timeout, execute(&ctx, &job, claimed_ms, &mut head_sent, &verdict)) => Race::Done(r),
    };
    let refused = match race {
        Race::Refused(v) => Some(v),
        _ => refusal(&verdict).await,
    };
    if let Some(v) = refused {
        refuse(&ctx, &entry_id, &job, v).await;
        return true;
    }
    if reclaimed {
        crate::telemetry::job(&ctx, "reclaimed");
    }
    tracing::debug!(
        queued_ms = claimed_ms.saturating_sub(job.enqueued_ms),
        "claimed"
    );
    let outcome = match race {
        Race::Done(r) => Some(r),
        Race::Cancelled | Race::Refused(_) => None,
    };
    let outcome = match outcome {
        Some(Ok(o)) => o,
        Some(Err(_)) => Outcome::Done(Some(fail(
            &ctx,
            ErrorCode::UpstreamError,
            "the engine took too long",
        ))),
        None if ctx.drain_aborted() => {
            // Shutting down with the job unfinished: give it to another worker if the client
            // has not seen anything yet.
            if head_sent {
                Outcome::Done(Some(fail(
                    &ctx,
                    ErrorCode::UpstreamError,
                    "the worker shut down mid-answer",
                )))
            } else {
                Outcome::Retry("worker shut down".into())
            }
        }
        None => {
            tracing::info!("job cancelled by its client; engine request dropped");
            Outcome::Gone
        }
    };
    crate::telemetry::engine_duration(&ctx, started.elapsed());
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
            Outcome::Retry(_) if job.attempt >= ctx.max_attempts => "engine_error",
            Outcome::Retry(_) => "requeued",
            Outcome::Gone => "cancelled",
        },
    );
    let pool = &ctx.pool;
    let result = match outcome {
        Outcome::Done(event) => {
            let reply = event.map(|event| Reply {
                job: job.id.clone(),
                event,
            });
            ctx.redis
                .finish(pool, &entry_id, &job.reply_to, reply.as_ref(), &job.id)
                .await
                .map(|_| ())
        }
        Outcome::Gone => ctx
            .redis
            .finish(pool, &entry_id, &job.reply_to, None, &job.id)
            .await
            .map(|_| ()),
        Outcome::Retry(reason) => retry(&ctx, &entry_id, job.clone(), reason).await,
    };
    if let Err(e) = result {
        // The entry stays pending; another worker reclaims it after `reclaim_idle`.
        tracing::warn!(error = %e, "cannot report the job's end to redis");
    }
    tracing::info!(
        queue_ms = claimed_ms.saturating_sub(job.enqueued_ms),
        engine_ms = started.elapsed().as_millis() as u64,
        "finished"
    );
    true
}

/// Handles a job the claim did not let this worker run (`None`: the claim failed, so the entry
/// stays pending until a live worker reclaims it).
async fn refuse(ctx: &Ctx, entry_id: &str, job: &Job, verdict: Option<Claim>) {
    match verdict {
        None | Some(Claim::Run) => {}
        Some(claim @ (Claim::Cancelled | Claim::Expired)) => {
            tracing::debug!(?claim, "skipping a job nobody waits for");
            crate::telemetry::job(
                ctx,
                if claim == Claim::Cancelled {
                    "cancelled"
                } else {
                    "expired"
                },
            );
            let _ = ctx.redis.drop_entry(&ctx.pool, entry_id).await;
        }
        Some(Claim::Orphaned) => {
            tracing::warn!("job's worker died mid-answer; telling its client");
            crate::telemetry::job(ctx, "orphaned");
            let reply = Reply {
                job: job.id.clone(),
                event: fail(
                    ctx,
                    ErrorCode::UpstreamError,
                    "the worker running this request died mid-answer",
                ),
            };
            let _ = ctx
                .redis
                .finish(&ctx.pool, entry_id, &job.reply_to, Some(&reply), &job.id)
                .await;
        }
    }
}

async fn retry(
    ctx: &Ctx,
    entry_id: &str,
    mut job: Job,
    reason: String,
) -> Result<(), ssw_queue::QueueError> {
    if job.attempt >= ctx.max_attempts {
        tracing::warn!(attempt = job.attempt, %reason, "engine failed the job on every attempt");
        let reply = Reply {
            job: job.id.clone(),
            event: fail(
                ctx,
                ErrorCode::UpstreamError,
                "the engine failed this request on every attempt",
            ),
        };
        return ctx
            .redis
            .finish(&ctx.pool, entry_id, &job.reply_to, Some(&reply), &job.id)
            .await
            .map(|_| ());
    }
    job.attempt += 1;
    job.deadline_ms = ssw_queue::now_ms() + ctx.queue_timeout.as_millis() as u64;
    tracing::info!(attempt = job.attempt, %reason, "engine refused the job; putting it back");
    if let Some(new_entry) = ctx.redis.requeue(&ctx.pool, entry_id, &job).await? {
        let reply = Reply {
            job: job.id.clone(),
            event: ReplyEvent::Requeued {
                entry_id: new_entry,
                deadline_ms: job.deadline_ms,
            },
        };
        ctx.redis.send_reply(&job.reply_to, &reply).await?;
    }
    Ok(())
}

/// Waits for `fut`, sending a keep-alive for the job whenever it takes longer than the
/// keep-alive interval, so the gateway knows the job is alive.
async fn with_keepalive<F: Future>(
    ctx: &Ctx,
    job: &Job,
    verdict: &Verdict,
    fut: F,
) -> Result<F::Output, Outcome> {
    tokio::pin!(fut);
    let every = ctx.cfg.keepalive_interval;
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = tokio::time::sleep(every) => {
                // Nothing is said of a job before its claim; a refusal ends this from `run`.
                claimed(verdict).await;
                let ka = Reply { job: job.id.clone(), event: ReplyEvent::KeepAlive };
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
) -> Outcome {
    let request = ctx
        .engine
        .http
        .post(format!("{}/v1/chat/completions", ctx.engine.base))
        .header("content-type", "application/json")
        .header("x-request-id", &job.request_id)
        .body(job.body.clone())
        .send();
    let resp = match with_keepalive(ctx, job, verdict, request).await {
        Err(o) => return o,
        Ok(Err(e)) => {
            let detail = error_chain(&e);
            if e.is_connect() {
                // Stop pulling until a probe finds the engine healthy again.
                ctx.engine_state.set_up(false, Some(detail.clone()));
            }
            return Outcome::Retry(detail);
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
        return Outcome::Retry(format!(
            "engine answered {status}: {}",
            ssw_protocol::chat::quote(&String::from_utf8_lossy(&body))
        ));
    }
    if status >= 400 || !job.stream {
        let max = ctx.cfg.max_response_bytes.bytes() as usize;
        let body = match with_keepalive(ctx, job, verdict, read_capped(resp, max)).await {
            Err(o) => return o,
            Ok(Err(e)) => {
                return Outcome::Retry(format!("engine response cut short: {}", error_chain(&e)));
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
    stream_body(ctx, job, claimed_ms, resp, head_sent, verdict).await
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
) -> Outcome {
    type Write =
        std::pin::Pin<Box<dyn Future<Output = Result<bool, ssw_queue::QueueError>> + Send>>;
    let mut body = resp.bytes_stream();
    let every = ctx.cfg.keepalive_interval;
    let max = ctx.cfg.max_response_bytes.bytes() as usize;
    let mut received = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut ended = false;
    let mut broken: Option<String> = None;
    let mut inflight: Option<Write> = None;
    let mut committing = false;
    let mut last_write = tokio::time::Instant::now();
    loop {
        if inflight.is_none() && !pending.is_empty() {
            let redis = ctx.redis.clone();
            let reply_to = job.reply_to.clone();
            let data = std::mem::take(&mut pending);
            inflight = Some(if *head_sent {
                let reply = Reply {
                    job: job.id.clone(),
                    event: ReplyEvent::Data(data),
                };
                Box::pin(async move { redis.send_reply(&reply_to, &reply).await })
            } else {
                committing = true;
                let head = Reply {
                    job: job.id.clone(),
                    event: ReplyEvent::Head {
                        worker: ctx.id.clone(),
                        claimed_ms,
                        data,
                    },
                };
                let (pool, id, ttl) = (ctx.pool.clone(), ctx.id.clone(), ctx.state_ttl);
                let verdict = verdict.clone();
                Box::pin(async move {
                    claimed(&verdict).await;
                    redis.commit_reply(&pool, &id, &reply_to, &head, ttl).await
                })
            });
        }
        if inflight.is_none() && pending.is_empty() {
            if let Some(reason) = broken {
                if !*head_sent {
                    return Outcome::Retry(format!("engine stream broke before output: {reason}"));
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
                    Ok(true) if committing => {
                        committing = false;
                        *head_sent = true;
                    }
                    Ok(true) => {}
                    Ok(false) => return Outcome::Gone,
                    Err(e) if committing => return Outcome::Retry(format!("cannot send the head: {e}")),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot forward a chunk");
                        return Outcome::Done(Some(fail(ctx, ErrorCode::UpstreamError, "the worker lost its queue mid-answer")));
                    }
                }
            }
            _ = tokio::time::sleep_until(last_write + every), if inflight.is_none() => {
                claimed(verdict).await;
                let ka = Reply { job: job.id.clone(), event: ReplyEvent::KeepAlive };
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
