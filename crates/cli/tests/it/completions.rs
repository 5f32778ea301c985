//! `POST /v1/completions` (the legacy text completions) on the real stack: answered through the
//! queue as vLLM answers them, streaming and not, with the same tiers, errors, queue bounds
//! and cancellation as chat.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use ssw_test_support::{TestPlatform, json_of, sse_events, stub_replica};

use crate::failures::slow_stub;
use crate::ssw;

async fn complete(p: &TestPlatform, request_id: &str, body: &Value) -> reqwest::Response {
    p.post_with_id("/v1/completions", request_id, body).await
}

#[tokio::test]
async fn completions_are_answered_like_vllm_through_the_queue() {
    let p = TestPlatform::start(ssw()).await;
    let light = p.platform.base_config().pools["light"].served_model.clone();
    // Not streaming: a text_completion whose text names the engine's model and the request.
    let body = json!({"model": "light", "prompt": "The innkeeper said", "max_tokens": 4});
    let (status, headers, v) = json_of(complete(&p, "cmpl-1", &body).await).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], light.as_str());
    assert_eq!(v["service_tier"], "default");
    assert_eq!(headers["x-ssw-pool"], "light");
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("[{light}] cmpl-1")), "{text}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    // The engine got the body with `model` rewritten, and none of the pool's chat defaults
    // (light's `chat_template_kwargs`, which a completions request does not know).
    let sent = p.stub_request("light-0", "cmpl-1").await;
    let sent = sent.or(p.stub_request("light-1", "cmpl-1").await).unwrap();
    assert_eq!(sent["model"], light.as_str());
    assert!(sent.get("chat_template_kwargs").is_none(), "{sent}");
    // echo and logprobs pass through.
    let body =
        json!({"model": "light", "prompt": "Hail", "max_tokens": 2, "echo": true, "logprobs": 1});
    let (_, _, v) = json_of(complete(&p, "cmpl-2", &body).await).await;
    let text = v["choices"][0]["text"].as_str().unwrap_or_default();
    assert!(text.starts_with("Hail["), "{v}");
    assert_eq!(
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Streaming, at the priority tier: text_completion chunks, the usage chunk, [DONE].
    let body = json!({"model": "heavy", "prompt": "Hail", "max_tokens": 3, "stream": true,
                      "stream_options": {"include_usage": true}, "service_tier": "priority"});
    let r = complete(&p, "cmpl-3", &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ssw-tier"], "gold");
    let (events, done) = sse_events(&r.text().await.unwrap());
    assert!(done);
    let texts: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert!(texts.contains("cmpl-3"), "{texts}");
    assert!(
        events.iter().all(|e| e["object"] == "text_completion"),
        "{events:?}"
    );
    assert!(
        events.iter().all(|e| e["service_tier"] == "priority"),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 3);
    // Errors: the field that is wrong, named; chat's fields are not completions'.
    for (body, status, param) in [
        (json!({"model": "light"}), 400, "prompt"),
        (json!({"model": "light", "prompt": {"a": 1}}), 400, "prompt"),
        (
            json!({"model": "light", "prompt": "x", "messages": []}),
            400,
            "messages",
        ),
        (
            json!({"model": "light", "prompt": "x", "logprobs": true}),
            400,
            "logprobs",
        ),
        (
            json!({"model": "light", "prompt": "x", "chat_template_kwargs": {}}),
            400,
            "chat_template_kwargs",
        ),
    ] {
        let (s, _, v) = json_of(complete(&p, "bad", &body).await).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (status, Some(param)),
            "{body}: {v}"
        );
    }
    let (s, _, v) =
        json_of(complete(&p, "bad", &json!({"model": "gpt-9", "prompt": "x"})).await).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    // And chat does not take a prompt.
    let r = p
        .chat(&json!({"model": "light", "prompt": "x", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    let (s, _, v) = json_of(r).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("prompt")));
}

#[tokio::test]
async fn completions_share_the_queue_bounds_and_cancellation_with_chat() {
    let p = TestPlatform::start_with(ssw(), |s| {
        // Heavy answers slowly (cancellation); light has no worker (its queue fills).
        s.replicas = vec![stub_replica("heavy-0", "heavy", slow_stub(50, 100, 200))];
        s.config.pools.get_mut("light").unwrap().max_queue = 2;
    })
    .await;
    let body = json!({"model": "light", "prompt": "x"});
    let waiting = p.hold_in_queue("/v1/completions", &body, "light", 2).await;
    let (s, h, v) = json_of(complete(&p, "third", &body).await).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("queue_full")),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    for w in waiting {
        w.abort();
    }
    // A streaming completion whose client hangs up is aborted on the engine.
    let body = json!({"model": "heavy", "prompt": "x", "stream": true});
    let r = complete(&p, "hang-up", &body).await;
    assert_eq!(r.status(), 200);
    let mut chunks = r.bytes_stream();
    chunks.next().await.expect("first chunk").expect("bytes");
    drop(chunks);
    TestPlatform::eventually(
        Duration::from_secs(3),
        "the abort reaches the engine",
        || async {
            p.stub_metric("heavy-0", "ssw_stub_aborted_requests_total")
                .await
                == 1.0
        },
    )
    .await;
}
