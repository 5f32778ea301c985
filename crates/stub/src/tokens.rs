//! vLLM's tokenizer endpoints, `/tokenize` and `/detokenize` (vllm/entrypoints/openai/
//! serving_tokenization.py): no engine step, answered at once. The stub's tokens are words; a
//! word's id is a hash of it, and `/detokenize` spells an id as `t<id>`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde_json::{Value, json};

use crate::answer::error_body;
use crate::{Stub, json_resp};

/// The stub's vocabulary size (Qwen2.5's).
const VOCAB: u64 = 151_643;

fn id(word: &str) -> u64 {
    // FNV-1a: stable across runs and builds.
    word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) % VOCAB
}

fn body_of(stub: &Stub, bytes: &[u8]) -> Result<Value, Box<Response>> {
    let body: Value = match serde_json::from_slice(bytes) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(Box::new(json_resp(
                400,
                &error_body(400, "BadRequestError", "body must be a JSON object"),
            )));
        }
    };
    let served = stub.served();
    if let Some(m) = body.get("model").and_then(Value::as_str)
        && m != served.name
    {
        return Err(Box::new(json_resp(
            404,
            &error_body(
                404,
                "NotFoundError",
                &format!("The model `{m}` does not exist."),
            ),
        )));
    }
    Ok(body)
}

/// `/tokenize`: `{"count", "max_model_len", "tokens", "token_strs"}` (vLLM's
/// `TokenizeResponse`) for a `prompt`, or for `messages` (each message's words, as the chat
/// template would render them).
pub async fn tokenize(State(stub): State<Arc<Stub>>, bytes: Bytes) -> Response {
    let body = match body_of(&stub, &bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let mut words: Vec<String> = Vec::new();
    match (body.get("prompt"), body.get("messages")) {
        (Some(Value::String(p)), None) => words.extend(p.split_whitespace().map(str::to_owned)),
        (None, Some(Value::Array(ms))) => {
            for m in ms {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                words.push(format!("<|im_start|>{role}"));
                if let Some(Value::String(c)) = m.get("content") {
                    words.extend(c.split_whitespace().map(str::to_owned));
                }
                words.push("<|im_end|>".into());
            }
        }
        _ => {
            return json_resp(
                400,
                &error_body(
                    400,
                    "BadRequestError",
                    "either prompt or messages is required",
                ),
            );
        }
    }
    let tokens: Vec<u64> = words.iter().map(|w| id(w)).collect();
    let strs = body.get("return_token_strs").and_then(Value::as_bool) == Some(true);
    json_resp(
        200,
        &json!({
            "count": tokens.len(), "max_model_len": stub.cfg.max_model_len, "tokens": tokens,
            "token_strs": if strs { json!(words) } else { Value::Null },
        }),
    )
}

/// `/detokenize`: `{"prompt"}` (vLLM's `DetokenizeResponse`).
pub async fn detokenize(State(stub): State<Arc<Stub>>, bytes: Bytes) -> Response {
    let body = match body_of(&stub, &bytes) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(tokens) = body.get("tokens").and_then(Value::as_array) else {
        return json_resp(
            400,
            &error_body(400, "BadRequestError", "tokens: field required"),
        );
    };
    let words: Vec<String> = tokens.iter().map(|t| format!("t{t}")).collect();
    json_resp(200, &json!({"prompt": words.join(" ")}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_ids_are_stable_and_within_the_vocabulary() {
        assert_eq!(super::id("hello"), super::id("hello"));
        assert_ne!(super::id("hello"), super::id("world"));
        assert!(super::id("anything") < super::VOCAB);
    }
}
