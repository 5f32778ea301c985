//! `POST /v1/chat/completions`, `POST /v1/completions` and `POST /v1/responses`: read the body,
//! admit it, then answer from the worker's replies.

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ssw_protocol::error::ErrorCode;
use ssw_protocol::reply::ReplyEvent;
use tracing::Instrument;

use ssw_protocol::chat::{with_service_tier, with_service_tier_sse};
use ssw_protocol::job::Endpoint;
use ssw_protocol::tier::Tier;

use super::{
    RequestId, Tenant, X_SSW_POOL, X_SSW_QUEUE_MS, X_SSW_ROUTE, X_SSW_ROUTING_VERSION, X_SSW_TIER,
    X_SSW_VARIANT, X_SSW_WORKER,
};
use crate::admission::{self, Admitted, Refusal};
use crate::error::{ApiError, json_response, sse_error_for};
use crate::lifecycle::{Next, Ticket};
use crate::responses::{Pending, Tap};
use crate::state::AppState;

/// How an answer is written: its endpoint's stream format, and for the Responses API the store
/// its response goes to.
struct Answer {
    endpoint: Endpoint,
    tier: Tier,
    keep: Option<(AppState, Pending)>,
}

impl Answer {
    /// Stores a Responses answer (the response object the client got), if one is to be kept.
    async fn keep(&self, response: &[u8]) {
        if let Some((state, pending)) = &self.keep {
            crate::responses::keep(state, pending, response).await;
        }
    }
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(tenant): Extension<Tenant>,
    req: Request,
) -> Response {
    generate(state, rid, tenant, req, Endpoint::Chat).await
}

/// `POST /v1/completions`: the same lifecycle; the engine's `/v1/completions` answers.
pub async fn completions(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(tenant): Extension<Tenant>,
    req: Request,
) -> Response {
    generate(state, rid, tenant, req, Endpoint::Completions).await
}

/// `POST /v1/responses`: the same lifecycle; the engine's `/v1/responses` answers, the gateway
/// keeps the response ([`crate::responses`]).
pub async fn responses(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(tenant): Extension<Tenant>,
    req: Request,
) -> Response {
    generate(state, rid, tenant, req, Endpoint::Responses).await
}

/// Reads the body, admits it, then answers from the worker's replies.
async fn generate(
    state: AppState,
    rid: RequestId,
    tenant: Tenant,
    req: Request,
    endpoint: Endpoint,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match super::body::read(&state, &parts.headers, body).await {
        Ok(b) => b,
        Err(error) => {
            return refuse(Refusal::new(error));
        }
    };
    let super::body::ReadBody { bytes, budget } = body;
    let admitted =
        admission::admit(&state, &parts.headers, bytes, rid.0, &tenant.0, endpoint).await;
    // The job is on the queue (or refused): the body's budget is free again.
    drop(budget);
    match admitted {
        Err(r) => refuse(r),
        Ok(Admitted {
            pool,
            ticket,
            stream,
            tier,
            route,
            routing_version,
            rate,
            span,
            response,
        }) => {
            let answer = Answer {
                endpoint,
                tier,
                keep: response.map(|p| (state.clone(), p)),
            };
            let mut resp = async {
                if stream {
                    stream_response(ticket, answer).await
                } else {
                    full_response(ticket, answer).await
                }
            }
            .instrument(span)
            .await;
            set_header(&mut resp, &X_SSW_POOL, &pool.name);
            set_header(&mut resp, &X_SSW_TIER, tier.game_name());
            set_route_headers(&mut resp, &route);
            set_header(
                &mut resp,
                &X_SSW_ROUTING_VERSION,
                &routing_version.to_string(),
            );
            if let Some(r) = rate {
                r.apply(resp.headers_mut());
            }
            resp
        }
    }
}

fn refuse(r: Refusal) -> Response {
    if !r.recorded {
        let name = r.pool.as_ref().map_or("none", |p| &*p.name);
        let code = r.error.code;
        crate::metrics::request_done(name, &r.route, r.stream, code.status(), code.as_str());
    }
    let mut resp = r.error.into_response();
    if let Some(p) = r.pool {
        set_header(&mut resp, &X_SSW_POOL, &p.name);
    }
    set_route_headers(&mut resp, &r.route);
    if let Some(rate) = r.rate {
        rate.apply(resp.headers_mut());
    }
    resp
}

/// `x-ssw-route` and `x-ssw-variant` for a request sent to a route.
fn set_route_headers(resp: &mut Response, route: &crate::metrics::RouteLabels) {
    if !route.route.is_empty() {
        set_header(resp, &X_SSW_ROUTE, &route.route);
        set_header(resp, &X_SSW_VARIANT, &route.variant);
    }
}

fn set_header(resp: &mut Response, name: &axum::http::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name.clone(), v);
    }
}

/// A complete answer from a worker (`Full` or `Fail`), as an HTTP response (an answer
/// carrying the `service_tier` that served it; a response of the Responses API stored first);
/// any other event is unexpected here.
async fn worker_response(ticket: &mut Ticket, event: ReplyEvent, answer: &Answer) -> Response {
    let code = event.error_code();
    let (status, worker, body) = match event.into_answer() {
        Ok(answer) => answer,
        Err(other) => return unexpected(ticket, other.kind()),
    };
    ticket.finish();
    ticket.record(status, code.map_or("ok", ErrorCode::as_str));
    let body = match (&answer.keep, status < 300) {
        (Some((_, pending)), true) => {
            let body =
                crate::responses::patch(&body, answer.tier.as_str(), pending.previous.as_deref());
            answer.keep(&body).await;
            body
        }
        (None, true) => with_service_tier(&body, answer.tier.as_str()),
        (_, false) => body,
    };
    let mut resp = json_response(status, body);
    if code.is_some_and(ErrorCode::retryable) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if !worker.is_empty() {
        set_header(&mut resp, &X_SSW_WORKER, &worker);
    }
    set_queue_ms(&mut resp, ticket.queued());
    resp
}

/// `x-ssw-queue-ms`: how long the request waited for a worker (once a worker claimed it).
fn set_queue_ms(resp: &mut Response, queued: Option<std::time::Duration>) {
    if let Some(q) = queued {
        set_header(resp, &X_SSW_QUEUE_MS, &q.as_millis().to_string());
    }
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

async fn full_response(mut ticket: Ticket, answer: Answer) -> Response {
    match ticket.next().await {
        Next::Event(ev @ (ReplyEvent::Full { .. } | ReplyEvent::Fail { .. })) => {
            worker_response(&mut ticket, ev, &answer).await
        }
        Next::Event(_) => unexpected(&mut ticket, "stream event for a non-streaming job"),
        Next::Failed(err) => failed(&mut ticket, err),
    }
}

async fn stream_response(mut ticket: Ticket, answer: Answer) -> Response {
    let (worker, first) = match ticket.next().await {
        Next::Event(ReplyEvent::Head { worker, data, .. }) => (worker, data),
        Next::Event(ev @ (ReplyEvent::Full { .. } | ReplyEvent::Fail { .. })) => {
            return worker_response(&mut ticket, ev, &answer).await;
        }
        Next::Event(_) => return unexpected(&mut ticket, "stream data before its head"),
        Next::Failed(err) => return failed(&mut ticket, err),
    };
    let queued = ticket.queued();
    // A Responses stream passes through a tap (complete events, response objects patched, the
    // final response stored before the chunk that carries it is sent); other streams get
    // `service_tier` in each chunk.
    let tier = answer.tier.as_str();
    let tap = answer
        .keep
        .as_ref()
        .map(|(_, p)| Tap::new(tier, p.previous.clone()));
    let rest = futures::stream::unfold(
        Some((ticket, answer, tap, Some(first))),
        move |s| async move {
            let (mut ticket, answer, mut tap, mut first) = s?;
            loop {
                let next = match first.take() {
                    // The head's bytes first, in the same write as the response head.
                    Some(d) if d.is_empty() => continue,
                    Some(d) => Next::Event(ReplyEvent::Data(d)),
                    None => ticket.next().await,
                };
                return match next {
                    Next::Event(ReplyEvent::Data(d)) => {
                        let out = match tap.as_mut() {
                            Some(t) => {
                                let out = t.pass(&d);
                                if let Some(r) = t.take_final() {
                                    // Stored before the client can read it: a follow-up
                                    // sent once it has finds it.
                                    answer.keep(&r).await;
                                }
                                if out.is_empty() {
                                    continue;
                                }
                                Bytes::from(out)
                            }
                            None => Bytes::from(with_service_tier_sse(&d, tier)),
                        };
                        Some((
                            Ok::<_, std::convert::Infallible>(out),
                            Some((ticket, answer, tap, None)),
                        ))
                    }
                    Next::Event(ReplyEvent::End) => {
                        let rest = match tap.as_mut() {
                            Some(t) => {
                                let out = t.finish();
                                if let Some(r) = t.take_final() {
                                    answer.keep(&r).await;
                                }
                                out
                            }
                            None => Vec::new(),
                        };
                        ticket.finish();
                        ticket.record(200, "ok");
                        (!rest.is_empty()).then(|| (Ok(Bytes::from(rest)), None))
                    }
                    Next::Event(ReplyEvent::Fail { body, code, .. }) => {
                        ticket.finish();
                        ticket.record(200, code.as_str());
                        Some((Ok(sse_error_for(answer.endpoint, &body)), None))
                    }
                    Next::Failed(err) => {
                        // Not finished: dropping the ticket cancels the job, whose worker is silent.
                        ticket.record(200, err.code.as_str());
                        Some((Ok(err.sse_for(answer.endpoint)), None))
                    }
                    Next::Event(other) => {
                        // Its bytes are model output: name the kind only.
                        tracing::warn!(kind = other.kind(), "ignoring unexpected event mid-stream");
                        continue;
                    }
                };
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(rest));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_header(&mut resp, &X_SSW_WORKER, &worker);
    set_queue_ms(&mut resp, queued);
    resp
}
