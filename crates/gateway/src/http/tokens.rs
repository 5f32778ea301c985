//! `POST /tokenize` and `POST /detokenize` (vLLM's tokenizer endpoints): routed by `model` like
//! any request, answered by a worker of the pool from its fast lane, beside generation work.

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use ssw_protocol::job::Endpoint;

use super::{RequestId, Tenant, X_SSW_POOL, X_SSW_WORKER};
use crate::error::json_response;
use crate::state::AppState;

/// `POST /tokenize`.
pub async fn tokenize(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(tenant): Extension<Tenant>,
    req: Request,
) -> Response {
    serve(state, rid, tenant, req, Endpoint::Tokenize).await
}

/// `POST /detokenize`.
pub async fn detokenize(
    State(state): State<AppState>,
    Extension(rid): Extension<RequestId>,
    Extension(tenant): Extension<Tenant>,
    req: Request,
) -> Response {
    serve(state, rid, tenant, req, Endpoint::Detokenize).await
}

async fn serve(
    state: AppState,
    rid: RequestId,
    tenant: Tenant,
    req: Request,
    endpoint: Endpoint,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match super::body::read(&state, &parts.headers, body).await {
        Ok(b) => b.bytes,
        Err(e) => return e.into_response(),
    };
    let a = crate::admission::fast(&state, &parts.headers, bytes, rid.0, &tenant.0, endpoint).await;
    let pool = a.pool.as_ref().map_or("none", |p| &*p.name);
    let (mut resp, code) = match a.result {
        Ok((status, body)) => {
            let code = if status < 400 {
                "ok"
            } else {
                "engine_rejected"
            };
            (json_response(status, body), code)
        }
        Err(e) => {
            let code = e.code.as_str();
            (e.into_response(), code)
        }
    };
    let labels = crate::metrics::RouteLabels::default();
    crate::metrics::request_done(pool, &labels, false, resp.status().as_u16(), code);
    if let Some(p) = &a.pool
        && let Ok(v) = p.name.parse()
    {
        resp.headers_mut().insert(X_SSW_POOL.clone(), v);
    }
    if let Ok(v) = a.worker.parse()
        && !a.worker.is_empty()
    {
        resp.headers_mut().insert(X_SSW_WORKER.clone(), v);
    }
    if let Some(r) = a.rate {
        r.apply(resp.headers_mut());
    }
    resp
}
