//! Reading a request body within the gateway's bounds.
//!
//! A body is read only if it is JSON by its `Content-Type` (or has none), fits `max_body`, finds
//! room in the gateway's body budget within `body_wait` (the budget bounds the bytes being read
//! and parsed at once, over all requests), and arrives within `body_timeout`. The budget is held
//! until the request is on the queue.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use bytes::BytesMut;
use http_body_util::BodyExt;
use ssw_protocol::error::ErrorCode;
use tokio::sync::SemaphorePermit;

use crate::error::ApiError;
use crate::state::AppState;

/// A body and its share of the budget.
pub struct ReadBody<'s> {
    /// The bytes.
    pub bytes: Bytes,
    /// Released when dropped.
    pub budget: SemaphorePermit<'s>,
}

/// Whether a `Content-Type` is JSON (`application/json`, `…+json`, any parameters).
fn is_json(value: &str) -> bool {
    let mime = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Reads `body` within the bounds; every refusal is an OpenAI error with its status.
pub async fn read<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<ReadBody<'s>, ApiError> {
    let g = &state.config.gateway;
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        if !is_json(ct) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the request body as JSON, with `Content-Type: application/json`",
            ));
        }
    }
    let max = g.max_body.bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        linger(body, max).await;
        return Err(too_large(g.max_body));
    }
    // Room for what the client declared, or for the largest body when it declared nothing.
    let want = declared.unwrap_or(max).max(1);
    let permits = u32::try_from(want).unwrap_or(u32::MAX);
    let budget =
        match tokio::time::timeout(g.body_wait, state.body_budget.acquire_many(permits)).await {
            Ok(Ok(p)) => p,
            // The semaphore is never closed; a timeout means the budget stayed spent.
            _ => {
                metrics::counter!(ssw_telemetry::names::GATEWAY_BODY_BUDGET_REFUSED).increment(1);
                return Err(ApiError::new(
                    ErrorCode::ServerBusy,
                    "the gateway is reading too many large requests at once; retry shortly",
                )
                .retry_after(Duration::from_secs(1)));
            }
        };
    let mut body = body;
    let bytes = match tokio::time::timeout(g.body_timeout, collect(&mut body, want, max)).await {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {}s",
                    g.body_timeout.as_secs_f32()
                ),
            )
            .close());
        }
        Ok(Err(Collect::TooLarge)) => {
            drop(budget);
            linger(body, max).await;
            return Err(too_large(g.max_body));
        }
        Ok(Err(Collect::Broken(e))) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("cannot read the request body: {e}"),
            )
            .close());
        }
        Ok(Ok(b)) => b,
    };
    Ok(ReadBody { bytes, budget })
}

enum Collect {
    TooLarge,
    Broken(axum::Error),
}

/// The body's frames into one buffer sized for what was declared: one copy of the body in
/// memory, never more than `max` bytes.
async fn collect(body: &mut Body, declared: u64, max: u64) -> Result<Bytes, Collect> {
    let mut buf = BytesMut::with_capacity(usize::try_from(declared.min(max)).unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Collect::Broken)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > max {
                return Err(Collect::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// How long an oversized body is drained, discarding it, before the 413 is sent.
const LINGER: Duration = Duration::from_secs(2);

/// Reads and discards up to `limit` more bytes of a body that will be refused, for at most
/// [`LINGER`], so that a client still sending it reads the 413 instead of a connection reset:
/// closing a socket with unread bytes makes the kernel answer with RST, which can reach the
/// client before the response does (nginx's `lingering_close` exists for the same reason). A
/// body larger still is cut off with a reset: the client was told the limit by
/// `Content-Length` or by the first 413.
async fn linger(mut body: Body, limit: u64) {
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > limit {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn too_large(max: ssw_config::ByteSize) -> ApiError {
    ApiError::new(
        ErrorCode::RequestTooLarge,
        format!("request body exceeds {max}"),
    )
    .close()
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types_are_recognised() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ] {
            assert!(is_json(ct), "{ct}");
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
        ] {
            assert!(!is_json(ct), "{ct}");
        }
    }
}
