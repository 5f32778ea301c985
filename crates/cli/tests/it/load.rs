//! Load: a burst over both pools is absorbed by the queue and balanced by pull.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use ssw_config::StubConfig;
use ssw_test_support::{TestPlatform, chat_body, sse_events};

use crate::ssw;

/// 1 000 concurrent requests (half streaming) over both pools all succeed, and each pool's load
/// is split between its two workers with neither below 30 %.
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
            r.engine = ssw_up::platform::EngineSpec::Stub(stub.clone());
        }
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
                let worker = r.headers()["x-ssw-worker"].to_str().unwrap().to_owned();
                let text = r.text().await.expect("body");
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
