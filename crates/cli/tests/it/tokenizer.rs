//! `POST /tokenize` and `POST /detokenize` on the real stack: routed by `model`, answered by a
//! worker of the pool from its fast lane, never behind the pool's generation backlog.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ssw_config::StubConfig;
use ssw_test_support::{TestPlatform, chat_body, json_of, stub_replica};

use crate::failures::slow_stub;
use crate::ssw;

async fn post(
    p: &TestPlatform,
    path: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = p
        .http
        .post(p.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    json_of(r).await
}

#[tokio::test]
async fn tokenizer_requests_reach_the_pools_engine_and_skip_its_generation_backlog() {
    // One heavy engine with 2 sequence slots, 2 s per answer: 12 requests keep its worker
    // full and 10 waiting in the lanes for about 10 s.
    let p = TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica(
                "heavy-0",
                "heavy",
                StubConfig {
                    max_num_seqs: 2,
                    ..slow_stub(2_000, 1, 1)
                },
            ),
            stub_replica("light-0", "light", slow_stub(5, 1, 4)),
        ];
        s.config.worker.max_inflight = 2;
    })
    .await;
    let (s, h, v) = post(
        &p,
        "/tokenize",
        &json!({"model": "light", "prompt": "hail the captain"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            h["x-ssw-pool"].to_str().unwrap(),
            h["x-ssw-worker"].to_str().unwrap()
        ),
        ("light", "light-0")
    );
    assert_eq!(v["count"], 3);
    let tokens = v["tokens"].clone();
    assert_eq!(tokens.as_array().unwrap().len(), 3);
    let (s, _, v) = post(
        &p,
        "/detokenize",
        &json!({"model": "light", "tokens": tokens}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["prompt"].as_str().unwrap().split(' ').count(), 3);
    // Chat messages, with the token strings.
    let body = json!({"model": "light", "messages": [{"role": "user", "content": "hi"}], "return_token_strs": true});
    let (s, _, v) = post(&p, "/tokenize", &body).await;
    assert_eq!((s, v["count"].as_u64()), (200, Some(3)), "{v}");
    assert_eq!(v["token_strs"][1], "hi");

    // Saturate heavy: its worker holds 2, the lanes 10.
    let waiting: Vec<_> = (0..12)
        .map(|_| {
            let (http, url, body) = (
                p.http.clone(),
                p.url("/v1/chat/completions"),
                chat_body("heavy").to_string(),
            );
            tokio::spawn(async move {
                http.post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
            })
        })
        .collect();
    TestPlatform::eventually(Duration::from_secs(5), "heavy's backlog", || async {
        let v: Value =
            serde_json::from_str(&p.get_text(&p.url("/readyz")).await).unwrap_or_default();
        v["pools"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|x| x["pool"] == "heavy" && x["backlog"] == 10)
        })
    })
    .await;
    let t0 = Instant::now();
    let (s, h, v) = post(
        &p,
        "/tokenize",
        &json!({"model": "heavy", "prompt": "dock now"}),
    )
    .await;
    let took = t0.elapsed();
    assert_eq!((s, v["count"].as_u64()), (200, Some(2)), "{v}");
    assert_eq!(h["x-ssw-worker"], "heavy-0");
    assert!(
        took < Duration::from_millis(1_000),
        "tokenize waited {took:?} behind generation work"
    );
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn tokenizer_requests_are_checked_at_the_edge() {
    let p = TestPlatform::start(ssw()).await;
    for (path, body, status, param) in [
        ("/tokenize", json!({"model": "light"}), 400, Some("prompt")),
        (
            "/tokenize",
            json!({"model": "light", "prompt": "a", "messages": []}),
            400,
            Some("prompt"),
        ),
        (
            "/tokenize",
            json!({"model": "light", "prompt": "a", "max_tokens": 3}),
            400,
            Some("max_tokens"),
        ),
        (
            "/tokenize",
            json!({"model": "light", "prompt": "a", "chat_template": "{{x}}"}),
            400,
            Some("chat_template"),
        ),
        (
            "/detokenize",
            json!({"model": "light", "tokens": "abc"}),
            400,
            Some("tokens"),
        ),
        (
            "/detokenize",
            json!({"model": "light", "tokens": []}),
            400,
            Some("tokens"),
        ),
        (
            "/detokenize",
            json!({"model": "light", "tokens": [2_147_483_648_u64]}),
            400,
            Some("tokens"),
        ),
        (
            "/detokenize",
            json!({"model": "nope", "tokens": [1]}),
            404,
            Some("model"),
        ),
        (
            "/tokenize",
            json!({"model": "light", "prompt": "a", "return_token_strs": "yes"}),
            400,
            Some("return_token_strs"),
        ),
    ] {
        let (s, _, v) = post(&p, path, &body).await;
        assert_eq!(
            (s, v["error"]["param"].as_str()),
            (status, param),
            "{path} {body}: {v}"
        );
    }
}

#[tokio::test]
async fn a_tenants_limits_count_its_tokenizer_requests() {
    let p = TestPlatform::start_with(ssw(), |s| {
        crate::tiers::tenant(
            s,
            "tools",
            "tools-key",
            ssw_config::TenantConfig {
                requests_per_minute: Some(2),
                ..ssw_config::TenantConfig::default()
            },
        );
    })
    .await;
    let send = || async {
        let r = p
            .http
            .post(p.url("/tokenize"))
            .bearer_auth("tools-key")
            .header("content-type", "application/json")
            .body(json!({"model": "light", "prompt": "count me"}).to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let left = r
            .headers()
            .get("x-ratelimit-remaining-requests")
            .map(|v| v.to_str().unwrap().to_owned());
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        (status, left, v)
    };
    let (s, left, _) = send().await;
    assert_eq!((s, left.as_deref()), (200, Some("1")));
    let (s, left, _) = send().await;
    assert_eq!((s, left.as_deref()), (200, Some("0")));
    let (s, _, v) = send().await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded")),
        "{v}"
    );
}
