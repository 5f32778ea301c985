//! The OpenAI error envelope and the platform's stable error codes.
//!
//! Every failure a client can see maps to exactly one [`ErrorCode`]. The code decides the HTTP
//! status, the OpenAI `type`, and the `code` string, which is also the metric label. The same body
//! is used for a plain JSON error response and for an SSE error event mid-stream.

use serde::{Deserialize, Serialize};

/// A stable, client-visible error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The body is not valid JSON.
    InvalidJson,
    /// The body is JSON but not an acceptable request (wrong shape or field type).
    InvalidRequest,
    /// No pool serves the requested model.
    ModelNotFound,
    /// A Responses request's `previous_response_id` names no response the tenant has stored
    /// (OpenAI's code and status for it).
    PreviousResponseNotFound,
    /// The body is larger than the configured limit.
    RequestTooLarge,
    /// The body is not JSON by its `Content-Type`.
    UnsupportedMediaType,
    /// The body did not arrive within `gateway.body_timeout`.
    RequestTimeout,
    /// No endpoint at this path.
    NotFound,
    /// The endpoint exists, not with this method.
    MethodNotAllowed,
    /// The gateway's budget for request bodies being read is spent; retry shortly.
    ServerBusy,
    /// The client read its stream more slowly than the engine wrote it, beyond
    /// `gateway.reply_buffer`; the stream was ended and the job cancelled.
    ClientTooSlow,
    /// The engine's answer exceeded `worker.max_response_bytes`.
    ResponseTooLarge,
    /// No `Authorization: Bearer` header while API keys are configured.
    MissingApiKey,
    /// The bearer token matches no configured key.
    InvalidApiKey,
    /// The pool's backlog is at `max_queue`.
    QueueFull,
    /// The tenant is over one of its limits (requests or tokens per minute, concurrent
    /// requests).
    RateLimitExceeded,
    /// The tenant has spent one of its daily quotas (requests or tokens per UTC day); OpenAI's
    /// code for a spent quota.
    InsufficientQuota,
    /// No worker started the job before its deadline.
    QueueTimeout,
    /// Redis cannot be reached.
    QueueUnavailable,
    /// The engine failed (refused, 5xx after every attempt, died mid-stream, stalled).
    UpstreamError,
    /// The engine rejected the request with a 4xx; status and message are the engine's.
    EngineRejected,
    /// The request crashed its engine (the connection reset or the answer broke off before
    /// any output) on every replica it was allowed to try (`pools.<p>.max_crash_retries`).
    EngineCrashed,
    /// Redis is at `maxmemory`: it takes no new jobs until some finish.
    QueueMemoryFull,
    /// The gateway is draining and takes no new work.
    ShuttingDown,
    /// A bug or an unexpected state; details are in the log only.
    InternalError,
}

impl ErrorCode {
    /// All codes, for documentation and metric pre-registration.
    pub const ALL: [ErrorCode; 25] = [
        Self::InvalidJson,
        Self::InvalidRequest,
        Self::ModelNotFound,
        Self::PreviousResponseNotFound,
        Self::RequestTooLarge,
        Self::UnsupportedMediaType,
        Self::RequestTimeout,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::ServerBusy,
        Self::ClientTooSlow,
        Self::ResponseTooLarge,
        Self::MissingApiKey,
        Self::InvalidApiKey,
        Self::QueueFull,
        Self::RateLimitExceeded,
        Self::InsufficientQuota,
        Self::QueueTimeout,
        Self::QueueUnavailable,
        Self::UpstreamError,
        Self::EngineRejected,
        Self::EngineCrashed,
        Self::QueueMemoryFull,
        Self::ShuttingDown,
        Self::InternalError,
    ];

    /// The `code` string; stable, also used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::ModelNotFound => "model_not_found",
            Self::PreviousResponseNotFound => "previous_response_not_found",
            Self::RequestTooLarge => "request_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::ServerBusy => "server_busy",
            Self::ClientTooSlow => "client_too_slow",
            Self::ResponseTooLarge => "response_too_large",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::QueueFull => "queue_full",
            Self::RateLimitExceeded => "rate_limit_exceeded",
            Self::InsufficientQuota => "insufficient_quota",
            Self::QueueTimeout => "queue_timeout",
            Self::QueueUnavailable => "queue_unavailable",
            Self::UpstreamError => "upstream_error",
            Self::EngineRejected => "engine_rejected",
            Self::EngineCrashed => "engine_crashed",
            Self::QueueMemoryFull => "queue_memory_full",
            Self::ShuttingDown => "shutting_down",
            Self::InternalError => "internal_error",
        }
    }

    /// The HTTP status. [`ErrorCode::EngineRejected`] carries the engine's own status instead;
    /// 400 is its fallback.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::EngineRejected
            | Self::PreviousResponseNotFound => 400,
            Self::MissingApiKey | Self::InvalidApiKey => 401,
            Self::ModelNotFound | Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout | Self::ClientTooSlow => 408,
            Self::RequestTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::QueueFull | Self::RateLimitExceeded | Self::InsufficientQuota => 429,
            Self::InternalError => 500,
            Self::UpstreamError | Self::ResponseTooLarge | Self::EngineCrashed => 502,
            Self::QueueTimeout
            | Self::QueueUnavailable
            | Self::QueueMemoryFull
            | Self::ShuttingDown
            | Self::ServerBusy => 503,
        }
    }

    /// The OpenAI error `type`.
    pub const fn error_type(self) -> &'static str {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::ModelNotFound
            | Self::PreviousResponseNotFound
            | Self::RequestTooLarge
            | Self::UnsupportedMediaType
            | Self::RequestTimeout
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::ClientTooSlow
            | Self::EngineRejected => "invalid_request_error",
            Self::MissingApiKey | Self::InvalidApiKey => "authentication_error",
            Self::QueueFull | Self::RateLimitExceeded => "rate_limit_error",
            // OpenAI answers a spent quota with type and code `insufficient_quota`.
            Self::InsufficientQuota => "insufficient_quota",
            Self::QueueTimeout
            | Self::QueueUnavailable
            | Self::UpstreamError
            | Self::ResponseTooLarge
            | Self::EngineCrashed
            | Self::QueueMemoryFull
            | Self::ShuttingDown
            | Self::ServerBusy
            | Self::InternalError => "server_error",
        }
    }

    /// Whether a client may retry the same request later (a `Retry-After` is sent).
    pub const fn retryable(self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::RateLimitExceeded
                | Self::InsufficientQuota
                | Self::QueueTimeout
                | Self::QueueUnavailable
                | Self::QueueMemoryFull
                | Self::ShuttingDown
                | Self::ServerBusy
        )
    }

    /// Parses [`ErrorCode::as_str`] back.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {...}}`, the OpenAI error envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// The error object.
    pub error: ErrorBody,
}

/// The inner OpenAI error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type, e.g. `invalid_request_error`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Stable code, see [`ErrorCode`]; `null` only when an engine sent none.
    pub code: Option<String>,
    /// The offending request field, when there is one.
    #[serde(default)]
    pub param: Option<String>,
}

impl ErrorEnvelope {
    /// An envelope for one of the platform's codes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                message: message.into(),
                error_type: code.error_type().to_owned(),
                code: Some(code.as_str().to_owned()),
                param: None,
            },
        }
    }

    /// The same envelope naming the offending field.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.error.param = Some(param.into());
        self
    }

    /// Serialises to JSON bytes (cannot fail for this type).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
    }

    /// Turns an engine's error body into an OpenAI envelope with code `engine_rejected`. Only
    /// what a client needs passes: the engine's message (URLs removed, at most
    /// [`ENGINE_MESSAGE_MAX`] bytes), its error type and param when they are plain
    /// identifiers. vLLM has sent both `{"error": {...}}` and the older flat
    /// `{"object": "error", "message": ...}`; a body that is neither (a proxy's HTML page, a
    /// stack trace) is not shown at all.
    pub fn from_engine(status: u16, body: &[u8]) -> Self {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let obj = parsed.as_ref().and_then(|v| match v.get("error") {
            Some(inner @ serde_json::Value::Object(_)) => Some(inner),
            _ if v.get("message").is_some() => Some(v),
            _ => None,
        });
        let text = |key: &str| obj.and_then(|o| o.get(key)).and_then(|v| v.as_str());
        let message = match text("message") {
            Some(m) if !m.trim().is_empty() => sanitize(m),
            _ => format!("the engine rejected the request (HTTP {status})"),
        };
        let mut env = Self::new(ErrorCode::EngineRejected, message);
        if let Some(t) = text("type").filter(|t| identifier(t)) {
            env.error.error_type = t.to_owned();
        }
        env.error.param = text("param").filter(|p| identifier(p)).map(str::to_owned);
        env
    }
}

/// Longest engine message passed to a client.
pub const ENGINE_MESSAGE_MAX: usize = 1000;

/// A short name: letters, digits, `_`, `.`, `[`, `]` (an error type or a field path).
fn identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']'))
}

/// An engine message without URLs (they name internal hosts), cut to [`ENGINE_MESSAGE_MAX`].
fn sanitize(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(ENGINE_MESSAGE_MAX));
    let mut rest = message;
    while let Some(at) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..at]);
        out.push_str("<url>");
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ',' | '>'))
            .map_or(rest.len(), |i| at + i);
        rest = &rest[end..];
    }
    out.push_str(rest);
    if out.len() > ENGINE_MESSAGE_MAX {
        let mut cut = ENGINE_MESSAGE_MAX;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn envelope_has_openai_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&ErrorEnvelope::new(ErrorCode::QueueFull, "full").to_json())
                .unwrap();
        assert_eq!(v["error"]["message"], "full");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(v["error"]["code"], "queue_full");
    }

    #[test]
    fn engine_errors_of_both_vllm_generations_keep_their_message() {
        let new = br#"{"error":{"message":"too long","type":"BadRequestError","param":"max_tokens","code":400}}"#;
        let e = ErrorEnvelope::from_engine(400, new);
        assert_eq!(e.error.message, "too long");
        assert_eq!(e.error.error_type, "BadRequestError");
        assert_eq!(e.error.param.as_deref(), Some("max_tokens"));
        assert_eq!(e.error.code.as_deref(), Some("engine_rejected"));
        let old = br#"{"object":"error","message":"bad","type":"BadRequestError","code":400}"#;
        assert_eq!(ErrorEnvelope::from_engine(400, old).error.message, "bad");
    }

    #[test]
    fn engine_errors_reach_clients_sanitised() {
        let html = b"<html><body>502 Bad Gateway from proxy.internal:8443</body></html>";
        let e = ErrorEnvelope::from_engine(422, html);
        assert_eq!(
            e.error.message,
            "the engine rejected the request (HTTP 422)"
        );
        assert_eq!(
            ErrorEnvelope::from_engine(404, b"").error.message,
            "the engine rejected the request (HTTP 404)"
        );
        let leaky = br#"{"error":{"message":"cannot fetch http://10.0.0.7:9000/lora/x: refused; see https://docs.internal/x.","type":"<script>","param":"a b"}}"#;
        let e = ErrorEnvelope::from_engine(400, leaky);
        assert_eq!(e.error.message, "cannot fetch <url> refused; see <url>");
        assert_eq!(e.error.error_type, "invalid_request_error");
        assert_eq!(e.error.param, None);
        let long = format!(r#"{{"message":"{}"}}"#, "é".repeat(2000));
        let e = ErrorEnvelope::from_engine(400, long.as_bytes());
        assert!(
            e.error.message.len() <= ENGINE_MESSAGE_MAX + 3,
            "{}",
            e.error.message.len()
        );
    }
}
