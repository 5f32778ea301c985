//! The chat-completions request as the gateway accepts it.
//!
//! Parsing checks the fields the platform relies on or that the issue contract names (`messages`,
//! `model`, `stream`, `stream_options`, `max_tokens`, `max_completion_tokens`, `temperature`,
//! `top_p`, `n`) and keeps every other field untouched and in order, so what the client sent
//! reaches the engine unchanged apart from `model` and the pool's defaults.

use serde_json::{Map, Value};

use crate::error::{ErrorCode, ErrorEnvelope};

/// A validated chat-completions request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// The client's body, every field preserved in the order it was sent.
    pub body: Map<String, Value>,
    /// The requested model, if the client named one.
    pub model: Option<String>,
    /// Whether the client asked for an SSE stream.
    pub stream: bool,
}

/// Why a body was refused; always a 400.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// [`ErrorCode::InvalidJson`] or [`ErrorCode::InvalidRequest`].
    pub code: ErrorCode,
    /// What is wrong, naming the field.
    pub message: String,
    /// The offending field, if one.
    pub param: Option<String>,
}

impl RequestError {
    fn field(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }

    /// The OpenAI envelope for this error.
    pub fn envelope(&self) -> ErrorEnvelope {
        let env = ErrorEnvelope::new(self.code, self.message.clone());
        match &self.param {
            Some(p) => env.with_param(p.clone()),
            None => env,
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn expect_bool(body: &Map<String, Value>, key: &str) -> Result<bool, RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(RequestError::field(
            key,
            format!("`{key}` must be a boolean, got {}", kind(other)),
        )),
    }
}

fn expect_positive_int(body: &Map<String, Value>, key: &str) -> Result<(), RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => Ok(()),
        Some(other) => Err(RequestError::field(
            key,
            format!("`{key}` must be a positive integer, got {other}"),
        )),
    }
}

fn expect_number(body: &Map<String, Value>, key: &str) -> Result<(), RequestError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(_)) => Ok(()),
        Some(other) => Err(RequestError::field(
            key,
            format!("`{key}` must be a number, got {}", kind(other)),
        )),
    }
}

impl ChatRequest {
    /// Parses and validates a request body.
    pub fn parse(bytes: &[u8]) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| RequestError {
            code: ErrorCode::InvalidJson,
            message: format!("request body is not valid JSON: {e}"),
            param: None,
        })?;
        let Value::Object(body) = value else {
            return Err(RequestError {
                code: ErrorCode::InvalidRequest,
                message: format!("request body must be a JSON object, got {}", kind(&value)),
                param: None,
            });
        };
        match body.get("messages") {
            None => return Err(RequestError::field("messages", "`messages` is required")),
            Some(Value::Array(list)) if list.is_empty() => {
                return Err(RequestError::field(
                    "messages",
                    "`messages` must hold at least one message",
                ));
            }
            Some(Value::Array(list)) => {
                for (i, m) in list.iter().enumerate() {
                    let role_ok = m.get("role").is_some_and(Value::is_string);
                    if !m.is_object() || !role_ok {
                        return Err(RequestError::field(
                            &format!("messages[{i}]"),
                            format!("`messages[{i}]` must be an object with a string `role`"),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(RequestError::field(
                    "messages",
                    format!("`messages` must be an array, got {}", kind(other)),
                ));
            }
        }
        let model = match body.get("model") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(RequestError::field(
                    "model",
                    format!("`model` must be a string, got {}", kind(other)),
                ));
            }
        };
        let stream = expect_bool(&body, "stream")?;
        match body.get("stream_options") {
            None | Some(Value::Null) => {}
            Some(Value::Object(o)) => {
                if let Some(v) = o.get("include_usage")
                    && !v.is_boolean()
                    && !v.is_null()
                {
                    return Err(RequestError::field(
                        "stream_options.include_usage",
                        "`stream_options.include_usage` must be a boolean",
                    ));
                }
            }
            Some(other) => {
                return Err(RequestError::field(
                    "stream_options",
                    format!("`stream_options` must be an object, got {}", kind(other)),
                ));
            }
        }
        expect_positive_int(&body, "max_tokens")?;
        expect_positive_int(&body, "max_completion_tokens")?;
        expect_positive_int(&body, "n")?;
        expect_number(&body, "temperature")?;
        expect_number(&body, "top_p")?;
        Ok(Self {
            body,
            model,
            stream,
        })
    }

    /// The body for the engine: `model` set to the pool's served name and every pool default
    /// the client did not set merged in (objects merge key by key; the client's value wins).
    pub fn into_engine_body(
        mut self,
        served_model: &str,
        defaults: &Map<String, Value>,
    ) -> Vec<u8> {
        self.body
            .insert("model".to_owned(), Value::String(served_model.to_owned()));
        merge_defaults(&mut self.body, defaults);
        serde_json::to_vec(&self.body).unwrap_or_default()
    }
}

/// Token counts of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    #[serde(default)]
    pub completion_tokens: u64,
}

/// The `usage` of a non-streaming answer body.
pub fn usage_of_body(body: &[u8]) -> Option<Usage> {
    #[derive(serde::Deserialize)]
    struct Answer {
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Answer>(body).ok()?.usage
}

/// The `usage` carried by an SSE chunk (the final chunk with `stream_options.include_usage`),
/// found without parsing the other events.
pub fn usage_of_sse(chunk: &[u8]) -> Option<Usage> {
    const NEEDLE: &[u8] = b"\"usage\":{";
    let at = chunk.windows(NEEDLE.len()).rposition(|w| w == NEEDLE)?;
    let start = chunk[..at]
        .windows(6)
        .rposition(|w| w == b"data: ")
        .map_or(0, |i| i + 6);
    let end = chunk[at..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(chunk.len(), |i| at + i);
    usage_of_body(&chunk[start..end])
}

/// How many SSE events a chunk carries.
pub fn sse_events(chunk: &[u8]) -> usize {
    chunk.windows(6).filter(|w| *w == b"data: ").count()
}

/// Adds every key of `defaults` missing from `target`, recursing where both sides are objects.
pub fn merge_defaults(target: &mut Map<String, Value>, defaults: &Map<String, Value>) {
    for (key, default) in defaults {
        match (target.get_mut(key), default) {
            (None, _) => {
                target.insert(key.clone(), default.clone());
            }
            (Some(Value::Object(t)), Value::Object(d)) => merge_defaults(t, d),
            (Some(_), _) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: &str) -> RequestError {
        ChatRequest::parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn valid_request_keeps_unknown_fields_in_order() {
        let raw = r#"{"zeta":1,"model":"heavy","messages":[{"role":"user","content":"hi"}],"stream":true,"vendor_x":{"a":[1,2]},"tools":[]}"#;
        let req = ChatRequest::parse(raw.as_bytes()).unwrap();
        assert_eq!(req.model.as_deref(), Some("heavy"));
        assert!(req.stream);
        let keys: Vec<_> = req.body.keys().cloned().collect();
        assert_eq!(
            keys,
            ["zeta", "model", "messages", "stream", "vendor_x", "tools"]
        );
        let out: Value =
            serde_json::from_slice(&req.into_engine_body("Qwen/X", &Map::new())).unwrap();
        assert_eq!(out["model"], "Qwen/X");
        assert_eq!(out["vendor_x"], json!({"a":[1,2]}));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(err("{nope").code, ErrorCode::InvalidJson);
        assert_eq!(err("[1]").code, ErrorCode::InvalidRequest);
        assert_eq!(err(r#"{"model":"m"}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"messages":"hi"}"#).param.as_deref(),
            Some("messages")
        );
        assert_eq!(err(r#"{"messages":[]}"#).param.as_deref(), Some("messages"));
        assert_eq!(
            err(r#"{"messages":[{"content":"x"}]}"#).param.as_deref(),
            Some("messages[0]")
        );
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for (field, bad) in [
            ("model", "5"),
            ("model", "null"),
            ("stream", "\"yes\""),
            ("max_tokens", "-1"),
            ("max_tokens", "1.5"),
            ("max_tokens", "\"10\""),
            ("max_completion_tokens", "0"),
            ("temperature", "\"hot\""),
            ("top_p", "[]"),
            ("n", "0"),
            ("stream_options", "1"),
        ] {
            let e = err(&format!("{{{m},\"{field}\":{bad}}}"));
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{field}={bad}");
            assert_eq!(e.param.as_deref(), Some(field), "{field}={bad}");
        }
        let e = err(&format!(
            "{{{m},\"stream_options\":{{\"include_usage\":3}}}}"
        ));
        assert_eq!(e.param.as_deref(), Some("stream_options.include_usage"));
    }

    #[test]
    fn nulls_mean_absent_where_sdks_send_them() {
        let req = ChatRequest::parse(
            br#"{"messages":[{"role":"user","content":"x"}],"stream":null,"max_tokens":null,"temperature":null}"#,
        )
        .unwrap();
        assert!(!req.stream);
        assert_eq!(req.model, None);
    }

    #[test]
    fn usage_is_found_in_bodies_and_stream_chunks() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}"#;
        assert_eq!(
            usage_of_body(body),
            Some(Usage {
                prompt_tokens: 7,
                completion_tokens: 3
            })
        );
        assert_eq!(usage_of_body(b"{\"usage\":null}"), None);
        let chunk = b"data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":16,\"total_tokens\":21}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            usage_of_sse(chunk),
            Some(Usage {
                prompt_tokens: 5,
                completion_tokens: 16
            })
        );
        assert_eq!(usage_of_sse(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(sse_events(chunk), 3);
    }

    #[test]
    fn defaults_fill_only_what_the_client_left_out() {
        let defaults =
            json!({"chat_template_kwargs": {"enable_thinking": false}, "temperature": 0.7});
        let defaults = defaults.as_object().unwrap();
        let mut a = json!({"messages": []}).as_object().unwrap().clone();
        merge_defaults(&mut a, defaults);
        assert_eq!(a["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(a["temperature"], 0.7);
        let mut b =
            json!({"chat_template_kwargs": {"enable_thinking": true, "x": 1}, "temperature": 0})
                .as_object()
                .unwrap()
                .clone();
        merge_defaults(&mut b, defaults);
        assert_eq!(
            b["chat_template_kwargs"],
            json!({"enable_thinking": true, "x": 1})
        );
        assert_eq!(b["temperature"], 0);
        let mut c = json!({"chat_template_kwargs": {"other": 2}})
            .as_object()
            .unwrap()
            .clone();
        merge_defaults(&mut c, defaults);
        assert_eq!(
            c["chat_template_kwargs"],
            json!({"other": 2, "enable_thinking": false})
        );
    }
}
