//! The Responses API's state, kept by the platform rather than the engines.
//!
//! vLLM keeps stored responses in the engine process (and only with
//! `VLLM_ENABLE_RESPONSES_API_STORE`), so a follow-up naming `previous_response_id` would fail
//! as soon as it reached another replica. Here the gateway stores each response it serves
//! (unless the request says `store: false`) in Redis under `gateway.responses_ttl`, with the
//! tenant that asked and the whole input the engine saw; a follow-up's `previous_response_id`
//! is expanded into that input, the earlier output and the new input before the job is queued,
//! so any replica can serve it. The engine is sent `store: false` and the response id the
//! gateway chose (vLLM's `request_id` becomes the response's `id`).
//!
//! A stored response is read only by its tenant: another tenant's id is "not found", as an
//! unknown one is.

use std::sync::Arc;

use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use ssw_protocol::chat::ChatRequest;
use ssw_protocol::error::ErrorCode;

use crate::error::{ApiError, json_response};
use crate::http::Tenant;
use crate::state::AppState;

/// A response about to be served: what storing it needs.
#[derive(Debug)]
pub struct Pending {
    /// Its id (`resp_…`), chosen here.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: Arc<str>,
    /// The whole input the engine gets, as an array of items.
    pub input: Box<RawValue>,
    /// Whether to keep it (`store` is not false and `gateway.responses_ttl` is not 0).
    pub store: bool,
}

/// What Redis keeps per response.
#[derive(Serialize, Deserialize)]
struct Stored {
    tenant: String,
    input: Box<RawValue>,
    response: Box<RawValue>,
}

/// The part of a stored response a follow-up continues from.
#[derive(Deserialize)]
struct Output {
    output: Vec<Box<RawValue>>,
}

/// Whether `id` can name a response (what this gateway generates: `resp_` and 32 hex digits;
/// anything of that alphabet up to 128 characters is looked up).
fn valid_id(id: &str) -> bool {
    id.len() <= 128
        && id.strip_prefix("resp_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn raw(v: &impl Serialize) -> Box<RawValue> {
    // Values built here serialise infallibly.
    serde_json::value::to_raw_value(v).expect("serialisable")
}

fn not_found(id: &str) -> ApiError {
    crate::metrics::responses("not_found");
    // vLLM's and OpenAI's wording.
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "Response with id '{}' not found.",
            ssw_protocol::chat::quote(id)
        ),
    )
}

fn unavailable(e: ssw_queue::QueueError) -> ApiError {
    tracing::warn!(error = %e, "cannot reach the response store");
    ApiError::new(
        ErrorCode::QueueUnavailable,
        "the response store is unavailable; retry later",
    )
}

/// The tenant's stored response `id`, if any.
async fn load(state: &AppState, tenant: &str, id: &str) -> Result<Option<Stored>, ApiError> {
    if !valid_id(id) {
        return Ok(None);
    }
    let bytes = state.redis.load_response(id).await.map_err(unavailable)?;
    let Some(bytes) = bytes else { return Ok(None) };
    match serde_json::from_slice::<Stored>(&bytes) {
        Ok(s) if s.tenant == tenant => Ok(Some(s)),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, id, "unreadable stored response");
            Ok(None)
        }
    }
}

/// Prepares a Responses request: picks its id, expands `previous_response_id` into the input,
/// and has the engine store nothing. Returns what storing the answer needs and how many bytes
/// the expansion added to the request (its token estimate counts them).
pub async fn prepare(
    state: &AppState,
    tenant: &Arc<str>,
    req: &mut ChatRequest<'_>,
) -> Result<(Pending, usize), ApiError> {
    let id = format!("resp_{}", crate::http::new_request_id());
    let ttl = state.config.gateway.responses_ttl;
    let store = !ttl.is_zero() && req.raw("store").map(|r| r.get()) != Some("false");
    let given = req.raw("input").map(|r| r.get()).unwrap_or("[]");
    // Parsed and checked at the edge: a string, or an array of objects.
    let new_items: Vec<Box<RawValue>> = match serde_json::from_str::<String>(given) {
        Ok(text) => vec![raw(&serde_json::json!({
            "type": "message", "role": "user", "content": text
        }))],
        Err(_) => serde_json::from_str(given).map_err(|e| {
            ApiError::new(ErrorCode::InvalidRequest, format!("`input`: {e}")).param("input")
        })?,
    };
    let mut extra = 0;
    let input = match req.string_field("previous_response_id") {
        None => raw(&new_items),
        Some(prev) => {
            let Some(stored) = load(state, tenant, &prev).await? else {
                return Err(not_found(&prev).param("previous_response_id"));
            };
            let output = serde_json::from_str::<Output>(stored.response.get())
                .map(|o| o.output)
                .unwrap_or_default();
            let before: Vec<Box<RawValue>> =
                serde_json::from_str(stored.input.get()).unwrap_or_default();
            let all: Vec<&RawValue> = before
                .iter()
                .chain(&output)
                .chain(&new_items)
                .map(AsRef::as_ref)
                .collect();
            let all = raw(&all);
            extra = all.get().len().saturating_sub(given.len());
            req.set("input", Some(all.clone()));
            crate::metrics::responses("continued");
            all
        }
    };
    req.set("previous_response_id", None);
    req.set("store", Some(raw(&false)));
    req.set("request_id", Some(raw(&id)));
    Ok((
        Pending {
            id,
            tenant: tenant.clone(),
            input,
            store,
        },
        extra,
    ))
}

/// Keeps `response` (the response object the client got) for `pending`'s tenant, if it is to
/// be stored. A failure is logged and counted: the client has its answer; a later
/// `previous_response_id` naming it finds nothing.
pub async fn keep(state: &AppState, pending: &Pending, response: &[u8]) {
    if !pending.store {
        return;
    }
    let Ok(response) = serde_json::from_slice::<Box<RawValue>>(response) else {
        tracing::warn!(id = %pending.id, "the engine's response is not JSON; not stored");
        crate::metrics::responses("store_failed");
        return;
    };
    let stored = Stored {
        tenant: pending.tenant.to_string(),
        input: pending.input.clone(),
        response,
    };
    let Ok(bytes) = serde_json::to_vec(&stored) else {
        return;
    };
    let ttl = state.config.gateway.responses_ttl;
    match state.redis.store_response(&pending.id, &bytes, ttl).await {
        Ok(()) => crate::metrics::responses("stored"),
        Err(e) => {
            tracing::warn!(error = %e, id = %pending.id, "cannot store the response");
            crate::metrics::responses("store_failed");
        }
    }
}

/// Watches a Responses stream for its final `response.completed` (or `response.incomplete`)
/// event and keeps the response it carries. Events may be cut across chunks: the bytes after
/// the last event boundary wait for the rest.
#[derive(Default)]
pub struct Tap {
    partial: Vec<u8>,
    done: Option<Box<RawValue>>,
}

impl Tap {
    /// Reads a chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.partial.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = find(&self.partial[start..], b"\n\n") {
            let event = &self.partial[start..start + end];
            if let Some(r) = final_response(event) {
                self.done = Some(r);
            }
            start += end + 2;
        }
        self.partial.drain(..start);
    }

    /// The final response, once seen.
    pub fn response(&self) -> Option<&RawValue> {
        self.done.as_deref()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `response` of a final event (`response.completed` or `response.incomplete`).
fn final_response(event: &[u8]) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct Final {
        #[serde(rename = "type")]
        kind: String,
        response: Box<RawValue>,
    }
    let at = find(event, b"data: ")?;
    let line = &event[at + 6..];
    let line = &line[..find(line, b"\n").unwrap_or(line.len())];
    // Most events are deltas: skip them without parsing.
    if find(line, b"\"response.completed\"").is_none()
        && find(line, b"\"response.incomplete\"").is_none()
    {
        return None;
    }
    let f: Final = serde_json::from_slice(line).ok()?;
    matches!(
        f.kind.as_str(),
        "response.completed" | "response.incomplete"
    )
    .then_some(f.response)
}

/// `GET /v1/responses/{id}`: the tenant's stored response.
pub async fn get(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Response {
    match load(&state, &tenant.0, &id).await {
        Ok(Some(s)) => json_response(200, s.response.get().to_owned()),
        Ok(None) => not_found(&id).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/responses/{id}`: forgets the tenant's stored response (OpenAI's answer:
/// `{"id", "object": "response", "deleted": true}`).
pub async fn delete(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Response {
    match load(&state, &tenant.0, &id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(&id).into_response(),
        Err(e) => return e.into_response(),
    }
    match state.redis.delete_response(&id).await {
        Ok(_) => json_response(
            200,
            serde_json::json!({"id": id, "object": "response", "deleted": true}).to_string(),
        ),
        Err(e) => unavailable(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tap_finds_the_final_response_across_cut_chunks() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_a\",\"status\":\"in_progress\"}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"response.completed\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_a\",\"status\":\"completed\",\"output\":[]}}\n\n",
        );
        for cut in [1, 7, 50, 100, 170, stream.len() - 3] {
            let mut tap = Tap::default();
            tap.feed(&stream.as_bytes()[..cut]);
            assert!(tap.response().is_none() || cut > 170);
            tap.feed(&stream.as_bytes()[cut..]);
            let r = tap.response().expect("the completed event").get();
            assert!(r.contains("\"status\":\"completed\""), "{r}");
            assert!(tap.partial.is_empty());
        }
    }

    #[test]
    fn only_what_this_gateway_could_have_made_is_looked_up() {
        assert!(valid_id("resp_0123abcd"));
        assert!(!valid_id("resp_"));
        assert!(!valid_id("chatcmpl-1"));
        assert!(!valid_id("resp_a/../b"));
        assert!(!valid_id(&format!("resp_{}", "a".repeat(200))));
    }
}
