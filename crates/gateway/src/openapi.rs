//! The OpenAPI document of the gateway's endpoints (`GET /openapi.json`), generated from the
//! protocol's Rust types ([`ssw_protocol::schema`], [`ssw_protocol::error::ErrorEnvelope`],
//! [`ssw_protocol::models`]). Every error response is the OpenAI envelope; the statuses listed
//! are the ones the gateway answers (CI runs schemathesis against it: `scripts/schemathesis.sh`).

use axum::Json;
use ssw_protocol::error::{ErrorBody, ErrorEnvelope};
use ssw_protocol::models::{ModelCard, ModelList};
use ssw_protocol::schema::{
    ChatCompletion, ChatCompletionRequest, ChatMessage, CompletionRequest, DetokenizeRequest,
    DetokenizeResponse, Health, ResponseDeleted, ResponseObject, ResponsesRequest, StreamEvent,
    StreamOptions, TextCompletion, TokenizeRequest, TokenizeResponse, ToolChoice, ToolChoiceMode,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SSW inference gateway",
        description = "OpenAI-compatible chat completions, completions and responses, queued per pool. Errors are OpenAI envelopes `{\"error\": {message, type, code, param}}` whose `code` is stable (docs/api.md).",
    ),
    paths(
        chat_completions,
        completions,
        responses,
        get_response,
        delete_response,
        tokenize,
        detokenize,
        list_models,
        get_model,
        healthz
    ),
    components(schemas(
        ChatCompletionRequest,
        CompletionRequest,
        TextCompletion,
        ResponsesRequest,
        ResponseObject,
        ResponseDeleted,
        TokenizeRequest,
        TokenizeResponse,
        DetokenizeRequest,
        DetokenizeResponse,
        ChatMessage,
        StreamOptions,
        ToolChoice,
        ToolChoiceMode,
        ChatCompletion,
        ErrorEnvelope,
        ErrorBody,
        ModelList,
        ModelCard,
        Health
    )),
    modifiers(&Bearer),
)]
struct Api;

/// The bearer scheme of `gateway.api_keys_file` (required only when keys are configured).
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// A chat completion, queued on the pool its `model` names.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatCompletionRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The answer (`stream: false`) or server-sent events ending with `data: [DONE]` (`stream: true`); a failure mid-stream is a last `data: {\"error\": …}` event.",
            content((ChatCompletion = "application/json"), (StreamEvent = "text/event-stream"))),
        (status = 400, description = "`invalid_json`, `invalid_request` (naming `param`), or `engine_rejected` (the engine's own 4xx)", body = ErrorEnvelope),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`model_not_found`", body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`: the body did not arrive within `gateway.body_timeout`", body = ErrorEnvelope),
        (status = 413, description = "`request_too_large`", body = ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = ErrorEnvelope),
        (status = 429, description = "`queue_full`, `rate_limit_exceeded` or `insufficient_quota` (with Retry-After and, for a limited tenant, `x-ratelimit-*` and `x-ssw-quota-*`)", body = ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `response_too_large`", body = ErrorEnvelope),
        (status = 503, description = "`queue_timeout`, `queue_unavailable`, `server_busy`, `shutting_down` (with Retry-After)", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn chat_completions() {}

/// A (legacy) text completion, queued on the pool its `model` names, like a chat completion.
#[utoipa::path(
    post,
    path = "/v1/completions",
    request_body = CompletionRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The answer (`stream: false`) or server-sent events ending with `data: [DONE]` (`stream: true`); a failure mid-stream is a last `data: {\"error\": …}` event.",
            content((TextCompletion = "application/json"), (StreamEvent = "text/event-stream"))),
        (status = 400, description = "`invalid_json`, `invalid_request` (naming `param`), or `engine_rejected` (the engine's own 4xx)", body = ErrorEnvelope),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`model_not_found`", body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`: the body did not arrive within `gateway.body_timeout`", body = ErrorEnvelope),
        (status = 413, description = "`request_too_large`", body = ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = ErrorEnvelope),
        (status = 429, description = "`queue_full`, `rate_limit_exceeded` or `insufficient_quota` (with Retry-After and, for a limited tenant, `x-ratelimit-*` and `x-ssw-quota-*`)", body = ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `response_too_large`", body = ErrorEnvelope),
        (status = 503, description = "`queue_timeout`, `queue_unavailable`, `server_busy`, `shutting_down` (with Retry-After)", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn completions() {}

/// A response (the Responses API), queued on the pool its `model` names, like a chat
/// completion; kept by the platform unless `store` is false.
#[utoipa::path(
    post,
    path = "/v1/responses",
    request_body = ResponsesRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The response (`stream: false`) or server-sent events (`event: response.created` … `event: response.completed`); a failure mid-stream is a last `event: error`.",
            content((ResponseObject = "application/json"), (StreamEvent = "text/event-stream"))),
        (status = 400, description = "`invalid_json`, `invalid_request` (naming `param`), or `engine_rejected` (the engine's own 4xx)", body = ErrorEnvelope),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`model_not_found`, or `not_found` for a `previous_response_id` the tenant has not stored", body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`: the body did not arrive within `gateway.body_timeout`", body = ErrorEnvelope),
        (status = 413, description = "`request_too_large`", body = ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = ErrorEnvelope),
        (status = 429, description = "`queue_full`, `rate_limit_exceeded` or `insufficient_quota` (with Retry-After and, for a limited tenant, `x-ratelimit-*` and `x-ssw-quota-*`)", body = ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `response_too_large`", body = ErrorEnvelope),
        (status = 503, description = "`queue_timeout`, `queue_unavailable`, `server_busy`, `shutting_down` (with Retry-After)", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn responses() {}

/// A stored response of the caller's tenant.
#[utoipa::path(
    get,
    path = "/v1/responses/{response_id}",
    params(("response_id" = String, Path, description = "`resp_…`")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ResponseObject),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`not_found`: never stored, expired, deleted, or another tenant's", body = ErrorEnvelope),
        (status = 503, description = "`queue_unavailable`", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn get_response() {}

/// Forgets a stored response of the caller's tenant.
#[utoipa::path(
    delete,
    path = "/v1/responses/{response_id}",
    params(("response_id" = String, Path, description = "`resp_…`")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ResponseDeleted),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`not_found`", body = ErrorEnvelope),
        (status = 503, description = "`queue_unavailable`", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn delete_response() {}

/// The tokens of a prompt or of chat messages, from the pool's engine (its fast lane: never
/// behind generation work).
#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = TokenizeResponse),
        (status = 400, description = "`invalid_json`, `invalid_request` (naming `param`), or `engine_rejected`", body = ErrorEnvelope),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`model_not_found`", body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`", body = ErrorEnvelope),
        (status = 413, description = "`request_too_large`", body = ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = ErrorEnvelope),
        (status = 429, description = "`queue_full`: the pool's fast lane is full (with Retry-After)", body = ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `response_too_large`", body = ErrorEnvelope),
        (status = 503, description = "`queue_timeout` (no worker answered within 10 s), `queue_unavailable`, `server_busy`, `shutting_down`", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn tokenize() {}

/// The text of token ids, from the pool's engine (its fast lane).
#[utoipa::path(
    post,
    path = "/detokenize",
    request_body = DetokenizeRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = DetokenizeResponse),
        (status = 400, description = "`invalid_json`, `invalid_request` (naming `param`), or `engine_rejected`", body = ErrorEnvelope),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`model_not_found`", body = ErrorEnvelope),
        (status = 408, description = "`request_timeout`", body = ErrorEnvelope),
        (status = 413, description = "`request_too_large`", body = ErrorEnvelope),
        (status = 415, description = "`unsupported_media_type`", body = ErrorEnvelope),
        (status = 429, description = "`queue_full`: the pool's fast lane is full (with Retry-After)", body = ErrorEnvelope),
        (status = 502, description = "`upstream_error`, `response_too_large`", body = ErrorEnvelope),
        (status = 503, description = "`queue_timeout` (no worker answered within 10 s), `queue_unavailable`, `server_busy`, `shutting_down`", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn detokenize() {}

/// Every pool as a model card.
#[utoipa::path(
    get,
    path = "/v1/models",
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ModelList),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn list_models() {}

/// One pool, by any name that routes to it.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    params(("model" = String, Path, description = "A pool name, served model name or alias")),
    security((), ("bearer" = [])),
    responses(
        (status = 200, body = ModelCard),
        (status = 401, description = "`missing_api_key`, `invalid_api_key`", body = ErrorEnvelope),
        (status = 404, description = "`model_not_found`", body = ErrorEnvelope),
    ),
)]
#[allow(dead_code)]
fn get_model() {}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
#[allow(dead_code)]
fn healthz() {}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    Api::openapi()
}

/// `GET /openapi.json`.
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_describes_every_public_endpoint_and_error() {
        let doc = serde_json::to_value(super::document()).unwrap();
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
            "/v1/responses/{response_id}",
            "/tokenize",
            "/detokenize",
            "/v1/models",
            "/v1/models/{model}",
            "/healthz",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        let chat = &doc["paths"]["/v1/chat/completions"]["post"]["responses"];
        for status in [
            "200", "400", "401", "404", "408", "413", "415", "429", "502", "503",
        ] {
            assert!(chat.get(status).is_some(), "{status}");
        }
        assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    }
}
