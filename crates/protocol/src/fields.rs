//! Which request fields a client may send, by who owns them.
//!
//! - The OpenAI API's own chat-completions fields are always accepted (and validated where the
//!   platform relies on them).
//! - vLLM's extension fields reach the engine only when the pool allows them
//!   (`pools.<p>.allowed_fields`); by default only sampling knobs that stay within the
//!   request's own token budget ([`DEFAULT_ALLOWED`]).
//! - Fields the platform owns ([`PLATFORM_OWNED`]) are set by the platform, never taken from a
//!   client unless the pool lists them.
//! - Anything else is refused (400 naming the field), as the OpenAI API does ("Unrecognized
//!   request argument supplied").
//!
//! Sources: OpenAI API reference, "Create chat completion"
//! (platform.openai.com/docs/api-reference/chat/create); vLLM's `ChatCompletionRequest`
//! (vllm-project/vllm vllm/entrypoints/openai/protocol.py @ 0052bed36509c7a5a2d8e48265334e40cf2f5a0e,
//! "chat-completion-sampling-params" and "chat-completion-extra-params").

/// The OpenAI API's chat-completions request fields.
pub const OPENAI_CHAT: &[&str] = &[
    "messages",
    "model",
    "audio",
    "frequency_penalty",
    "function_call",
    "functions",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "metadata",
    "modalities",
    "n",
    "parallel_tool_calls",
    "prediction",
    "presence_penalty",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning_effort",
    "response_format",
    "safety_identifier",
    "seed",
    "service_tier",
    "stop",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
    "verbosity",
    "web_search_options",
];

/// The OpenAI API's (legacy) completions request fields (platform.openai.com/docs/
/// api-reference/completions/create), and `service_tier`, which the platform reads for tiers on
/// every endpoint.
pub const OPENAI_COMPLETIONS: &[&str] = &[
    "prompt",
    "model",
    "best_of",
    "echo",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_tokens",
    "n",
    "presence_penalty",
    "seed",
    "service_tier",
    "stop",
    "stream",
    "stream_options",
    "suffix",
    "temperature",
    "top_p",
    "user",
];

/// The OpenAI API's Responses request fields (platform.openai.com/docs/api-reference/
/// responses/create), as vLLM's `ResponsesRequest` lists them (vllm/entrypoints/openai/
/// responses/protocol.py), with `logit_bias`, which it adds. `background`, `conversation` and
/// `prompt` are known so that they are refused by name (the platform has no background mode,
/// no conversation objects; vLLM refuses prompt templates).
pub const OPENAI_RESPONSES: &[&str] = &[
    "input",
    "model",
    "background",
    "conversation",
    "include",
    "instructions",
    "logit_bias",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
];

/// vLLM's `/tokenize` request fields (`TokenizeCompletionRequest` and `TokenizeChatRequest`,
/// vllm/entrypoints/openai/protocol.py) and `/detokenize`'s (`DetokenizeRequest`); `chat_template`
/// stays the platform's.
pub const VLLM_TOKENIZE: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "add_special_tokens",
    "add_generation_prompt",
    "continue_final_message",
    "return_token_strs",
    "tools",
    "chat_template_kwargs",
    "mm_processor_kwargs",
];

/// `/detokenize`'s fields.
pub const VLLM_DETOKENIZE: &[&str] = &["model", "tokens"];

/// vLLM extensions its `ResponsesRequest` has besides the platform's own.
const VLLM_RESPONSES_EXTRAS: &[&str] = &["top_k", "skip_special_tokens"];

/// OpenAI chat fields vLLM's `CompletionRequest` accepts too (structured output).
const VLLM_COMPLETION_EXTRAS: &[&str] = &["response_format"];

/// vLLM extensions of chat that its `CompletionRequest` does not have (a prompt has no chat
/// template, no messages to continue).
const VLLM_CHAT_ONLY: &[&str] = &[
    "chat_template",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "documents",
    "mm_processor_kwargs",
];

/// vLLM's extension fields of chat completions.
pub const VLLM_EXTENSIONS: &[&str] = &[
    "best_of",
    "use_beam_search",
    "top_k",
    "min_p",
    "repetition_penalty",
    "length_penalty",
    "stop_token_ids",
    "include_stop_str_in_output",
    "ignore_eos",
    "min_tokens",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "prompt_logprobs",
    "allowed_token_ids",
    "bad_words",
    "echo",
    "add_generation_prompt",
    "continue_final_message",
    "add_special_tokens",
    "documents",
    "chat_template",
    "chat_template_kwargs",
    "mm_processor_kwargs",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structural_tag",
    "structured_outputs",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "priority",
    "request_id",
    "logits_processors",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "cache_salt",
    "kv_transfer_params",
    "vllm_xargs",
    "thinking_token_budget",
];

/// Extension fields the platform sets itself: the scheduling priority (from the tier), the
/// request id (from `x-request-id`), the chat template and prefix-cache salt (the pool's),
/// disaggregation and custom-extension parameters, and the continuation fields a migrated
/// stream uses. A client could otherwise jump the engine's queue, collide request ids, run its
/// own Jinja template, or reach engine internals.
pub const PLATFORM_OWNED: &[&str] = &[
    "priority",
    "request_id",
    "chat_template",
    "logits_processors",
    "kv_transfer_params",
    "vllm_xargs",
    "cache_salt",
    "add_generation_prompt",
    "continue_final_message",
    "return_token_ids",
];

/// Extension fields allowed when a pool does not say: sampling knobs within the request's own
/// token budget. Not allowed by default: structured-output grammars (`guided_*`,
/// `structured_outputs`: grammar compilation has crashed vLLM, CVE-2025-48942/48943/48944;
/// OpenAI's own `response_format` stays available), `prompt_logprobs`, `ignore_eos` and
/// `min_tokens` (force long generations), `best_of`/`use_beam_search` (multiply GPU work).
pub const DEFAULT_ALLOWED: &[&str] = &[
    "top_k",
    "min_p",
    "repetition_penalty",
    "stop_token_ids",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "chat_template_kwargs",
];

/// Who owns a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The OpenAI API.
    OpenAi,
    /// A vLLM extension clients may use if the pool allows it.
    Vllm,
    /// A vLLM extension the platform sets.
    Platform,
    /// Nobody the platform knows.
    Unknown,
}

/// Who owns `field`.
pub fn owner(field: &str) -> Owner {
    if OPENAI_CHAT.contains(&field) {
        Owner::OpenAi
    } else if PLATFORM_OWNED.contains(&field) {
        Owner::Platform
    } else if VLLM_EXTENSIONS.contains(&field) {
        Owner::Vllm
    } else {
        Owner::Unknown
    }
}

/// Who owns `field` of a request to `endpoint`: chat's fields for chat; for completions, the
/// OpenAI completions fields, and vLLM's extensions as for chat (chat-only ones, like
/// `messages` or `tools`, are unknown there); for responses, the Responses fields, the few vLLM
/// extensions its request has, and the platform's own.
pub fn owner_for(field: &str, endpoint: crate::job::Endpoint) -> Owner {
    match endpoint {
        crate::job::Endpoint::Chat => owner(field),
        crate::job::Endpoint::Tokenize | crate::job::Endpoint::Detokenize => {
            let known = if endpoint == crate::job::Endpoint::Tokenize {
                VLLM_TOKENIZE
            } else {
                VLLM_DETOKENIZE
            };
            if known.contains(&field) {
                Owner::OpenAi
            } else if PLATFORM_OWNED.contains(&field) {
                Owner::Platform
            } else {
                Owner::Unknown
            }
        }
        crate::job::Endpoint::Responses => {
            if OPENAI_RESPONSES.contains(&field) {
                Owner::OpenAi
            } else if PLATFORM_OWNED.contains(&field) {
                Owner::Platform
            } else if VLLM_RESPONSES_EXTRAS.contains(&field) {
                Owner::Vllm
            } else {
                Owner::Unknown
            }
        }
        crate::job::Endpoint::Completions => {
            if OPENAI_COMPLETIONS.contains(&field) || VLLM_COMPLETION_EXTRAS.contains(&field) {
                Owner::OpenAi
            } else if VLLM_CHAT_ONLY.contains(&field) {
                Owner::Unknown
            } else {
                match owner(field) {
                    Owner::OpenAi => Owner::Unknown,
                    other => other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_are_consistent() {
        for f in PLATFORM_OWNED.iter().chain(DEFAULT_ALLOWED) {
            assert!(VLLM_EXTENSIONS.contains(f), "{f} is not a vLLM extension");
        }
        for f in DEFAULT_ALLOWED {
            assert_eq!(owner(f), Owner::Vllm, "{f}");
        }
        for f in OPENAI_CHAT {
            assert!(!VLLM_EXTENSIONS.contains(f), "{f} listed twice");
        }
        assert_eq!(owner("messages"), Owner::OpenAi);
        assert_eq!(owner("priority"), Owner::Platform);
        assert_eq!(owner("guided_regex"), Owner::Vllm);
        assert_eq!(owner("zeta"), Owner::Unknown);
        use crate::job::Endpoint::Completions;
        assert_eq!(owner_for("prompt", Completions), Owner::OpenAi);
        assert_eq!(owner_for("echo", Completions), Owner::OpenAi);
        assert_eq!(owner_for("messages", Completions), Owner::Unknown);
        assert_eq!(owner_for("tools", Completions), Owner::Unknown);
        assert_eq!(owner_for("top_k", Completions), Owner::Vllm);
        assert_eq!(
            owner_for("chat_template_kwargs", Completions),
            Owner::Unknown
        );
        assert_eq!(owner_for("priority", Completions), Owner::Platform);
        assert_eq!(
            owner_for("prompt", crate::job::Endpoint::Chat),
            Owner::Unknown
        );
        use crate::job::Endpoint::Responses;
        assert_eq!(owner_for("input", Responses), Owner::OpenAi);
        assert_eq!(owner_for("messages", Responses), Owner::Unknown);
        assert_eq!(owner_for("request_id", Responses), Owner::Platform);
        assert_eq!(owner_for("top_k", Responses), Owner::Vllm);
        for f in VLLM_RESPONSES_EXTRAS {
            assert_eq!(owner(f), Owner::Vllm, "{f}");
        }
    }
}
