//! The shapes of the chat-completions API as the OpenAPI document (`GET /openapi.json`)
//! describes them. Requests are parsed by [`crate::chat`] without these types (the body stays
//! raw); they state, for clients and tools, which fields the gateway itself checks and how.
//! Every property named here is one [`crate::fields`] accepts (a test keeps them in step).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A chat message (OpenAI's shapes; only `role` is checked by the gateway).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, `developer`.
    pub role: String,
    /// Text, or an array of content parts.
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
}

/// `stop`: one stop sequence, or several.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    /// One sequence.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// A Responses request's `tool_choice`: a mode, or the tool to call.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    /// `none`, `auto` or `required`.
    Mode(ToolChoiceMode),
    /// `{"type": "function", "name"}`.
    #[schema(value_type = Object)]
    Named(Value),
}

/// The modes of `tool_choice`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ToolChoiceMode {
    /// Call no tool.
    None,
    /// The model decides.
    Auto,
    /// Call at least one tool.
    Required,
}

/// The data of one server-sent event of a streamed answer: a chunk (or a last error) as a JSON
/// object, or `[DONE]`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StreamEvent {
    /// A chunk, or an error event.
    #[schema(value_type = Object)]
    Chunk(Value),
    /// `[DONE]`.
    Done(String),
}

/// `stream_options` (other keys are passed on to the engine).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    pub include_usage: Option<bool>,
    /// vLLM: every chunk carries the usage so far.
    pub continuous_usage_stats: Option<bool>,
}

/// `POST /v1/chat/completions`: the OpenAI request. Unknown fields are refused (400 naming
/// the field); vLLM extensions only where the model's pool allows them.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "light", "messages": [{"role": "user", "content": "Hail, traveller!"}], "max_tokens": 16}))]
pub struct ChatCompletionRequest {
    /// A pool name, served model name or alias (`GET /v1/models`); may be left out when the
    /// `x-ssw-pool` header names the pool.
    pub model: String,
    /// The conversation; at least one message.
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// Answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate; at most the pool's ceiling (its context length by default).
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// Same as `max_tokens` (OpenAI's newer name).
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u64>,
    /// Choices to generate; at most the pool's `max_n` (1 by default).
    #[schema(minimum = 1)]
    pub n: Option<u64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Return log probabilities of the output tokens.
    pub logprobs: Option<bool>,
    /// Alternatives per token with their log probabilities.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<u64>,
    /// Stop sequences: one, or several.
    pub stop: Option<Stop>,
    /// Seed for sampling.
    pub seed: Option<i64>,
    /// Tools the model may call.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// How the model picks a tool.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Output format (`json_object`, `json_schema`).
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// An end-user id (logs only).
    pub user: Option<String>,
}

/// `POST /v1/completions`: the OpenAI (legacy) completions request. Unknown fields are refused
/// (400 naming the field); vLLM extensions only where the model's pool allows them.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "light", "prompt": "The innkeeper said", "max_tokens": 16}))]
pub struct CompletionRequest {
    /// A pool name, served model name or alias (`GET /v1/models`).
    pub model: String,
    /// The prompt. Also accepted: an array of strings, of token ids, or of arrays of token ids
    /// (documented as a string, the form clients use).
    #[schema(value_type = String)]
    pub prompt: Value,
    /// Answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Most tokens to generate; at most the pool's ceiling.
    #[schema(minimum = 1)]
    pub max_tokens: Option<u64>,
    /// Choices to generate; at most the pool's `max_n` (1 by default).
    #[schema(minimum = 1)]
    pub n: Option<u64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Log probabilities of this many most likely tokens per position.
    #[schema(minimum = 0, maximum = 20)]
    pub logprobs: Option<u64>,
    /// Put the prompt before the completion.
    pub echo: Option<bool>,
    /// Text after the completion (where the engine supports it).
    pub suffix: Option<String>,
    /// Stop sequences: one, or several.
    pub stop: Option<Stop>,
    /// Seed for sampling.
    pub seed: Option<i64>,
    /// An end-user id (logs only).
    pub user: Option<String>,
}

/// `POST /v1/responses`: the OpenAI Responses request, as far as the platform serves it (no
/// background mode, no conversation objects, no prompt templates). Unknown fields are refused.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "light", "input": "Greet the traveller.", "max_output_tokens": 64}))]
pub struct ResponsesRequest {
    /// A pool name, served model name or alias (`GET /v1/models`).
    pub model: String,
    /// The input: a string (one user message), or an array of input items (messages, function
    /// calls and their outputs; documented as a string, the form clients use most).
    #[schema(value_type = String)]
    pub input: Value,
    /// A system (developer) message for this response only (not carried to follow-ups).
    pub instructions: Option<String>,
    /// A stored response this one continues: its input and output come before `input`.
    pub previous_response_id: Option<String>,
    /// Keep the response for `previous_response_id` and `GET /v1/responses/{id}` (default true;
    /// kept for `gateway.responses_ttl`).
    pub store: Option<bool>,
    /// Answer as server-sent events (`event: <type>` and `data: <event>`).
    pub stream: Option<bool>,
    /// Most tokens to generate; at most the pool's ceiling.
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Function tools (`{"type": "function", "name", "parameters"}`).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required`, or `{"type": "function", "name"}`.
    pub tool_choice: Option<ToolChoice>,
    /// Up to 16 string pairs, returned with the response.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// The service tier (`auto`, `default`, `flex`, `priority`).
    pub service_tier: Option<String>,
    /// An end-user id (logs only).
    pub user: Option<String>,
}

/// `POST /tokenize` (vLLM's): the tokens of a prompt, or of chat messages as the model's chat
/// template renders them.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "light", "prompt": "Hail, captain"}))]
pub struct TokenizeRequest {
    /// A pool name, served model name or alias.
    pub model: String,
    /// The text (or `messages` instead).
    pub prompt: Option<String>,
    /// Chat messages (or `prompt` instead).
    pub messages: Option<Vec<ChatMessage>>,
    /// Add the tokenizer's special tokens (BOS).
    pub add_special_tokens: Option<bool>,
    /// With `messages`: end with the assistant's turn opening.
    pub add_generation_prompt: Option<bool>,
    /// Also return each token's text.
    pub return_token_strs: Option<bool>,
}

/// `/tokenize`'s answer (vLLM's `TokenizeResponse`).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenizeResponse {
    /// How many tokens.
    pub count: u64,
    /// The engine's context length.
    pub max_model_len: u64,
    /// The token ids.
    pub tokens: Vec<u64>,
    /// Each token's text, when asked for.
    pub token_strs: Option<Vec<String>>,
}

/// `POST /detokenize` (vLLM's): the text of token ids.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"model": "light", "tokens": [39, 607, 11]}))]
pub struct DetokenizeRequest {
    /// A pool name, served model name or alias.
    pub model: String,
    /// Token ids (vocabulary indices, 0 to 2^31 - 1).
    #[schema(min_items = 1)]
    pub tokens: Vec<u32>,
}

/// `/detokenize`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct DetokenizeResponse {
    /// The text.
    pub prompt: String,
}

/// A response of the Responses API, as the engine produced it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The served model name.
    pub model: String,
    /// `completed`, or `incomplete` (cut by `max_output_tokens`).
    pub status: String,
    /// Output items (messages, function calls, reasoning).
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    /// Token counts (`input_tokens`, `output_tokens`, `total_tokens`).
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

/// `DELETE /v1/responses/{id}`'s answer.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ResponseDeleted {
    /// The response id.
    pub id: String,
    /// `response`.
    pub object: String,
    /// `true`.
    pub deleted: bool,
}

/// A text completion (non-streaming answer), as the engine produced it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TextCompletion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// The answers (`text`, `finish_reason`, `logprobs`).
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<Value>,
    /// Token counts.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

/// A chat completion (non-streaming answer), as the engine produced it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// The answers.
    #[schema(value_type = Vec<Object>)]
    pub choices: Vec<Value>,
    /// Token counts.
    #[schema(value_type = Option<Object>)]
    pub usage: Option<Value>,
}

/// `/healthz`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use crate::fields::{Owner, owner, owner_for};

    #[test]
    fn documented_request_fields_are_openai_fields() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(super::ChatCompletionRequest::schema()).unwrap();
        let props = schema["properties"].as_object().unwrap();
        assert!(props.len() >= 10);
        for name in props.keys() {
            assert_eq!(owner(name), Owner::OpenAi, "{name}");
        }
        let schema = serde_json::to_value(super::CompletionRequest::schema()).unwrap();
        for name in schema["properties"].as_object().unwrap().keys() {
            let owner = owner_for(name, crate::job::Endpoint::Completions);
            assert_eq!(owner, Owner::OpenAi, "{name}");
        }
        let schema = serde_json::to_value(super::ResponsesRequest::schema()).unwrap();
        for name in schema["properties"].as_object().unwrap().keys() {
            let owner = owner_for(name, crate::job::Endpoint::Responses);
            assert_eq!(owner, Owner::OpenAi, "{name}");
        }
    }
}
