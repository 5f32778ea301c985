//! `POST /v1/chat/completions`: parse, route, admit, then answer from the worker's replies.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use ssw_protocol::chat::ChatRequest;
use ssw_protocol::error::{ErrorCode, ErrorEnvelope};
use ssw_protocol::job::Job;
use ssw_protocol::reply::ReplyEvent;
use ssw_queue::producer::Enqueued;
use tracing::Instrument;

use super::{RequestId, X_SSW_POOL, X_SSW_WORKER};
use crate::error::{ApiError, json_response, sse_error};
use crate::lifecycle::{Next, Ticket};
use crate::routing::{Pool, RouteError};
use crate::state::AppState;

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Held until the job is on the queue (or refused): see `state::ADMISSIONS`. The semaphore is
    // never closed.
    let turn = state.admissions.acquire().await.ok();
    let (pool, req) = match admit(&state, &headers, body) {
        Ok(x) => x,
        Err((pool, stream, err)) => {
            let name = pool.as_ref().map_or("none", |p| &*p.name);
            crate::metrics::request_done(name, stream, err.code.status(), err.code.as_str());
            let mut resp = err.into_response();
            if let Some(p) = pool {
                set_header(&mut resp, &X_SSW_POOL, &p.name);
            }
            return resp;
        }
    };
    let stream = req.stream;
    let arrived = tokio::time::Instant::now();
    let now = ssw_queue::now_ms();
    let deadline_ms = now + pool.queue_timeout.as_millis() as u64;
    let job = Job {
        id: state.next_job_id(),
        request_id: rid.0,
        reply_to: state.replies.key().to_owned(),
        enqueued_ms: now,
        deadline_ms,
        stream,
        attempt: 1,
        body: req.into_engine_body(&pool.served_model, &pool.defaults),
    };
    let span = tracing::info_span!(
        "request",
        request_id = %job.request_id,
        job = %job.id,
        pool = %pool.name,
        worker = tracing::field::Empty,
    );
    let mut ticket = Ticket::register(
        &state,
        pool.name.clone(),
        job.id.clone(),
        (arrived, now, deadline_ms),
        stream,
        span.clone(),
    );
    let mut resp = async {
        let refused = match state.redis.enqueue(&pool.name, &job, pool.max_queue).await {
            Ok(Enqueued::Accepted(entry)) => {
                tracing::debug!(%entry, deadline_ms, "enqueued");
                ticket.enqueued(entry);
                None
            }
            Ok(Enqueued::Full { backlog }) => Some(
                ApiError::new(
                    ErrorCode::QueueFull,
                    format!(
                        "pool `{}` has {backlog} requests waiting; retry later",
                        pool.name
                    ),
                )
                .retry_after(state.config.gateway.retry_after),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot enqueue");
                // The enqueue may have happened before the connection failed or timed out;
                // the client is told it did not, so make sure no worker runs it.
                ticket.cancel_unconfirmed();
                Some(ApiError::new(
                    ErrorCode::QueueUnavailable,
                    "the queue is unavailable; retry later",
                ))
            }
        };
        drop(job);
        drop(turn);
        match refused {
            Some(err) => {
                ticket.finish();
                ticket.record(err.code.status(), err.code.as_str());
                err.into_response()
            }
            None if stream => stream_response(ticket).await,
            None => full_response(ticket).await,
        }
    }
    .instrument(span)
    .await;
    set_header(&mut resp, &X_SSW_POOL, &pool.name);
    resp
}

type Refusal = (Option<Arc<Pool>>, bool, ApiError);

/// Everything that can refuse a request before it is enqueued.
fn admit(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Arc<Pool>, ChatRequest), Refusal> {
    if state.is_draining() {
        let err = ApiError::new(
            ErrorCode::ShuttingDown,
            "the gateway is shutting down; retry",
        );
        return Err((None, false, err));
    }
    if !state.replies.is_open() {
        let err = ApiError::new(
            ErrorCode::QueueUnavailable,
            "the gateway is still connecting to the queue; retry later",
        );
        return Err((None, false, err));
    }
    let body = body.map_err(|rej| {
        let err = if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::RequestTooLarge,
                format!("request body exceeds {}", state.config.gateway.max_body),
            )
        } else {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("cannot read request body: {rej}"),
            )
        };
        (None, false, err)
    })?;
    let req = ChatRequest::parse(&body).map_err(|e| (None, false, ApiError::from(e)))?;
    let header = headers.get(&X_SSW_POOL).and_then(|v| v.to_str().ok());
    let pool = state
        .router
        .resolve(header, req.model.as_deref())
        .map_err(|e| {
            let err = match e {
                RouteError::Unknown(m) => {
                    let mut err = ApiError::new(
                        ErrorCode::ModelNotFound,
                        format!("the model `{m}` does not exist; see /v1/models"),
                    );
                    err.param = Some(
                        if header.is_some() {
                            "x-ssw-pool"
                        } else {
                            "model"
                        }
                        .into(),
                    );
                    err
                }
                RouteError::Missing => {
                    let mut err = ApiError::new(
                        ErrorCode::InvalidRequest,
                        "`model` is required (or an `x-ssw-pool` header)",
                    );
                    err.param = Some("model".into());
                    err
                }
            };
            (None, req.stream, err)
        })?
        .clone();
    Ok((pool, req))
}

fn set_header(resp: &mut Response, name: &axum::http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name.clone(), v);
    }
}

/// The error code inside a worker's error body, for metrics and `Retry-After`.
fn code_of(body: &[u8]) -> Option<ErrorCode> {
    let env: ErrorEnvelope = serde_json::from_slice(body).ok()?;
    ErrorCode::parse(env.error.code.as_deref()?)
}

/// A complete answer from a worker (`Full` or `Fail`), as an HTTP response.
fn worker_response(ticket: &mut Ticket, status: u16, worker: &str, body: Vec<u8>) -> Response {
    ticket.finish();
    let code = if status < 400 {
        "ok"
    } else {
        code_of(&body).map_or("engine_rejected", ErrorCode::as_str)
    };
    ticket.record(status, code);
    let retryable = status >= 400 && code_of(&body).is_some_and(ErrorCode::retryable);
    let mut resp = json_response(status, body);
    if retryable {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if !worker.is_empty() {
        set_header(&mut resp, &X_SSW_WORKER, worker);
    }
    resp
}

fn failed(ticket: &mut Ticket, err: ApiError) -> Response {
    ticket.record(err.code.status(), err.code.as_str());
    err.into_response()
}

fn unexpected(ticket: &mut Ticket, what: &str) -> Response {
    tracing::error!(what, "unexpected reply event");
    failed(
        ticket,
        ApiError::new(ErrorCode::InternalError, "internal error"),
    )
}

async fn full_response(mut ticket: Ticket) -> Response {
    match ticket.next().await {
        Next::Event(ReplyEvent::Full {
            status,
            worker,
            body,
            ..
        })
        | Next::Event(ReplyEvent::Fail {
            status,
            worker,
            body,
        }) => worker_response(&mut ticket, status, &worker, body),
        Next::Event(_) => unexpected(&mut ticket, "stream event for a non-streaming job"),
        Next::Failed(err) => failed(&mut ticket, err),
    }
}

async fn stream_response(mut ticket: Ticket) -> Response {
    let (worker, first) = match ticket.next().await {
        Next::Event(ReplyEvent::Head { worker, data, .. }) => (worker, data),
        Next::Event(ReplyEvent::Full {
            status,
            worker,
            body,
            ..
        })
        | Next::Event(ReplyEvent::Fail {
            status,
            worker,
            body,
        }) => return worker_response(&mut ticket, status, &worker, body),
        Next::Event(_) => return unexpected(&mut ticket, "stream data before its head"),
        Next::Failed(err) => return failed(&mut ticket, err),
    };
    // The head's bytes first, in the same write as the response head.
    let first = (!first.is_empty()).then(|| Ok::<_, std::convert::Infallible>(Bytes::from(first)));
    let rest = futures::stream::unfold(Some(ticket), |ticket| async move {
        let mut ticket = ticket?;
        loop {
            return match ticket.next().await {
                Next::Event(ReplyEvent::Data(d)) => Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(d)),
                    Some(ticket),
                )),
                Next::Event(ReplyEvent::End) => {
                    ticket.finish();
                    ticket.record(200, "ok");
                    None
                }
                Next::Event(ReplyEvent::Fail { body, .. }) => {
                    ticket.finish();
                    let code = code_of(&body).map_or("upstream_error", ErrorCode::as_str);
                    ticket.record(200, code);
                    Some((Ok(sse_error(&body)), None))
                }
                Next::Failed(err) => {
                    // Not finished: dropping the ticket cancels the job, whose worker is silent.
                    ticket.record(200, err.code.as_str());
                    Some((Ok(err.sse()), None))
                }
                Next::Event(other) => {
                    tracing::warn!(event = ?other, "ignoring unexpected event mid-stream");
                    continue;
                }
            };
        }
    });
    let body = futures::stream::iter(first).chain(rest);
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_header(&mut resp, &X_SSW_WORKER, &worker);
    resp
}
