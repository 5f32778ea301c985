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
    /// The stored response it continues (`previous_response_id`).
    pub previous: Option<String>,
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
    let previous = req.string_field("previous_response_id");
    let input = match previous.clone() {
        None => raw(&new_items),
        Some(prev) => {
            let Some(stored) = load(state, tenant, &prev).await? else {
                crate::metrics::responses("not_found");
                // OpenAI's answer (vLLM's own store answers 404).
                return Err(ApiError::new(
                    ErrorCode::PreviousResponseNotFound,
                    format!(
                        "Previous response with id '{}' not found.",
                        ssw_protocol::chat::quote(&prev)
                    ),
                )
                .param("previous_response_id"));
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
            previous,
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

/// A response object (a non-streaming answer, or the `response` of a stream's event) as the
/// client gets it: with the tier that served it and the `previous_response_id` it continued
/// (the engine saw neither: the platform chose the lane and expanded the input). Anything that
/// is not a JSON object passes unchanged.
pub fn patch(body: &[u8], tier: &str, previous: Option<&str>) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
    else {
        return body.to_vec();
    };
    patch_object(&mut v, tier, previous);
    serde_json::to_vec(&v).unwrap_or_else(|_| body.to_vec())
}

fn patch_object(
    v: &mut serde_json::Map<String, serde_json::Value>,
    tier: &str,
    previous: Option<&str>,
) {
    v.insert("service_tier".into(), tier.into());
    if let Some(p) = previous {
        v.insert("previous_response_id".into(), p.into());
    }
}

/// Rewrites a Responses stream as it passes: complete events only (the bytes of an event cut
/// across chunks wait for the rest), the `response` of `response.created`, `.in_progress`,
/// `.completed`, `.incomplete` and `.failed` patched like [`patch`], and the final response
/// (`response.completed` or `response.incomplete`) kept for the store. Line ends are
/// normalised to `\n`; every other byte passes as the engine sent it.
pub struct Tap {
    partial: Vec<u8>,
    /// How far `partial` has been searched for an event boundary.
    scanned: usize,
    tier: &'static str,
    previous: Option<String>,
    done: Option<Vec<u8>>,
}

impl Tap {
    /// A tap for a response served at `tier`, continuing `previous`.
    pub fn new(tier: &'static str, previous: Option<String>) -> Self {
        Self {
            partial: Vec::new(),
            scanned: 0,
            tier,
            previous,
            done: None,
        }
    }

    /// Passes a chunk: returns the complete events it ends.
    pub fn pass(&mut self, chunk: &[u8]) -> Vec<u8> {
        for &b in chunk {
            if b != b'\r' {
                self.partial.push(b);
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        let mut from = self.scanned.saturating_sub(1).max(start);
        while let Some(at) = find(&self.partial[from..], b"\n\n") {
            let end = from + at;
            self.event(start, end, &mut out);
            start = end + 2;
            from = start;
        }
        self.partial.drain(..start);
        self.scanned = self.partial.len();
        out
    }

    /// The bytes left when the stream ends (a last event without its blank line).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.partial.iter().all(u8::is_ascii_whitespace) {
            let end = self.partial.len();
            self.event(0, end, &mut out);
        }
        self.partial.clear();
        self.scanned = 0;
        out
    }

    /// The final response, once seen (patched), taken.
    pub fn take_final(&mut self) -> Option<Vec<u8>> {
        self.done.take()
    }

    /// Writes the event `partial[start..end]` (and its blank line) to `out`, patched.
    fn event(&mut self, start: usize, end: usize, out: &mut Vec<u8>) {
        let event = &self.partial[start..end];
        match rewrite(event, self.tier, self.previous.as_deref()) {
            Some((e, last)) => {
                out.extend_from_slice(&e);
                if last.is_some() {
                    self.done = last;
                }
            }
            None => out.extend_from_slice(event),
        }
        out.extend_from_slice(b"\n\n");
    }
}

/// `event` with its response patched, if it carries one, and that response if the event is
/// the final one.
fn rewrite(event: &[u8], tier: &str, previous: Option<&str>) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    const KINDS: [&str; 5] = [
        "created",
        "in_progress",
        "completed",
        "incomplete",
        "failed",
    ];
    let at = find(event, b"data:")?;
    let data_start = at + 5 + usize::from(event.get(at + 5) == Some(&b' '));
    let data_end = find(&event[data_start..], b"\n").map_or(event.len(), |i| data_start + i);
    let data = &event[data_start..data_end];
    // Most events are deltas: only those naming a response kind are parsed.
    if !KINDS
        .iter()
        .any(|k| find(data, format!("\"response.{k}\"").as_bytes()).is_some())
    {
        return None;
    }
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(data).ok()?;
    let kind = v
        .get("type")?
        .as_str()?
        .strip_prefix("response.")?
        .to_owned();
    if !KINDS.contains(&kind.as_str()) {
        return None;
    }
    let response = v.get_mut("response")?.as_object_mut()?;
    patch_object(response, tier, previous);
    let last = (kind == "completed" || kind == "incomplete")
        .then(|| serde_json::to_vec(response).ok())
        .flatten();
    let mut out = event[..data_start].to_vec();
    out.extend_from_slice(&serde_json::to_vec(&v).ok()?);
    out.extend_from_slice(&event[data_end..]);
    Some((out, last))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
    fn the_tap_patches_response_events_and_keeps_the_final_one_across_cut_chunks() {
        let stream = concat!(
            "event: response.created\r\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_a\",\"service_tier\":\"auto\",\"status\":\"in_progress\"}}\r\n\r\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"\\\"response.completed\\\"\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_a\",\"status\":\"completed\",\"output\":[]}}",
        );
        for cut in [1, 7, 50, 100, 170, 230, stream.len() - 3] {
            let mut tap = Tap::new("flex", Some("resp_0".into()));
            let mut out = tap.pass(&stream.as_bytes()[..cut]);
            out.extend(tap.pass(&stream.as_bytes()[cut..]));
            assert!(
                tap.take_final().is_none(),
                "the last event has no blank line yet"
            );
            out.extend(tap.finish());
            let fin: serde_json::Value =
                serde_json::from_slice(&tap.take_final().expect("final")).unwrap();
            assert_eq!(
                (fin["status"].as_str(), fin["service_tier"].as_str()),
                (Some("completed"), Some("flex"))
            );
            assert_eq!(fin["previous_response_id"], "resp_0");
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains('\r'), "{text}");
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(events.len(), 3, "{text}");
            assert!(
                events[0].contains("\"service_tier\":\"flex\""),
                "{}",
                events[0]
            );
            assert!(
                events[1].ends_with("\"delta\":\"\\\"response.completed\\\"\"}"),
                "deltas pass untouched: {}",
                events[1]
            );
        }
    }

    #[test]
    fn a_response_body_says_its_tier_and_what_it_continued() {
        let b = patch(
            br#"{"id":"resp_b","service_tier":"auto","previous_response_id":null}"#,
            "priority",
            Some("resp_a"),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (
                v["service_tier"].as_str(),
                v["previous_response_id"].as_str()
            ),
            (Some("priority"), Some("resp_a"))
        );
        assert_eq!(patch(b"not json", "default", None), b"not json");
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
