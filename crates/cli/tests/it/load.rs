//! Load: a burst over both pools is absorbed by the queue and balanced by pull.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use ssw_config::StubConfig;
use ssw_test_support::{TestPlatform, chat_body, sse_events};

use crate::{ssw, ssw_ok};

/// 1 000 concurrent requests (half streaming) over both pools all succeed, and each pool's load
/// is split between its two workers with neither below 30 % (through a one-thread gateway).
#[tokio::test]
async fn a_thousand_concurrent_requests_all_succeed_and_balance() {
    let p = TestPlatform::start_with(ssw(), |s| {
        let stub = StubConfig {
            ttft: Duration::from_millis(20),
            tpot: Duration::from_millis(2),
            output_tokens: 8,
            ..StubConfig::default()
        };
        for r in &mut s.replicas {
            r.engine = ssw_up::platform::EngineSpec::Stub(Box::new(stub.clone()));
        }
        // A thousand requests parsed at once by a debug-build gateway sharing two cores with
        // this client, eight other processes and the other tests: an enqueue can wait over a
        // second for the gateway's own runtime. 1 s is the production deadline for a Redis
        // command; this test is about nothing being lost or misrouted, not that deadline.
        s.config.redis.op_timeout = Duration::from_secs(10);
        s.config.gateway.reply_ttl = Duration::from_secs(30);
        // The other tests run the default gateway (a thread per core); this one a gateway on one
        // thread, which must lose nothing either.
        s.config.gateway.threads = 1;
    })
    .await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1000)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let http = http.clone();
            let url = p.url("/v1/chat/completions");
            let pool = if i % 2 == 0 { "heavy" } else { "light" };
            let mut body = chat_body(pool);
            body["stream"] = json!(i % 4 < 2);
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .body(body.to_string())
                    .send()
                    .await
                    .expect("response");
                let status = r.status().as_u16();
                let worker = r
                    .headers()
                    .get("x-ssw-worker")
                    .map(|w| w.to_str().unwrap().to_owned());
                let text = r.text().await.expect("body");
                let worker = worker.unwrap_or_else(|| panic!("{status} without a worker: {text}"));
                (pool, status, worker, text, body["stream"] == true)
            })
        })
        .collect();
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        let (pool, status, worker, text, stream) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(worker.starts_with(pool), "{pool} served by {worker}");
        if stream {
            let (events, done) = sse_events(&text);
            assert!(
                done && events.iter().all(|e| e.get("error").is_none()),
                "{text}"
            );
        } else {
            assert!(text.contains("\"finish_reason\":\"stop\""), "{text}");
        }
        *by_worker.entry(worker).or_default() += 1;
    }
    for pool in ["heavy", "light"] {
        let total: usize = by_worker
            .iter()
            .filter(|(w, _)| w.starts_with(pool))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, 500);
        for gpu in 0..2 {
            let n = by_worker
                .get(&format!("{pool}-{gpu}"))
                .copied()
                .unwrap_or(0);
            assert!(
                n * 100 >= total * 30,
                "{pool}-{gpu} served {n} of {total}: {by_worker:?}"
            );
        }
    }
}

/// `ssw bench` against the gateway (burst, streaming, mixed pools) and straight against a stub
/// engine: every request is counted once, none fails, and the reports are written.
#[tokio::test]
async fn ssw_bench_measures_the_gateway_and_an_engine_alike() {
    let p = TestPlatform::start(ssw()).await;
    let dir = p.platform.dir().to_owned();
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let json_arg = json.to_string_lossy();
    let svg_arg = svg.to_string_lossy();
    ssw_ok([
        "bench",
        "--url",
        &p.url("/v1"),
        "--mode",
        "burst",
        "-n",
        "200",
        "--stream",
        "--mix",
        "light=0.7,heavy=0.3",
        "-q",
        "--json",
        &json_arg,
        "--plot",
        &svg_arg,
    ])
    .await;
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["requests"], 200);
    assert_eq!(r["ok"], 200, "{}", r["errors"]);
    assert!(r["output_tokens_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(r["samples"].as_array().unwrap().len(), 200);
    let served: u64 = r["by_worker"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(served, 200);
    assert!(
        r["queue"]["wait_p50_s"].is_number(),
        "queue wait scraped from the gateway: {}",
        r["queue"]
    );
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(plot.matches("<circle").count(), 200);

    // Straight at an engine: the served model name, no gateway metrics.
    let stub = p.platform.stub_url("light-0").unwrap().to_owned();
    let json_arg = json.to_string_lossy();
    ssw_ok([
        "bench",
        "--url",
        &format!("{stub}/v1"),
        "-n",
        "50",
        "-c",
        "8",
        "--mix",
        "Qwen/Qwen3-8B-AWQ",
        "--metrics-url",
        "none",
        "-q",
        "--json",
        &json_arg,
    ])
    .await;
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        (r["requests"].as_u64(), r["ok"].as_u64()),
        (Some(50), Some(50))
    );
    assert!(r["queue"].is_null());
}
