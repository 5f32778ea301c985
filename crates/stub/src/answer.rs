//! What the stub answers: deterministic tokens that name the served model and the request,
//! tool calls when the request forces one, and vLLM's chunk and response shapes.

use serde_json::{Value, json};

/// Which API the request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`: a prompt, text choices (`text_completion` objects).
    Text,
    /// `/v1/responses`: input items, a `response` object, typed stream events.
    Responses,
}

/// The request as the stub understood it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Chat or text completion.
    pub kind: Kind,
    /// A text completion with `echo`: the prompt, put before the answer.
    pub echo: Option<String>,
    /// `chatcmpl-<request id>`.
    pub id: String,
    /// The request id (`x-request-id` or generated).
    pub request_id: String,
    /// Served model name.
    pub model: String,
    /// Prompt tokens (whitespace-separated words of every message).
    pub prompt_tokens: u32,
    /// Output tokens to produce.
    pub tokens: Vec<String>,
    /// `stop` or `length`, or `tool_calls`.
    pub finish_reason: &'static str,
    /// A forced tool call: function name and arguments (JSON text).
    pub tool_call: Option<(String, String)>,
    /// Reasoning text, when the request enabled thinking.
    pub reasoning: Option<String>,
    /// Whether `logprobs` was requested.
    pub logprobs: bool,
    /// Whether the stream ends with a usage chunk.
    pub include_usage: bool,
    /// Whether every chunk carries the usage so far (`stream_options.continuous_usage_stats`,
    /// a vLLM extension: the counts are running totals, not increments).
    pub continuous_usage: bool,
    /// Unix seconds.
    pub created: u64,
    /// A Responses request's echoed settings: `instructions`, `metadata`, `tools`,
    /// `tool_choice`, `max_output_tokens` (null elsewhere).
    pub echoed: Value,
}

/// A vLLM-style error body.
pub fn error_body(status: u16, kind: &str, message: &str) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": status}})
}

fn count_words(v: &Value) -> u32 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u32,
        Value::Array(parts) => parts
            .iter()
            .map(|p| p.get("text").map(count_words).unwrap_or(0))
            .sum(),
        _ => 0,
    }
}

/// Token `i` of the answer to `request_id` from `model`.
pub fn token(model: &str, request_id: &str, i: u32) -> String {
    match i {
        0 => format!("[{model}]"),
        1 => format!(" {request_id}"),
        n => format!(" t{n}"),
    }
}

impl Plan {
    /// Plans the answer, or returns a vLLM-style (status, error) refusal.
    pub fn new(
        body: &Value,
        request_id: String,
        model: &str,
        output_tokens: u32,
        max_model_len: u32,
    ) -> Result<Self, (u16, Value)> {
        Self::of(
            Kind::Chat,
            body,
            request_id,
            model,
            output_tokens,
            max_model_len,
        )
    }

    /// Plans the answer to a request of `kind`.
    pub fn of(
        kind: Kind,
        body: &Value,
        request_id: String,
        model: &str,
        output_tokens: u32,
        max_model_len: u32,
    ) -> Result<Self, (u16, Value)> {
        let bad = |m: String| (400, error_body(400, "BadRequestError", &m));
        let no_messages = Vec::new();
        let items;
        let (messages, prompt_text) = match kind {
            Kind::Responses => {
                // vLLM keeps stored responses only with VLLM_ENABLE_RESPONSES_API_STORE, and
                // answers an id it does not hold with 404 (responses/serving.py,
                // `_make_not_found_error`): the platform sends none (it expands the input).
                if let Some(id) = body.get("previous_response_id").and_then(Value::as_str) {
                    return Err((
                        404,
                        error_body(
                            404,
                            "invalid_request_error",
                            &format!("Response with id '{id}' not found."),
                        ),
                    ));
                }
                items = input_messages(body).map_err(bad)?;
                (&items, None)
            }
            Kind::Chat => (
                body.get("messages")
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad("messages: field required".into()))?,
                None,
            ),
            Kind::Text => {
                // vLLM's completions renderer refuses a suffix (vllm/entrypoints/openai/
                // serving_completion.py: "suffix is not currently supported").
                if body.get("suffix").is_some_and(|v| !v.is_null()) {
                    return Err(bad("suffix is not currently supported".into()));
                }
                (&no_messages, Some(prompt_of(body).map_err(bad)?))
            }
        };
        let requested = body.get("model").and_then(Value::as_str).unwrap_or(model);
        if requested != model {
            return Err((
                404,
                error_body(
                    404,
                    "NotFoundError",
                    &format!("The model `{requested}` does not exist."),
                ),
            ));
        }
        if body
            .get("n")
            .and_then(Value::as_u64)
            .is_some_and(|n| n != 1)
        {
            return Err(bad("n must be 1".into()));
        }
        let prompt_tokens: u32 = match &prompt_text {
            Some((_, tokens)) => *tokens,
            None => messages
                .iter()
                .map(|m| m.get("content").map(count_words).unwrap_or(0) + 4)
                .sum(),
        };
        let max_tokens = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .or_else(|| body.get("max_output_tokens"))
            .and_then(Value::as_u64)
            .map(|n| n as u32);
        let asked = max_tokens.unwrap_or(output_tokens);
        if u64::from(prompt_tokens) + u64::from(asked) > u64::from(max_model_len) {
            return Err(bad(format!(
                "This model's maximum context length is {max_model_len} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {asked} in the completion). Please reduce the length of the messages or completion.",
                u64::from(prompt_tokens) + u64::from(asked)
            )));
        }
        let n = asked.min(output_tokens);
        let mut finish_reason = if n < output_tokens { "length" } else { "stop" };
        let stops: Vec<String> = match body.get("stop") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let mut tokens = Vec::with_capacity(n as usize);
        for i in 0..n {
            let t = token(model, &request_id, i);
            if stops.iter().any(|s| !s.is_empty() && t.trim() == s) {
                finish_reason = "stop";
                break;
            }
            tokens.push(t);
        }
        let tool_call = forced_tool(body).map(|name| {
            (
                name,
                json!({"request_id": request_id, "model": model}).to_string(),
            )
        });
        if tool_call.is_some() {
            finish_reason = "tool_calls";
        }
        let thinking = body
            .pointer("/chat_template_kwargs/enable_thinking")
            .and_then(Value::as_bool)
            == Some(true);
        let echo = match (&prompt_text, body.get("echo").and_then(Value::as_bool)) {
            (Some((text, _)), Some(true)) => Some(text.clone()),
            _ => None,
        };
        Ok(Self {
            kind,
            echo,
            id: match kind {
                Kind::Chat => format!("chatcmpl-{request_id}"),
                Kind::Text => format!("cmpl-{request_id}"),
                // vLLM's response id is the request's `request_id` (ResponsesResponse.
                // from_request), `resp_<uuid>` when the caller sets none.
                Kind::Responses => body
                    .get("request_id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("resp_{request_id}"), str::to_owned),
            },
            echoed: match kind {
                Kind::Responses => json!({
                    "instructions": body.get("instructions").cloned().unwrap_or(Value::Null),
                    "metadata": body.get("metadata").cloned().unwrap_or(Value::Null),
                    "tools": body.get("tools").cloned().unwrap_or(json!([])),
                    "tool_choice": body.get("tool_choice").cloned().unwrap_or(json!("auto")),
                    "max_output_tokens": asked,
                }),
                _ => Value::Null,
            },
            reasoning: thinking.then(|| format!("thinking about {request_id}")),
            request_id,
            model: model.to_owned(),
            prompt_tokens,
            tokens,
            finish_reason,
            tool_call,
            // Chat: `true`; text: a count (any number asks for them).
            logprobs: body.get("logprobs").and_then(Value::as_bool) == Some(true)
                || (kind == Kind::Text && body.get("logprobs").is_some_and(Value::is_u64)),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            continuous_usage: body
                .pointer("/stream_options/continuous_usage_stats")
                .and_then(Value::as_bool)
                == Some(true),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    /// Output tokens produced (a tool call counts its argument fragments).
    pub fn completion_tokens(&self) -> u32 {
        if self.tool_call.is_some() {
            4
        } else {
            self.tokens.len() as u32
        }
    }

    fn usage(&self) -> Value {
        let c = self.completion_tokens();
        json!({"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens + c, "completion_tokens": c, "prompt_tokens_details": null})
    }

    fn logprobs_of<'a>(&self, tokens: impl Iterator<Item = &'a String>) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let content: Vec<Value> = tokens
            .map(|t| json!({"token": t, "logprob": -0.125, "bytes": t.as_bytes(), "top_logprobs": []}))
            .collect();
        json!({ "content": content })
    }

    fn tool_calls(&self) -> Option<Value> {
        self.tool_call.as_ref().map(|(name, args)| {
            json!([{"id": format!("chatcmpl-tool-{}", self.request_id), "type": "function", "function": {"name": name, "arguments": args}}])
        })
    }

    /// A text completion's `logprobs` for these tokens (vLLM's `CompletionLogProbs`).
    fn text_logprobs<'a>(&self, tokens: impl Iterator<Item = &'a String>) -> Value {
        if !self.logprobs {
            return Value::Null;
        }
        let tokens: Vec<&String> = tokens.collect();
        json!({
            "text_offset": (0..tokens.len()).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|_| -0.125).collect::<Vec<_>>(),
            "tokens": tokens,
            "top_logprobs": tokens.iter().map(|t| json!({ t.as_str(): -0.125 })).collect::<Vec<_>>(),
        })
    }

    /// The non-streaming `text_completion` body (vLLM's `CompletionResponse`).
    fn text_completion(&self) -> Value {
        let text = format!(
            "{}{}",
            self.echo.as_deref().unwrap_or(""),
            self.tokens.concat()
        );
        json!({
            "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": self.text_logprobs(self.tokens.iter()),
                         "finish_reason": self.finish_reason, "stop_reason": null, "prompt_logprobs": null}],
            "usage": self.usage()
        })
    }

    /// The SSE events of a streamed text completion (vLLM's `CompletionStreamResponse`
    /// chunks: one per token, the finish reason on the last, then the usage chunk if asked).
    fn text_stream_events(&self) -> Vec<(bool, Value)> {
        let chunk = |text: &str, logprobs: Value, finish: Option<&str>| {
            let mut c = json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": null}]
            });
            if self.include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut out = Vec::new();
        if let Some(e) = &self.echo {
            out.push((true, chunk(e, Value::Null, None)));
        }
        let last = self.tokens.len().saturating_sub(1);
        for (i, t) in self.tokens.iter().enumerate() {
            let finish = (i == last).then_some(self.finish_reason);
            let first_step = i == 0 && self.echo.is_none();
            out.push((
                first_step || i > 0,
                chunk(t, self.text_logprobs(std::iter::once(t)), finish),
            ));
        }
        if self.tokens.is_empty() {
            out.push((true, chunk("", Value::Null, Some(self.finish_reason))));
        }
        if self.include_usage {
            out.push((false, json!({
                "id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage()
            })));
        }
        out
    }

    /// The Responses API's `usage` (vLLM's `ResponseUsage`).
    fn response_usage(&self) -> Value {
        let c = self.completion_tokens();
        json!({"input_tokens": self.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": self.prompt_tokens + c})
    }

    /// The answer's output item: an assistant message, or the forced function call (OpenAI's
    /// `ResponseOutputMessage` / `ResponseFunctionToolCall`), `status` as given.
    fn output_item(&self, status: &str, text: &str, arguments: &str) -> Value {
        match &self.tool_call {
            Some((name, _)) => json!({
                "id": format!("fc_{}", self.request_id), "type": "function_call",
                "call_id": format!("call_{}", self.request_id), "name": name,
                "arguments": arguments, "status": status,
            }),
            None => {
                let content = if status == "in_progress" {
                    json!([])
                } else {
                    json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
                };
                json!({"id": format!("msg_{}", self.request_id), "type": "message",
                       "role": "assistant", "status": status, "content": content})
            }
        }
    }

    /// The `response` object (vLLM's `ResponsesResponse`): `status` and `output` as given.
    fn response_object(&self, status: &str, output: Value, usage: Value) -> Value {
        let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
        let e = &self.echoed;
        json!({
            "id": self.id, "object": "response", "created_at": self.created, "model": self.model,
            "status": status, "incomplete_details": incomplete, "error": null,
            "instructions": e["instructions"], "metadata": e["metadata"], "output": output,
            "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0,
            "tool_choice": e["tool_choice"], "tools": e["tools"], "background": false,
            "max_output_tokens": e["max_output_tokens"], "max_tool_calls": null,
            "previous_response_id": null, "prompt": null, "reasoning": null,
            "service_tier": "auto", "text": null, "top_logprobs": null, "truncation": "disabled",
            "usage": usage, "user": null,
        })
    }

    /// How the response ended: `incomplete` when `max_output_tokens` cut it.
    fn response_status(&self) -> &'static str {
        if self.finish_reason == "length" {
            "incomplete"
        } else {
            "completed"
        }
    }

    /// The non-streaming `response`.
    fn response(&self) -> Value {
        let (text, args) = (self.tokens.concat(), self.tool_args());
        let item = self.output_item("completed", &text, &args);
        self.response_object(self.response_status(), json!([item]), self.response_usage())
    }

    fn tool_args(&self) -> String {
        self.tool_call
            .as_ref()
            .map(|(_, a)| a.clone())
            .unwrap_or_default()
    }

    /// The events of a streamed response, each with whether an engine step passes before it:
    /// `response.created`, `response.in_progress`, the output item's `added`, its content
    /// (text: `content_part.added`, one `output_text.delta` per token, `output_text.done`,
    /// `content_part.done`; a function call: `function_call_arguments.delta`s and `.done`), the
    /// item's `done`, then `response.completed` with the usage. Event names and shapes: OpenAI's
    /// streaming reference (platform.openai.com/docs/api-reference/responses-streaming) and
    /// vLLM's `StreamingResponsesResponse` (responses/protocol.py), which sends each as
    /// `event: <type>` + `data: <json>` and no `[DONE]` (responses/api_router.py).
    fn response_events(&self) -> Vec<(bool, Value)> {
        let mut out: Vec<(bool, Value)> = Vec::new();
        let mut push = |step: bool, mut e: Value| {
            e["sequence_number"] = json!(out.len());
            out.push((step, e));
        };
        let item_id = match &self.tool_call {
            Some(_) => format!("fc_{}", self.request_id),
            None => format!("msg_{}", self.request_id),
        };
        let at = |t: &str| json!({"type": t, "item_id": item_id, "output_index": 0});
        push(
            false,
            json!({"type": "response.created",
            "response": self.response_object("in_progress", json!([]), Value::Null)}),
        );
        push(
            false,
            json!({"type": "response.in_progress",
            "response": self.response_object("in_progress", json!([]), Value::Null)}),
        );
        push(
            false,
            json!({"type": "response.output_item.added", "output_index": 0,
            "item": self.output_item("in_progress", "", "")}),
        );
        let text = self.tokens.concat();
        let args = self.tool_args();
        if self.tool_call.is_some() {
            let cut = args.len() / 3;
            for part in [&args[..cut], &args[cut..2 * cut], &args[2 * cut..]] {
                let mut e = at("response.function_call_arguments.delta");
                e["delta"] = json!(part);
                push(true, e);
            }
            let mut e = at("response.function_call_arguments.done");
            e["arguments"] = json!(args);
            push(false, e);
        } else {
            let part = |text: &str| json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            let mut e = at("response.content_part.added");
            e["content_index"] = json!(0);
            e["part"] = part("");
            push(false, e);
            for t in &self.tokens {
                let mut e = at("response.output_text.delta");
                e["content_index"] = json!(0);
                e["delta"] = json!(t);
                e["logprobs"] = json!([]);
                push(true, e);
            }
            let mut e = at("response.output_text.done");
            e["content_index"] = json!(0);
            e["text"] = json!(text);
            e["logprobs"] = json!([]);
            push(false, e);
            let mut e = at("response.content_part.done");
            e["content_index"] = json!(0);
            e["part"] = part(&text);
            push(false, e);
        }
        let item = self.output_item("completed", &text, &args);
        push(
            false,
            json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        );
        push(
            false,
            json!({"type": "response.completed",
            "response": self.response_object(self.response_status(), json!([item]), self.response_usage())}),
        );
        out
    }

    /// The non-streaming body: `chat.completion`, `text_completion` or `response`.
    pub fn completion(&self) -> Value {
        if self.kind == Kind::Text {
            return self.text_completion();
        }
        if self.kind == Kind::Responses {
            return self.response();
        }
        let content: Option<String> = if self.tool_call.is_some() {
            None
        } else {
            Some(self.tokens.concat())
        };
        let mut message = json!({"role": "assistant", "content": content, "tool_calls": self.tool_calls().unwrap_or(json!([]))});
        if let Some(r) = &self.reasoning {
            message["reasoning_content"] = json!(r);
        }
        json!({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "logprobs": self.logprobs_of(self.tokens.iter()), "finish_reason": self.finish_reason, "stop_reason": null}],
            "usage": self.usage(), "prompt_logprobs": null
        })
    }

    fn chunk(&self, delta: Value, logprobs: Value, finish: Option<&str>) -> Value {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// The SSE events of a streamed answer, each paired with whether one engine step passes
    /// before it. Like vLLM, the role chunk arrives with the first token (after prefill), the
    /// first token right with it, then one token per decode step.
    pub fn stream_events(&self) -> Vec<(bool, Value)> {
        if self.kind == Kind::Text {
            return self.text_stream_events();
        }
        if self.kind == Kind::Responses {
            return self.response_events();
        }
        let mut out = Vec::new();
        out.push((
            true,
            self.chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                None,
            ),
        ));
        if let Some(r) = &self.reasoning {
            out.push((
                false,
                self.chunk(json!({"reasoning_content": r}), Value::Null, None),
            ));
        }
        if let Some((name, args)) = &self.tool_call {
            let call_id = format!("chatcmpl-tool-{}", self.request_id);
            out.push((false, self.chunk(
                json!({"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
                None,
            )));
            let cut = args.len() / 3;
            for part in [&args[..cut], &args[cut..2 * cut], &args[2 * cut..]] {
                out.push((
                    true,
                    self.chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                        Value::Null,
                        None,
                    ),
                ));
            }
        } else {
            for (i, t) in self.tokens.iter().enumerate() {
                out.push((
                    i > 0,
                    self.chunk(
                        json!({"content": t}),
                        self.logprobs_of(std::iter::once(t)),
                        None,
                    ),
                ));
            }
        }
        out.push((
            false,
            self.chunk(json!({}), Value::Null, Some(self.finish_reason)),
        ));
        if self.include_usage && self.continuous_usage {
            let mut produced = 0;
            for (_, c) in &mut out {
                let delta = &c["choices"][0]["delta"];
                if delta.get("content").is_some_and(|t| t != "")
                    || delta.get("tool_calls").is_some()
                {
                    produced += 1;
                }
                c["usage"] = json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": produced,
                    "total_tokens": self.prompt_tokens + produced});
            }
        }
        if self.include_usage {
            out.push((false, json!({
                "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage()
            })));
        }
        out
    }
}

/// A completions `prompt`: its text (for `echo`) and its length in tokens (words, or token ids).
/// One prompt per request (vLLM answers a list of prompts with a choice each; the stub does not).
fn prompt_of(body: &Value) -> Result<(String, u32), String> {
    let one = |v: &Value| -> Option<(String, u32)> {
        match v {
            Value::String(s) => Some((s.clone(), s.split_whitespace().count() as u32)),
            Value::Array(ids) if ids.iter().all(Value::is_u64) => Some((
                ids.iter().map(|t| format!("<{t}>")).collect::<String>(),
                ids.len() as u32,
            )),
            _ => None,
        }
    };
    match body.get("prompt") {
        None => Err("prompt: field required".into()),
        Some(Value::Array(list)) if list.len() == 1 && !list[0].is_u64() => {
            one(&list[0]).ok_or_else(|| "prompt: not a string or token ids".into())
        }
        Some(Value::Array(list)) if list.len() > 1 && !list[0].is_u64() => {
            Err("stub: one prompt per request".into())
        }
        Some(v) => one(v).ok_or_else(|| "prompt: not a string or token ids".into()),
    }
}

/// The first tool's or the named tool's name, when the request forces a tool call. Chat nests
/// a function's name (`{"type": "function", "function": {"name"}}`); the Responses API does not
/// (`{"type": "function", "name"}`), in tools and in `tool_choice` alike.
fn forced_tool(body: &Value) -> Option<String> {
    let tools = body.get("tools")?.as_array()?;
    let name = |v: &Value| {
        v.pointer("/function/name")
            .or_else(|| v.get("name"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let first = name(tools.first()?)?;
    match body.get("tool_choice")? {
        Value::String(s) if s == "required" => Some(first),
        o @ Value::Object(_) => name(o),
        _ => None,
    }
}

/// A Responses request's `input` (and `instructions`) as messages the prompt is counted from:
/// a string is one user message; items are messages (`content` a string or parts), function
/// calls (their `arguments`), function call outputs (their `output`), or earlier output
/// messages (parts of `output_text`).
fn input_messages(body: &Value) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    if let Some(i) = body.get("instructions").and_then(Value::as_str) {
        out.push(json!({"role": "system", "content": i}));
    }
    match body.get("input") {
        Some(Value::String(s)) => out.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let content = match item.get("type").and_then(Value::as_str) {
                    Some("function_call") => item.get("arguments").cloned(),
                    Some("function_call_output") => item.get("output").cloned(),
                    Some("reasoning") => Some(json!("")),
                    _ => item.get("content").cloned(),
                };
                match content {
                    Some(c) => out.push(json!({"role": "user", "content": c})),
                    None => return Err(format!("input[{i}]: not an input item the stub knows")),
                }
            }
        }
        _ => return Err("input: field required".into()),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(body: Value) -> Plan {
        Plan::new(&body, "r1".into(), "m", 8, 100).unwrap()
    }

    #[test]
    fn answer_names_model_and_request_and_honours_max_tokens() {
        let p = plan(
            json!({"model": "m", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 3}),
        );
        assert_eq!(p.tokens.concat(), "[m] r1 t2");
        assert_eq!(p.finish_reason, "length");
        assert_eq!(p.prompt_tokens, 7);
        let p = plan(json!({"messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(p.tokens.len(), 8);
        assert_eq!(p.finish_reason, "stop");
        let p = plan(json!({"messages": [], "max_completion_tokens": 2, "max_tokens": 5}));
        assert_eq!(p.tokens.len(), 2);
    }

    #[test]
    fn stop_strings_end_the_answer() {
        let p = plan(json!({"messages": [], "stop": ["t3"]}));
        assert_eq!(p.tokens.len(), 3);
        assert_eq!(p.finish_reason, "stop");
    }

    #[test]
    fn refusals_look_like_vllm() {
        let e = Plan::new(
            &json!({"model": "x", "messages": []}),
            "r".into(),
            "m",
            8,
            100,
        )
        .unwrap_err();
        assert_eq!(e.0, 404);
        let e = Plan::new(
            &json!({"messages": [], "max_tokens": 200}),
            "r".into(),
            "m",
            8,
            100,
        )
        .unwrap_err();
        assert_eq!(e.0, 400);
        assert!(
            e.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maximum context length is 100")
        );
    }

    #[test]
    fn forced_tool_calls_are_well_formed() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}, {"type": "function", "function": {"name": "other"}}]);
        let p = plan(json!({"messages": [], "tools": tools, "tool_choice": "required"}));
        let c = p.completion();
        let call = &c["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["request_id"], "r1");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        let p = plan(
            json!({"messages": [], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "other"}}}),
        );
        assert_eq!(p.tool_call.unwrap().0, "other");
        let p = plan(json!({"messages": [], "tools": tools, "tool_choice": "auto"}));
        assert!(p.tool_call.is_none());
    }

    #[test]
    fn streamed_tool_call_arguments_reassemble() {
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let p = plan(
            json!({"messages": [], "tools": tools, "tool_choice": "required", "stream": true}),
        );
        let args: String = p
            .stream_events()
            .iter()
            .filter_map(|(_, c)| {
                c.pointer("/choices/0/delta/tool_calls/0/function/arguments")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(args, p.tool_call.unwrap().1);
    }

    #[test]
    fn usage_chunk_closes_the_stream_when_asked() {
        let p = plan(json!({"messages": [], "stream_options": {"include_usage": true}}));
        let ev = p.stream_events();
        let last = &ev.last().unwrap().1;
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["completion_tokens"], 8);
        assert_eq!(ev[0].1["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            ev.iter()
                .filter(|(_, c)| !c["choices"].as_array().unwrap().is_empty()
                    && !c["choices"][0]["finish_reason"].is_null())
                .count(),
            1
        );
    }
}

#[cfg(test)]
mod responses_tests {
    use super::*;

    fn plan(body: Value) -> Result<Plan, (u16, Value)> {
        Plan::of(Kind::Responses, &body, "r1".into(), "m", 3, 4096)
    }

    #[test]
    fn a_response_counts_every_input_item_and_reports_its_usage() {
        let body = json!({"instructions": "be brief", "input": [
            {"role": "user", "content": "hello there"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi you"}]},
            {"type": "function_call_output", "call_id": "c", "output": "sunny"},
        ], "request_id": "resp_abc"});
        let p = plan(body).unwrap();
        // (2 + 4) for the instructions, (2 + 4), (2 + 4), (1 + 4).
        assert_eq!(p.prompt_tokens, 23);
        let r = p.completion();
        assert_eq!(r["id"], "resp_abc", "vLLM's id is the request_id");
        assert_eq!(
            (r["object"].as_str(), r["status"].as_str()),
            (Some("response"), Some("completed"))
        );
        assert_eq!(r["output"][0]["content"][0]["text"], "[m] r1 t2");
        assert_eq!(r["usage"]["input_tokens"], 23);
        assert_eq!(r["usage"]["output_tokens"], 3);
    }

    #[test]
    fn streamed_events_are_typed_numbered_and_end_with_the_completed_response() {
        let p = plan(json!({"input": "hi", "max_output_tokens": 2})).unwrap();
        let events = p.stream_events();
        let types: Vec<&str> = events
            .iter()
            .map(|(_, e)| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        for (i, (_, e)) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i);
        }
        let done = &events.last().unwrap().1["response"];
        assert_eq!(done["status"], "incomplete", "max_output_tokens cut it");
        assert_eq!(done["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(done["usage"]["output_tokens"], 2);
        assert_eq!(
            events.iter().filter(|(step, _)| *step).count(),
            2,
            "one step per token"
        );
    }

    #[test]
    fn a_forced_function_call_is_an_output_item_and_a_stored_id_is_not_found() {
        let tools = json!([{"type": "function", "name": "get_weather", "parameters": {}}]);
        let p =
            plan(json!({"input": "weather?", "tools": tools, "tool_choice": "required"})).unwrap();
        let r = p.completion();
        assert_eq!(r["output"][0]["type"], "function_call");
        assert_eq!(r["output"][0]["name"], "get_weather");
        let types: Vec<String> = p
            .stream_events()
            .iter()
            .map(|(_, e)| e["type"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            types.contains(&"response.function_call_arguments.done".to_owned()),
            "{types:?}"
        );
        let (status, err) =
            plan(json!({"input": "again", "previous_response_id": "resp_x"})).unwrap_err();
        assert_eq!(status, 404);
        assert_eq!(
            err["error"]["message"],
            "Response with id 'resp_x' not found."
        );
    }
}
