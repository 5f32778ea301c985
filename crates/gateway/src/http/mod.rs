//! HTTP surface: routes, request-id and auth middleware.
//!
//! Two routers: the public one (the OpenAI API, `/healthz`, and `/readyz` and `/metrics` unless
//! an operators' listener is configured) and the operators' one (`/healthz`, `/readyz`,
//! `/metrics`). Unknown paths and methods get OpenAI-shaped 404 and 405 errors.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ssw_protocol::error::ErrorCode;

use crate::auth::AuthError;
use crate::error::ApiError;
use crate::state::AppState;

pub mod body;
pub mod chat;
pub mod health;
pub mod models;
pub mod tokens;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-ssw-pool`: routes a request (request) / names the pool that served it (response).
pub static X_SSW_POOL: HeaderName = HeaderName::from_static("x-ssw-pool");
/// `x-ssw-worker`: the worker that ran the job.
pub static X_SSW_WORKER: HeaderName = HeaderName::from_static("x-ssw-worker");
/// `x-ssw-queue-ms`: how long the request waited in the queue for a worker (response).
pub static X_SSW_QUEUE_MS: HeaderName = HeaderName::from_static("x-ssw-queue-ms");
/// `x-ssw-tier`: the tier a request asks for (request, an alias of `service_tier`) / was
/// served at (response), in the game's names: `gold`, `silver`, `bronze`.
pub static X_SSW_TIER: HeaderName = HeaderName::from_static("x-ssw-tier");
/// `x-ssw-route`: the route a request was sent to (response).
pub static X_SSW_ROUTE: HeaderName = HeaderName::from_static("x-ssw-route");
/// `x-ssw-variant`: the route's variant that served it (response).
pub static X_SSW_VARIANT: HeaderName = HeaderName::from_static("x-ssw-variant");
/// `x-ssw-routing-version`: the version of the routing settings that routed it (response).
pub static X_SSW_ROUTING_VERSION: HeaderName = HeaderName::from_static("x-ssw-routing-version");

/// The request id of the request being handled.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The public listener's routes; `/readyz` and `/metrics` too unless `gateway.ops_listen` is
/// set.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/responses", post(chat::responses))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route(
            "/v1/responses/{id}",
            get(crate::responses::get).delete(crate::responses::delete),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::get))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut public = Router::new()
        .merge(v1)
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(crate::openapi::serve));
    if state.config.gateway.ops_listen.is_none() {
        public = public.merge(ops_routes());
    }
    finish(public, state)
}

/// The operators' listener's routes (`gateway.ops_listen`).
pub fn ops_router(state: AppState) -> Router {
    finish(ops_routes().route("/healthz", get(health::healthz)), state)
}

fn ops_routes() -> Router<AppState> {
    Router::new()
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
}

fn finish(router: Router<AppState>, state: AppState) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no endpoint {method} {}",
            ssw_protocol::chat::quote(uri.path())
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {}",
            ssw_protocol::chat::quote(uri.path())
        ),
    )
}

fn valid_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| s.to_owned())
}

/// 32 random hex digits.
pub fn new_request_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Takes the client's `x-request-id` (if sane) or makes one, and echoes it on the response.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(valid_request_id)
        .unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// The tenant a request is for (from its API key; `default` when no keys are configured).
#[derive(Clone, Debug)]
pub struct Tenant(pub std::sync::Arc<str>);

/// Requires a valid bearer token when API keys are configured; records the key's tenant.
async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let tenant = match &state.api_keys {
        None => state.default_tenant.clone(),
        Some(keys) => {
            let header = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .map(HeaderValue::as_bytes);
            match keys.check(header) {
                Ok(tenant) => tenant,
                Err(e) => return unauthorized(e),
            }
        }
    };
    req.extensions_mut().insert(Tenant(tenant));
    next.run(req).await
}

fn unauthorized(e: AuthError) -> Response {
    let err = match e {
        AuthError::Missing => ApiError::new(
            ErrorCode::MissingApiKey,
            "missing API key: send `Authorization: Bearer <key>`",
        ),
        AuthError::Invalid => ApiError::new(ErrorCode::InvalidApiKey, "invalid API key"),
    };
    let none = crate::metrics::RouteLabels::default();
    crate::metrics::request_done("none", &none, false, 401, err.code.as_str());
    err.into_response()
}
