//! Metrics on the real stack: traffic through gateway and workers, scraped and parsed with a
//! Prometheus text parser, asserting the families, labels and values the traffic implies.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use serde_json::json;
use ssw_config::StubConfig;
use ssw_test_support::{TestPlatform, chat_body, stub_replica};

use crate::{ssw, ssw_ok};

async fn scrape(p: &TestPlatform, url: &str) -> Scrape {
    let text = p.get_text(&format!("{url}/metrics")).await;
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// Sum of a counter/gauge (or the observation count of a histogram) over series matching labels.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map_or(0.0, |b| b.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn gateway_and_worker_metrics_count_the_traffic_sent() {
    let p = TestPlatform::start(ssw()).await;
    for _ in 0..20 {
        assert_eq!(p.chat(&chat_body("heavy")).await.status(), 200);
    }
    for i in 0..10 {
        let mut b = chat_body("light");
        b["stream"] = json!(true);
        // vLLM's continuous usage puts running totals on every chunk: counted once, not summed.
        b["stream_options"] = json!({"include_usage": true, "continuous_usage_stats": i % 2 == 0});
        let text = p.chat(&b).await.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(p.chat(&chat_body("gpt-9")).await.status(), 404);

    let g = scrape(&p, &p.platform.gateway_url).await;
    let ok = |pool, stream| {
        value(
            &g,
            "ssw_gateway_requests_total",
            &[
                ("pool", pool),
                ("stream", stream),
                ("status", "200"),
                ("code", "ok"),
            ],
        )
    };
    assert_eq!(ok("heavy", "false"), 20.0);
    assert_eq!(ok("light", "true"), 10.0);
    assert_eq!(
        value(
            &g,
            "ssw_gateway_rejections_total",
            &[("reason", "model_not_found")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &g,
            "ssw_gateway_request_duration_seconds",
            &[("pool", "heavy"), ("stream", "false")]
        ),
        20.0
    );
    assert_eq!(
        value(
            &g,
            "ssw_gateway_time_to_first_token_seconds",
            &[("pool", "light"), ("stream", "true")]
        ),
        10.0
    );
    assert_eq!(
        value(&g, "ssw_gateway_queue_wait_seconds", &[("pool", "heavy")]),
        20.0
    );
    assert_eq!(
        value(&g, "ssw_gateway_queue_wait_seconds", &[("pool", "light")]),
        10.0
    );
    assert!(
        value(
            &g,
            "ssw_gateway_inter_token_latency_seconds",
            &[("pool", "light")]
        ) >= 10.0
    );
    // The stub answers 8 tokens; streams report usage because they asked for it.
    assert_eq!(
        value(
            &g,
            "ssw_gateway_completion_tokens_total",
            &[("pool", "heavy")]
        ),
        160.0
    );
    assert_eq!(
        value(
            &g,
            "ssw_gateway_completion_tokens_total",
            &[("pool", "light")]
        ),
        80.0
    );
    assert!(value(&g, "ssw_gateway_prompt_tokens_total", &[("pool", "heavy")]) > 0.0);
    assert_eq!(
        value(&g, "ssw_gateway_inflight_requests", &[("pool", "heavy")]),
        0.0
    );
    assert_eq!(value(&g, "ssw_build_info", &[("role", "gateway")]), 1.0);
    TestPlatform::eventually(
        Duration::from_secs(5),
        "queue sampler shows two live workers per pool",
        || async {
            let g = scrape(&p, &p.platform.gateway_url).await;
            value(&g, "ssw_pool_live_workers", &[("pool", "heavy")]) == 2.0
                && value(&g, "ssw_pool_serving_workers", &[("pool", "light")]) == 2.0
                && value(&g, "ssw_queue_backlog", &[("pool", "heavy")]) == 0.0
        },
    )
    .await;

    let mut heavy_ok = 0.0;
    for (id, url) in &p.platform.worker_metrics {
        let w = scrape(&p, url).await;
        let labels = [("worker", id.as_str())];
        if id.starts_with("heavy") {
            heavy_ok += value(
                &w,
                "ssw_worker_jobs_total",
                &[("worker", id), ("outcome", "ok")],
            );
        }
        // Fault outcomes are exported at 0 before the first one, so that an alert on their
        // increase() fires on the first (a series born at 1 shows none).
        let crashed = w.samples.iter().find(|x| {
            x.metric == "ssw_worker_jobs_total" && x.labels.get("outcome") == Some("engine_crashed")
        });
        assert!(
            crashed.is_some_and(|x| matches!(x.value, Value::Counter(v) if v == 0.0)),
            "{id}: {crashed:?}"
        );
        assert_eq!(value(&w, "ssw_worker_engine_up", &labels), 1.0, "{id}");
        assert_eq!(value(&w, "ssw_worker_inflight_jobs", &labels), 0.0, "{id}");
        assert_eq!(value(&w, "ssw_worker_free_slots", &labels), 64.0, "{id}");
        assert_eq!(
            value(&w, "ssw_worker_engine_requests_waiting", &labels),
            0.0,
            "{id}"
        );
        // No NVIDIA driver here: the worker runs and says so.
        assert_eq!(value(&w, "ssw_gpu_metrics_available", &labels), 0.0, "{id}");
        assert_eq!(
            value(&w, "ssw_build_info", &[("role", "worker")]),
            1.0,
            "{id}"
        );
    }
    assert_eq!(
        heavy_ok, 20.0,
        "every heavy job counted once, on the worker that ran it"
    );
}

#[tokio::test]
async fn queue_depth_rises_during_a_held_back_burst_and_falls_to_zero() {
    let busy = StubConfig {
        ttft: Duration::from_millis(400),
        tpot: Duration::from_millis(1),
        output_tokens: 4,
        max_num_seqs: 2,
        ..StubConfig::default()
    };
    let p = TestPlatform::start_with(ssw(), |s| {
        s.config.worker.max_inflight = 2;
        s.config.gateway.sample_interval = Duration::from_millis(100);
        s.replicas = vec![
            stub_replica("heavy-0", "heavy", busy.clone()),
            stub_replica("light-0", "light", busy),
        ];
    })
    .await;
    let burst: Vec<_> = (0..20).map(|_| p.spawn_chat(&chat_body("heavy"))).collect();
    TestPlatform::eventually(Duration::from_secs(5), "backlog seen rising", || async {
        let g = scrape(&p, &p.platform.gateway_url).await;
        value(&g, "ssw_queue_backlog", &[("pool", "heavy")]) >= 10.0
            && value(&g, "ssw_queue_oldest_age_seconds", &[("pool", "heavy")]) > 0.0
    })
    .await;
    for b in burst {
        assert_eq!(b.await.unwrap().unwrap().status(), 200);
    }
    TestPlatform::eventually(Duration::from_secs(5), "backlog back to zero", || async {
        let g = scrape(&p, &p.platform.gateway_url).await;
        value(&g, "ssw_queue_backlog", &[("pool", "heavy")]) == 0.0
            && value(&g, "ssw_queue_pending", &[("pool", "heavy")]) == 0.0
    })
    .await;
    let g = scrape(&p, &p.platform.gateway_url).await;
    assert_eq!(
        value(&g, "ssw_gateway_queue_wait_seconds", &[("pool", "heavy")]),
        20.0
    );
    let waited = g
        .samples
        .iter()
        .find(|s| {
            s.metric == "ssw_gateway_queue_wait_seconds" && s.labels.get("pool") == Some("heavy")
        })
        .and_then(|s| match &s.value {
            Value::Histogram(b) => b.iter().find(|b| b.less_than == 1.0).map(|b| b.count),
            _ => None,
        })
        .unwrap();
    assert!(
        waited < 20.0,
        "a held-back burst waits: some jobs queued over a second"
    );
}

#[tokio::test]
async fn ssw_status_lists_pools_and_live_workers() {
    let p = TestPlatform::start(ssw()).await;
    let status = || async { ssw_ok(["status", "--redis-url", &p.platform.redis_url]).await };
    // Readiness needs one serving worker per pool; wait until every engine has been probed.
    TestPlatform::eventually(
        Duration::from_secs(5),
        "all four workers serving in ssw status",
        || async {
            status()
                .await
                .lines()
                .filter(|l| l.starts_with("heavy-") || l.starts_with("light-"))
                .filter(|l| l.contains(" serving "))
                .count()
                == 4
        },
    )
    .await;
    let text = status().await;
    for line in ["heavy", "light"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(line) && l.split_whitespace().nth(4) == Some("2")),
            "{text}"
        );
    }
    for w in ["heavy-0", "heavy-1", "light-0", "light-1"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(w))
            .unwrap_or_else(|| panic!("{w} missing:\n{text}"));
        assert!(row.contains(" serving ") && row.contains("0/64"), "{row}");
    }
}

#[tokio::test]
async fn the_stub_counts_generated_tokens_as_it_generates_them_like_vllm() {
    // vLLM increments vllm:generation_tokens_total every step; a counter bumped only when an
    // answer completes would make rates over a window depend on which answers finished in it.
    let mut p = TestPlatform::start(ssw()).await;
    let slow = StubConfig {
        ttft: Duration::from_millis(50),
        tpot: Duration::from_millis(50),
        output_tokens: 40,
        ..StubConfig::default()
    };
    let url = p.platform.add_stub("slow", "heavy", slow).unwrap();
    let mut requests = Vec::new();
    for stream in [false, true] {
        let mut body = chat_body("Qwen/Qwen2.5-14B-Instruct-AWQ");
        body["stream"] = json!(stream);
        body["max_tokens"] = json!(40);
        let post = p
            .http
            .post(format!("{url}/v1/chat/completions"))
            .body(body.to_string())
            .send();
        requests.push(tokio::spawn(async move {
            post.await.unwrap().text().await.unwrap()
        }));
    }
    let counter = || p.stub_metric("slow", "vllm:generation_tokens_total");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let midway = counter().await;
    assert!((4.0..76.0).contains(&midway), "{midway} tokens midway");
    for r in requests {
        r.await.unwrap();
    }
    assert_eq!(counter().await, 80.0);
}
