//! `POST /v1/responses` and the stored responses on the real stack: answered through the queue
//! as vLLM answers them, typed stream events, `previous_response_id` served by any replica
//! (the gateway keeps the state, not the engines), retrieve and delete per tenant, and the
//! same tiers, errors, queue bounds and cancellation as chat.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use ssw_config::TenantConfig;
use ssw_test_support::{TestPlatform, json_of, stub_replica};

use crate::failures::slow_stub;
use crate::ssw;
use crate::tiers::tenant;

async fn create(
    p: &TestPlatform,
    request_id: &str,
    key: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut r = p
        .http
        .post(p.url("/v1/responses"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(body.to_string());
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    r.send().await.unwrap()
}

async fn call(
    p: &TestPlatform,
    method: reqwest::Method,
    id: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let mut r = p
        .http
        .request(method, p.url(&format!("/v1/responses/{id}")));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let (s, _, v) = json_of(r.send().await.unwrap()).await;
    (s, v)
}

/// The body an engine of `pool` got for `request_id` (whichever replica it was).
async fn sent(p: &TestPlatform, pool: &str, request_id: &str) -> Value {
    for r in 0..2 {
        if let Some(b) = p.stub_request(&format!("{pool}-{r}"), request_id).await {
            return b;
        }
    }
    panic!("no engine of {pool} got {request_id}");
}

/// A Responses stream's events: (the `event:` name, the data).
fn typed_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("data");
            (name.to_owned(), serde_json::from_str(data).expect("json"))
        })
        .collect()
}

#[tokio::test]
async fn responses_are_kept_by_the_platform_and_a_follow_up_runs_on_any_replica() {
    let p = TestPlatform::start(ssw()).await;
    let light = p.platform.base_config().pools["light"].served_model.clone();
    let body = json!({"model": "light", "input": "hello there", "instructions": "be brief"});
    let (status, headers, first) = json_of(create(&p, "turn-1", None, &body).await).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["object"].as_str(), first["status"].as_str()),
        (Some("response"), Some("completed"))
    );
    assert_eq!(first["model"], light.as_str());
    assert_eq!(first["service_tier"], "default");
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    let text = first["output"][0]["content"][0]["text"].as_str().unwrap();
    assert!(text.starts_with(&format!("[{light}] turn-1")), "{text}");
    // (2 words + 4) of instructions and (2 + 4) of input.
    assert_eq!(first["usage"]["input_tokens"], 12);
    // The engine kept nothing and was told the id the gateway chose.
    let engine = sent(&p, "light", "turn-1").await;
    assert_eq!(
        (engine["store"].as_bool(), engine["request_id"].as_str()),
        (Some(false), Some(id.as_str()))
    );
    let first_worker = headers["x-ssw-worker"].to_str().unwrap().to_owned();

    // Follow-ups naming it until one lands on the other replica: each carries the whole
    // conversation (the earlier input, its output, the new input; not the instructions).
    let mut other = None;
    for i in 0..30 {
        let rid = format!("turn-2-{i}");
        let body = json!({"model": "light", "input": "and then?", "previous_response_id": id});
        let (status, headers, v) = json_of(create(&p, &rid, None, &body).await).await;
        assert_eq!(status, 200, "{v}");
        // (2 + 4) of the first input, (8 + 4) of its output, (2 + 4) of the new input: the
        // instructions are not carried over (as OpenAI does).
        assert_eq!(v["usage"]["input_tokens"], 24, "{v}");
        let engine = sent(&p, "light", &rid).await;
        assert!(engine.get("previous_response_id").is_none(), "{engine}");
        let items = engine["input"].as_array().unwrap();
        assert_eq!(items.len(), 3, "{engine}");
        assert_eq!(items[1]["type"], "message");
        assert_eq!(items[1]["role"], "assistant");
        assert_eq!(v["previous_response_id"], id.as_str(), "{v}");
        if headers["x-ssw-worker"] != first_worker.as_str() {
            other = Some(v);
            break;
        }
    }
    let second = other.expect("a follow-up on the other replica");
    // The second turn is kept too: its own follow-up sees four items.
    let second_id = second["id"].as_str().unwrap();
    let (status, _, third) = json_of(
        create(
            &p,
            "turn-3",
            None,
            &json!({"model": "light", "input": "bye", "previous_response_id": second_id}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(
        sent(&p, "light", "turn-3").await["input"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // Retrieve: the stored response, as the client got it.
    let (s, got) = call(&p, reqwest::Method::GET, &id, None).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["output"], first["output"]);
    assert_eq!(got["service_tier"], "default");
    // Delete, then it is gone for retrieve, delete and follow-ups alike.
    let (s, v) = call(&p, reqwest::Method::DELETE, &id, None).await;
    assert_eq!(
        (s, &v),
        (
            200,
            &json!({"id": id, "object": "response", "deleted": true})
        )
    );
    assert_eq!(call(&p, reqwest::Method::GET, &id, None).await.0, 404);
    assert_eq!(call(&p, reqwest::Method::DELETE, &id, None).await.0, 404);
    let (s, _, v) = json_of(
        create(
            &p,
            "gone",
            None,
            &json!({"model": "light", "input": "x", "previous_response_id": id}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str(), v["error"]["param"].as_str()),
        (
            400,
            Some("previous_response_not_found"),
            Some("previous_response_id")
        ),
        "{v}"
    );
    // `store: false`: answered, not kept.
    let (_, _, v) = json_of(
        create(
            &p,
            "unstored",
            None,
            &json!({"model": "light", "input": "x", "store": false}),
        )
        .await,
    )
    .await;
    assert_eq!(
        call(&p, reqwest::Method::GET, v["id"].as_str().unwrap(), None)
            .await
            .0,
        404
    );
    let m = p.get_text(&p.url("/metrics")).await;
    assert!(
        ssw_test_support::metric(
            &m,
            "ssw_gateway_responses_total",
            &[("outcome", "continued")]
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_streamed_response_is_typed_events_ending_with_the_stored_response() {
    let p = TestPlatform::start(ssw()).await;
    let body = json!({"model": "heavy", "input": "tell me", "stream": true, "max_output_tokens": 3,
                      "service_tier": "priority"});
    let r = create(&p, "stream-1", None, &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ssw-tier"], "gold");
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("[DONE]"),
        "the Responses API ends without [DONE]"
    );
    let events = typed_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.completed"));
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "response.output_text.delta")
            .count(),
        3
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["status"], "incomplete", "max_output_tokens cut it");
    // The response objects say the tier that served them (the engine was told none).
    assert_eq!(events[0].1["response"]["service_tier"], "priority");
    assert_eq!(done["service_tier"], "priority");
    assert_eq!(done["usage"]["output_tokens"], 3);
    // Stored before the stream ended, with the tier that served it.
    let (s, got) = call(&p, reqwest::Method::GET, done["id"].as_str().unwrap(), None).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["usage"], done["usage"]);
    assert_eq!(got["service_tier"], "priority");
    // A forced tool call streams as a function_call item.
    let tools =
        json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]);
    let body = json!({"model": "heavy", "input": "weather?", "stream": true, "tools": tools, "tool_choice": "required"});
    let events = typed_events(
        &create(&p, "tool-1", None, &body)
            .await
            .text()
            .await
            .unwrap(),
    );
    let done = &events.last().unwrap().1["response"];
    assert_eq!(done["output"][0]["type"], "function_call", "{done}");
    assert_eq!(done["output"][0]["name"], "get_weather");
    assert!(
        events
            .iter()
            .any(|(n, _)| n == "response.function_call_arguments.done")
    );
}

#[tokio::test]
async fn stored_responses_belong_to_their_tenant() {
    let p = TestPlatform::start_with(ssw(), |s| {
        tenant(s, "village", "village-key", TenantConfig::default());
        tenant(s, "castle", "castle-key", TenantConfig::default());
    })
    .await;
    let body = json!({"model": "light", "input": "a secret"});
    let (s, _, v) = json_of(create(&p, "mine", Some("village-key"), &body).await).await;
    assert_eq!(s, 200, "{v}");
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        call(&p, reqwest::Method::GET, id, Some("village-key"))
            .await
            .0,
        200
    );
    // Another tenant: not found, whatever it tries; the response stays.
    assert_eq!(
        call(&p, reqwest::Method::GET, id, Some("castle-key"))
            .await
            .0,
        404
    );
    assert_eq!(
        call(&p, reqwest::Method::DELETE, id, Some("castle-key"))
            .await
            .0,
        404
    );
    let follow = json!({"model": "light", "input": "tell", "previous_response_id": id});
    assert_eq!(
        create(&p, "theirs", Some("castle-key"), &follow)
            .await
            .status(),
        400
    );
    assert_eq!(call(&p, reqwest::Method::GET, id, None).await.0, 401);
    assert_eq!(
        call(&p, reqwest::Method::GET, id, Some("village-key"))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn responses_requests_are_checked_at_the_edge() {
    let p = TestPlatform::start(ssw()).await;
    for (body, param) in [
        (json!({"model": "light"}), "input"),
        (json!({"model": "light", "input": 3}), "input"),
        (json!({"model": "light", "input": ["hi"]}), "input[0]"),
        (
            json!({"model": "light", "input": "x", "background": true}),
            "background",
        ),
        (
            json!({"model": "light", "input": "x", "conversation": "conv_1"}),
            "conversation",
        ),
        (
            json!({"model": "light", "input": "x", "messages": []}),
            "messages",
        ),
        (
            json!({"model": "light", "input": "x", "store": "yes"}),
            "store",
        ),
        (
            json!({"model": "light", "input": "x", "request_id": "resp_mine"}),
            "request_id",
        ),
        (
            json!({"model": "light", "input": "x", "service_tier": "turbo"}),
            "service_tier",
        ),
    ] {
        let (s, _, v) = json_of(create(&p, "bad", None, &body).await).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{body}: {v}"
        );
    }
    assert_eq!(
        call(&p, reqwest::Method::GET, "resp_nothing", None).await.0,
        404
    );
    assert_eq!(
        call(&p, reqwest::Method::GET, "../../etc", None).await.0,
        404
    );
    let (s, _, v) = json_of(
        create(
            &p,
            "no-model",
            None,
            &json!({"model": "nope", "input": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test]
async fn responses_share_tiers_queue_bounds_and_cancellation_with_chat() {
    let p = TestPlatform::start_with(ssw(), |s| {
        // Heavy answers slowly (cancellation); light has no worker (its queue fills).
        s.replicas = vec![stub_replica("heavy-0", "heavy", slow_stub(50, 100, 200))];
        s.config.pools.get_mut("light").unwrap().max_queue = 2;
    })
    .await;
    // A flex request waits in the flex lane and says so.
    let (s, h, v) = json_of(
        create(&p, "flex-1", None, &json!({"model": "heavy", "input": "x", "service_tier": "flex", "max_output_tokens": 2})).await,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            h["x-ssw-tier"].to_str().unwrap(),
            v["service_tier"].as_str()
        ),
        ("bronze", Some("flex"))
    );
    let body = json!({"model": "light", "input": "x"});
    let waiting = p.hold_in_queue("/v1/responses", &body, "light", 2).await;
    let (s, h, v) = json_of(create(&p, "third", None, &body).await).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("queue_full")),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    for w in waiting {
        w.abort();
    }
    // A streamed response whose client hangs up is aborted on the engine.
    let r = create(
        &p,
        "hang-up",
        None,
        &json!({"model": "heavy", "input": "x", "stream": true}),
    )
    .await;
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

#[tokio::test]
async fn a_client_that_stops_reading_at_response_completed_can_continue_at_once() {
    // As the Node SDK's `for await … break` does: read up to `response.completed`, hang up,
    // continue from it on the spot (on either gateway). The response is stored before the
    // event that carries it reaches the client.
    let p = TestPlatform::start(ssw()).await;
    let (second, url) = p.add_gateway("second").await;
    for i in 0..10 {
        let body = json!({"model": "light", "input": "hail", "stream": true});
        let r = create(&p, &format!("early-{i}"), None, &body).await;
        let mut chunks = r.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("event: response.completed") {
            let c = chunks.next().await.expect("more events").expect("bytes");
            seen.push_str(&String::from_utf8_lossy(&c));
        }
        drop(chunks);
        let done = typed_events(seen.split("event: response.completed").next().unwrap());
        let id = done[0].1["response"]["id"].as_str().unwrap().to_owned();
        let follow = json!({"model": "light", "input": "and?", "previous_response_id": id});
        let r = p
            .http
            .post(format!("{url}/v1/responses"))
            .header("content-type", "application/json")
            .body(follow.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "turn {i}: {}", r.text().await.unwrap());
    }
    drop(second);
}
