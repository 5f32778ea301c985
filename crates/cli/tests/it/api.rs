//! The OpenAI surface: routing, streaming, tools, fidelity, and every bad-input class.

use serde_json::{Value, json};
use ssw_test_support::{TestPlatform, chat_body, sse_events};

use crate::ssw;

const HEAVY: &str = "Qwen/Qwen2.5-14B-Instruct-AWQ";
const LIGHT: &str = "Qwen/Qwen3-8B-AWQ";

async fn json_of(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, v)
}

fn assert_openai_error(v: &Value, code: &str) {
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert_eq!(e["code"], code, "{v}");
}

#[tokio::test]
async fn routes_by_model_name_alias_and_served_name_and_header_wins() {
    let p = TestPlatform::start_with(ssw(), |s| {
        s.config.pools.get_mut("heavy").unwrap().aliases = vec!["npc-boss".into()];
    })
    .await;
    for (model, header, pool, served) in [
        ("heavy", None, "heavy", HEAVY),
        ("npc-boss", None, "heavy", HEAVY),
        (HEAVY, None, "heavy", HEAVY),
        ("light", None, "light", LIGHT),
        (LIGHT, None, "light", LIGHT),
        (HEAVY, Some("light"), "light", LIGHT),
        ("anything-at-all", Some("heavy"), "heavy", HEAVY),
    ] {
        let mut req = p
            .http
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-request-id", format!("route-{model}-{pool}"))
            .body(chat_body(model).to_string());
        if let Some(h) = header {
            req = req.header("x-ssw-pool", h);
        }
        let (status, headers, body) = json_of(req.send().await.unwrap()).await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(headers["x-ssw-pool"], pool, "{model}");
        assert!(
            headers["x-ssw-worker"].to_str().unwrap().starts_with(pool),
            "{model}"
        );
        assert_eq!(
            headers["x-request-id"],
            format!("route-{model}-{pool}").as_str()
        );
        // The body's model is the served name, as vLLM returns it; the stub's first token
        // names the engine that answered and its second the request.
        assert_eq!(body["model"], served);
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            content.starts_with(&format!("[{served}] route-{model}-{pool}")),
            "{content}"
        );
    }
}

#[tokio::test]
async fn unknown_model_is_404_before_any_stream_and_models_are_listed() {
    let p = TestPlatform::start(ssw()).await;
    for stream in [false, true] {
        let mut body = chat_body("gpt-9");
        body["stream"] = json!(stream);
        let (status, headers, v) = json_of(p.chat(&body).await).await;
        assert_eq!(status, 404);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        assert_openai_error(&v, "model_not_found");
    }
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .header("x-ssw-pool", "medium")
        .body(chat_body("heavy").to_string())
        .send()
        .await
        .unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 404);
    assert_openai_error(&v, "model_not_found");

    let (status, _, list) = json_of(p.http.get(p.url("/v1/models")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    let ids: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["root"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("heavy".to_owned(), HEAVY.to_owned()),
            ("light".to_owned(), LIGHT.to_owned())
        ]
    );
    let (status, _, card) = json_of(
        p.http
            .get(p.url(&format!("/v1/models/{LIGHT}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(card["id"], "light");
    let (status, _, v) = json_of(p.http.get(p.url("/v1/models/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_openai_error(&v, "model_not_found");
}

#[tokio::test]
async fn non_streaming_answer_carries_usage_and_honours_max_tokens() {
    let p = TestPlatform::start(ssw()).await;
    let mut body = chat_body("heavy");
    body["max_tokens"] = json!(5);
    let (status, headers, v) = json_of(p.chat(&body).await).await;
    assert_eq!(status, 200, "{v}");
    let rid = headers["x-request-id"].to_str().unwrap();
    assert_eq!(rid.len(), 32, "generated request id");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 5
    );
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn streaming_answer_has_role_first_one_finish_usage_and_done() {
    let p = TestPlatform::start(ssw()).await;
    let mut body = chat_body("light");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = p.chat(&body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert!(
        r.headers()["x-ssw-worker"]
            .to_str()
            .unwrap()
            .starts_with("light-")
    );
    let (events, done) = sse_events(&r.text().await.unwrap());
    assert!(done, "stream ends with [DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let finishes: Vec<_> = events
        .iter()
        .filter_map(|e| {
            e["choices"]
                .get(0)
                .and_then(|c| c["finish_reason"].as_str())
        })
        .collect();
    assert_eq!(finishes, ["stop"]);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 8);
    let text: String = events
        .iter()
        .filter_map(|e| {
            e["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(text.starts_with(&format!("[{LIGHT}]")), "{text}");
    assert!(events.iter().all(|e| e["model"] == LIGHT));
}

#[tokio::test]
async fn tool_calls_pass_through_streamed_and_not() {
    let p = TestPlatform::start(ssw()).await;
    let tools = json!([{"type": "function", "function": {"name": "open_hangar", "description": "d", "parameters": {"type": "object", "properties": {"bay": {"type": "integer"}}}}}]);
    let mut body = chat_body("heavy");
    body["tools"] = tools.clone();
    body["tool_choice"] = json!("required");
    let (status, _, v) = json_of(p.chat(&body).await).await;
    assert_eq!(status, 200, "{v}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "open_hangar");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args["model"], HEAVY);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    body["stream"] = json!(true);
    body["tool_choice"] = json!({"type": "function", "function": {"name": "open_hangar"}});
    let r = p.chat(&body).await;
    assert_eq!(r.status(), 200);
    let (events, done) = sse_events(&r.text().await.unwrap());
    assert!(done);
    let deltas: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"].get(0)?["delta"].get("tool_calls"))
        .collect();
    assert!(deltas.len() >= 2, "tool call streamed as several deltas");
    assert_eq!(deltas[0][0]["function"]["name"], "open_hangar");
    let args: String = deltas
        .iter()
        .filter_map(|d| d[0]["function"]["arguments"].as_str())
        .collect();
    let args: Value = serde_json::from_str(&args).expect("reassembled arguments are JSON");
    assert_eq!(args["model"], HEAVY);
}

#[tokio::test]
async fn request_reaches_engine_unchanged_but_model_and_pool_defaults() {
    let p = TestPlatform::start(ssw()).await;
    let sent = json!({
        "model": "light",
        "messages": [{"role": "system", "content": "You are a dock worker."}, {"role": "user", "content": "hi"}],
        "temperature": 0.3, "top_p": 0.9, "seed": 7, "stop": ["\n\n"],
        "logprobs": true, "metadata": {"npc_id": "42", "tags": "a,b"}, "top_k": 5,
        "chat_template_kwargs": {"custom": 1}
    });
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .header("x-request-id", "fidelity-1")
        .body(sent.to_string())
        .send()
        .await
        .unwrap();
    let (status, headers, answer) = json_of(r).await;
    assert_eq!(status, 200, "{answer}");
    // The answer comes back unchanged, vendor fields (logprobs) included.
    assert_eq!(
        answer["choices"][0]["logprobs"]["content"][0]["logprob"],
        -0.125
    );
    assert!(
        answer["choices"][0]["message"]
            .get("reasoning_content")
            .is_none()
    );
    let replica = headers["x-ssw-worker"].to_str().unwrap().to_owned();
    let got = p
        .stub_request(&replica, "fidelity-1")
        .await
        .expect("engine saw the request");
    let mut expected = sent.clone();
    expected["model"] = json!(LIGHT);
    // The light pool's default fills in what the client did not set, key by key.
    expected["chat_template_kwargs"] = json!({"custom": 1, "enable_thinking": false});
    assert_eq!(got, expected);
    // A client that sets the field keeps its value, and the reasoning comes back.
    let mut thinking = chat_body("light");
    thinking["chat_template_kwargs"] = json!({"enable_thinking": true});
    let (_, _, v) = json_of(p.chat(&thinking).await).await;
    assert!(
        v["choices"][0]["message"]["reasoning_content"]
            .as_str()
            .unwrap()
            .starts_with("thinking about")
    );
    // The heavy pool has no such default.
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .header("x-request-id", "fidelity-2")
        .body(chat_body("heavy").to_string())
        .send()
        .await
        .unwrap();
    let replica = r.headers()["x-ssw-worker"].to_str().unwrap().to_owned();
    assert_eq!(
        p.stub_request(&replica, "fidelity-2").await.unwrap(),
        json!({"model": HEAVY, "messages": [{"role": "user", "content": "hello there"}]})
    );
}

#[tokio::test]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let p = TestPlatform::start_with(ssw(), |s| {
        s.config.gateway.max_body = ssw_config::ByteSize(64 * 1024);
    })
    .await;
    let m = r#""messages":[{"role":"user","content":"x"}]"#;
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "invalid_json"),
        ("[1,2]".into(), 400, "invalid_request"),
        ("\"text\"".into(), 400, "invalid_request"),
        (r#"{"model":"heavy"}"#.into(), 400, "invalid_request"),
        (
            r#"{"model":"heavy","messages":"hi"}"#.into(),
            400,
            "invalid_request",
        ),
        (format!(r#"{{"model":5,{m}}}"#), 400, "invalid_request"),
        (
            format!(r#"{{"model":"heavy","stream":"yes",{m}}}"#),
            400,
            "invalid_request",
        ),
        (
            format!(r#"{{"model":"heavy","max_tokens":"ten",{m}}}"#),
            400,
            "invalid_request",
        ),
        (
            format!(r#"{{"model":"heavy","temperature":"hot",{m}}}"#),
            400,
            "invalid_request",
        ),
        (format!(r#"{{{m}}}"#), 400, "invalid_request"),
        (
            format!(
                r#"{{"model":"heavy",{m},"pad":"{}"}}"#,
                "x".repeat(70 * 1024)
            ),
            413,
            "request_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let r = p
            .http
            .post(p.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (got, headers, v) = json_of(r).await;
        assert_eq!(got, status, "{}: {v}", &body[..body.len().min(60)]);
        assert!(headers.contains_key("x-request-id"));
        assert_openai_error(&v, code);
    }
    // Within the pool's ceiling, but prompt + completion exceed the context: the engine's
    // own 4xx reaches the client with its status and message.
    let mut too_long = chat_body("heavy");
    too_long["max_tokens"] = json!(32_768);
    let (status, headers, v) = json_of(p.chat(&too_long).await).await;
    assert_eq!(status, 400, "{v}");
    assert_openai_error(&v, "engine_rejected");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"),
        "{v}"
    );
    assert!(headers.contains_key("x-ssw-worker"));
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    let dir = std::env::temp_dir().join(format!("ssw-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("keys");
    std::fs::write(&keys, "# game servers\nsk-alpha\nsk-beta\n").unwrap();
    let p = TestPlatform::start_with(ssw(), |s| {
        s.config.gateway.api_keys_file = Some(keys.clone())
    })
    .await;
    let send = |auth: Option<&'static str>| {
        let mut r = p
            .http
            .post(p.url("/v1/chat/completions"))
            .body(chat_body("light").to_string());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let (status, headers, v) = json_of(send(None).await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_openai_error(&v, "missing_api_key");
    let (status, _, v) = json_of(send(Some("Bearer sk-gamma")).await.unwrap()).await;
    assert_eq!(status, 401);
    assert_openai_error(&v, "invalid_api_key");
    let (status, _, _) = json_of(send(Some("Bearer sk-beta")).await.unwrap()).await;
    assert_eq!(status, 200);
    let r = p.http.get(p.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        p.http.get(p.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        p.http.get(p.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn readyz_reports_each_pool_and_metrics_count_requests() {
    let p = TestPlatform::start(ssw()).await;
    // Ready means one serving worker per pool; the second replica's first heartbeat may come a
    // moment later (its process started later on a loaded machine: seen once in CI).
    TestPlatform::eventually(
        std::time::Duration::from_secs(10),
        "both replicas of each pool live",
        || async {
            let text = p.get_text(&p.url("/readyz")).await;
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            v["pools"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|x| x["live_workers"] == 2))
        },
    )
    .await;
    let r = p.http.get(p.url("/readyz")).send().await.unwrap();
    let (status, _, v) = json_of(r).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ready"], true);
    for pool in v["pools"].as_array().unwrap() {
        assert_eq!(pool["live_workers"], 2, "{pool}");
        assert_eq!(pool["backlog"], 0);
    }
    for _ in 0..3 {
        assert_eq!(p.chat(&chat_body("heavy")).await.status(), 200);
    }
    assert_eq!(p.chat(&chat_body("nope")).await.status(), 404);
    let text = p.get_text(&p.url("/metrics")).await;
    let count = |labels: &[(&str, &str)]| {
        ssw_test_support::metric(&text, "ssw_gateway_requests_total", labels)
    };
    assert_eq!(
        count(&[("pool", "heavy"), ("status", "200"), ("code", "ok")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        count(&[
            ("pool", "none"),
            ("status", "404"),
            ("code", "model_not_found")
        ]),
        Some(1.0),
        "{text}"
    );
}
