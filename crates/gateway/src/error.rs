//! The one error → HTTP conversion.
//!
//! Status, OpenAI envelope and `Retry-After` all come from [`ErrorCode`]; the same error renders
//! as an SSE error event once a stream has started.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ssw_protocol::error::{ErrorCode, ErrorEnvelope};
use ssw_protocol::job::Endpoint;

/// A client-visible failure.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// The message shown to the client (generic for 5xx; details go to the log).
    pub message: String,
    /// Offending request field.
    pub param: Option<String>,
    /// `Retry-After` for retryable codes.
    pub retry_after: Option<Duration>,
    /// Close the connection after this response (the request body was not read to its end).
    pub close: bool,
}

impl ApiError {
    /// An error with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            retry_after: code.retryable().then_some(Duration::from_secs(1)),
            close: false,
        }
    }

    /// Names the offending request field.
    pub fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Closes the connection after the response: what is left of the request is not read.
    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// Sets `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// The envelope.
    pub fn envelope(&self) -> ErrorEnvelope {
        let env = ErrorEnvelope::new(self.code, self.message.clone());
        match &self.param {
            Some(p) => env.with_param(p.clone()),
            None => env,
        }
    }

    /// The SSE error event (`data: {...}`) that ends a stream, followed by `[DONE]` as vLLM does.
    pub fn sse(&self) -> Bytes {
        sse_error(&self.envelope().to_json())
    }

    /// The SSE error event that ends a stream of `endpoint` ([`sse_error_for`]).
    pub fn sse_for(&self, endpoint: Endpoint) -> Bytes {
        sse_error_for(endpoint, &self.envelope().to_json())
    }
}

/// The SSE error event that ends a stream of `endpoint`: for chat and completions vLLM's (a
/// `data:` envelope, then `[DONE]`); for the Responses API its `error` event (OpenAI's
/// `ResponseErrorEvent`: `type`, `code`, `message`, `param`), which also carries the envelope's
/// `error` object: both official SDKs raise an API error on an event whose data has one, where
/// a bare `error` event may pass as just another event.
pub fn sse_error_for(endpoint: Endpoint, envelope_json: &[u8]) -> Bytes {
    if endpoint != Endpoint::Responses {
        return sse_error(envelope_json);
    }
    let body = serde_json::from_slice::<ErrorEnvelope>(envelope_json)
        .map(|e| e.error)
        .unwrap_or_else(|_| {
            ErrorEnvelope::new(ErrorCode::UpstreamError, "the engine failed").error
        });
    let event = serde_json::json!({
        "type": "error",
        "code": body.code,
        "message": body.message,
        "param": body.param,
        "error": body,
    });
    let mut out = b"event: error\ndata: ".to_vec();
    out.extend_from_slice(event.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// An SSE error event for an already-encoded envelope, then `[DONE]`.
pub fn sse_error(envelope_json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(envelope_json.len() + 32);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(envelope_json);
    out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
    Bytes::from(out)
}

impl From<ssw_protocol::chat::RequestError> for ApiError {
    fn from(e: ssw_protocol::chat::RequestError) -> Self {
        Self {
            code: e.code,
            message: e.message,
            param: e.param,
            retry_after: None,
            close: false,
        }
    }
}

/// A JSON response with a given status.
pub fn json_response(status: u16, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.code.status(), self.envelope().to_json());
        if let Some(d) = self.retry_after {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        // A spent quota comes back at 00:00 UTC: the OpenAI SDKs, which retry a 429 on their
        // own, obey `x-should-retry` (openai-python `_base_client.py`, `_should_retry`).
        if self.code == ErrorCode::InsufficientQuota {
            resp.headers_mut().insert(
                axum::http::HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
        if self.close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(
            self.code,
            ErrorCode::MissingApiKey | ErrorCode::InvalidApiKey
        ) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_responses_stream_ends_with_an_error_event_the_sdks_raise() {
        let e = ApiError::new(ErrorCode::UpstreamError, "the engine failed mid-answer");
        let chat = e.sse_for(Endpoint::Chat);
        assert!(chat.starts_with(b"data: {\"error\""), "{chat:?}");
        assert!(chat.ends_with(b"data: [DONE]\n\n"));
        let text = String::from_utf8(e.sse_for(Endpoint::Responses).to_vec()).unwrap();
        let data = text
            .strip_prefix("event: error\ndata: ")
            .and_then(|d| d.strip_suffix("\n\n"))
            .expect(&text);
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "upstream_error");
        assert_eq!(v["message"], "the engine failed mid-answer");
        assert_eq!(v["error"]["type"], "server_error");
        assert!(!text.contains("[DONE]"));
    }
}
