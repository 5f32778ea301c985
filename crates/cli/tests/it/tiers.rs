//! Service tiers and tenants on the real stack: how a request picks its tier, what its answer
//! says, and the scheduling properties (priority first, minimum shares, tenants in turn,
//! reserved slots, flex shed first), each measured on real processes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ssw_config::{StubConfig, TenantConfig};
use ssw_protocol::tier::Tier;
use ssw_test_support::ssw_up::platform::PlatformSpec;
use ssw_test_support::{TestPlatform, chat_body, sse_events, stub_replica};

use crate::failures::slow_stub;
use crate::ssw;

/// One heavy replica of `slots` sequences (its worker takes as many), a light one, and
/// `tweak`.
async fn one_heavy_replica(
    stub: StubConfig,
    slots: u32,
    tweak: impl FnOnce(&mut PlatformSpec),
) -> TestPlatform {
    TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica(
                "heavy-0",
                "heavy",
                StubConfig {
                    max_num_seqs: slots,
                    ..stub
                },
            ),
            stub_replica("light-0", "light", slow_stub(5, 1, 4)),
        ];
        s.config.worker.max_inflight = slots;
        tweak(s);
    })
    .await
}

/// A tenant with its own key (written to a file under the temp dir).
pub(crate) fn tenant(s: &mut PlatformSpec, name: &str, key: &str, cfg: TenantConfig) {
    let path = std::env::temp_dir().join(format!("ssw-tiers-{}-{name}.keys", std::process::id()));
    std::fs::write(&path, format!("{key}\n")).unwrap();
    s.config.tenants.insert(
        name.to_owned(),
        TenantConfig {
            api_keys_file: Some(path),
            ..cfg
        },
    );
}

/// Sends a request on its own task; returns when it ended (relative to `t0`), its status and
/// body.
fn send(
    p: &TestPlatform,
    key: Option<&str>,
    body: Value,
    t0: Instant,
) -> tokio::task::JoinHandle<(Duration, u16, String)> {
    let mut req = p
        .http
        .post(p.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .timeout(Duration::from_secs(60))
        .body(body.to_string());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    tokio::spawn(async move {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (t0.elapsed(), status, text)
    })
}

fn tiered(model: &str, tier: Tier) -> Value {
    let mut b = chat_body(model);
    b["service_tier"] = json!(tier.as_str());
    b
}

/// Waits until `n` jobs wait in the heavy pool.
/// One priority request answered: the pool has priority traffic, so its workers hold their
/// reserve (they lend it to lower tiers after `RESERVE_HOLD` without any).
async fn priority_traffic(p: &TestPlatform) {
    let (_, status, body) = send(p, None, tiered("heavy", Tier::Priority), Instant::now())
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Waits until at least `n` heavy jobs wait for a worker.
pub(crate) async fn backlog_reaches(p: &TestPlatform, n: u64) {
    TestPlatform::eventually(Duration::from_secs(10), "the backlog", || async {
        let Ok(r) = p.http.get(p.url("/readyz")).send().await else {
            return false;
        };
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
        v["pools"].as_array().is_some_and(|pools| {
            pools
                .iter()
                .any(|pool| pool["pool"] == "heavy" && pool["backlog"].as_u64() >= Some(n))
        })
    })
    .await;
}

#[tokio::test]
async fn a_request_picks_its_tier_and_its_answer_says_which_tier_served_it() {
    let p = TestPlatform::start_with(ssw(), |s| {
        tenant(
            s,
            "modders",
            "modders-key",
            TenantConfig {
                max_tier: Tier::Default,
                default_tier: Tier::Flex,
                ..TenantConfig::default()
            },
        );
        s.config.gateway.api_keys_file = Some({
            let path =
                std::env::temp_dir().join(format!("ssw-tiers-{}-default.keys", std::process::id()));
            std::fs::write(&path, "studio-key\n").unwrap();
            path
        });
    })
    .await;
    let call = |key: &'static str, body: Value, header: Option<&'static str>| {
        let mut req = p
            .http
            .post(p.url("/v1/chat/completions"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(h) = header {
            req = req.header("x-ssw-tier", h);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let tier = r
                .headers()
                .get("x-ssw-tier")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, tier, r.text().await.unwrap())
        }
    };
    let served = |(status, header, body): (u16, Option<String>, String)| {
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        (
            v["service_tier"].as_str().unwrap().to_owned(),
            header.unwrap(),
        )
    };
    // The body's field, the header alias, and the tenant's default.
    let r = call("studio-key", tiered("heavy", Tier::Priority), None).await;
    assert_eq!(served(r), ("priority".into(), "gold".into()));
    let r = call("studio-key", chat_body("heavy"), Some("bronze")).await;
    assert_eq!(served(r), ("flex".into(), "bronze".into()));
    let r = call("studio-key", chat_body("heavy"), None).await;
    assert_eq!(served(r), ("default".into(), "silver".into()));
    let mut auto = chat_body("heavy");
    auto["service_tier"] = json!("auto");
    let r = call("modders-key", auto, None).await;
    assert_eq!(served(r), ("flex".into(), "bronze".into()));
    // Above the tenant's highest tier: served at its highest, and told so.
    let r = call("modders-key", tiered("heavy", Tier::Priority), None).await;
    assert_eq!(served(r), ("default".into(), "silver".into()));
    // Streams say it in every chunk.
    let mut s = tiered("light", Tier::Priority);
    s["stream"] = json!(true);
    let (status, header, body) = call("studio-key", s, None).await;
    assert_eq!((status, header.as_deref()), (200, Some("gold")));
    let (events, done) = sse_events(&body);
    assert!(done && !events.is_empty());
    assert!(
        events.iter().all(|e| e["service_tier"] == "priority"),
        "{body}"
    );
    // Unknown tiers are refused naming the field.
    let mut bad = chat_body("heavy");
    bad["service_tier"] = json!("scale");
    let (status, _, body) = call("studio-key", bad, None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &v["error"]["param"]),
        (400, &json!("service_tier"))
    );
    let (status, _, body) = call("studio-key", chat_body("heavy"), Some("platinum")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &v["error"]["param"]), (400, &json!("x-ssw-tier")));
    // The engine never sees the platform's field.
    for replica in ["heavy-0", "heavy-1"] {
        let v: Value = serde_json::from_str(&p.stub_get(replica, "/stub/requests").await).unwrap();
        for r in v.as_array().unwrap() {
            assert!(r["body"].get("service_tier").is_none(), "{r}");
        }
    }
}

#[tokio::test]
async fn a_priority_request_overtakes_the_queued_backlog_of_lower_tiers() {
    // Two slots of 200 ms jobs, no slot reserved: only the queue's order is at work.
    let p = one_heavy_replica(slow_stub(200, 1, 4), 2, |s| {
        s.config.pools.get_mut("heavy").unwrap().priority_reserve = 0.0;
    })
    .await;
    let t0 = Instant::now();
    let mut backlog = Vec::new();
    for i in 0..30 {
        let tier = if i % 2 == 0 {
            Tier::Flex
        } else {
            Tier::Default
        };
        backlog.push(send(&p, None, tiered("heavy", tier), t0));
    }
    backlog_reaches(&p, 20).await;
    let sent = t0.elapsed();
    let (ended, status, body) = send(&p, None, tiered("heavy", Tier::Priority), t0)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let waited = ended - sent;
    let mut last = Duration::ZERO;
    for h in backlog {
        let (ended, status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        last = last.max(ended);
    }
    eprintln!(
        "priority behind 20+ lower-tier jobs: answered in {waited:?}; the backlog drained at {last:?}"
    );
    // FIFO would have made it wait for the whole backlog (> 2 s); it waits for the slot to
    // free (≤ 200 ms) and at most two lower-tier picks that are due.
    assert!(waited < Duration::from_millis(900), "{waited:?}");
    assert!(
        last > Duration::from_secs(2),
        "the backlog was real: {last:?}"
    );
}

#[tokio::test]
async fn under_sustained_priority_load_default_and_flex_still_get_their_minimum_share() {
    // One slot: completion order is pick order.
    let p = one_heavy_replica(slow_stub(40, 1, 2), 1, |s| {
        s.config.pools.get_mut("heavy").unwrap().priority_reserve = 0.0;
    })
    .await;
    let t0 = Instant::now();
    let mut reqs = Vec::new();
    // Hold the slot, then queue 40 priority, 15 default and 15 flex.
    reqs.push((
        Tier::Default,
        send(&p, None, tiered("heavy", Tier::Default), t0),
    ));
    backlog_reaches(&p, 0).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    for (tier, n) in [(Tier::Flex, 15), (Tier::Default, 15), (Tier::Priority, 40)] {
        for _ in 0..n {
            reqs.push((tier, send(&p, None, tiered("heavy", tier), t0)));
        }
    }
    let mut done = Vec::new();
    for (tier, h) in reqs {
        let (ended, status, body) = h.await.unwrap();
        assert_eq!(status, 200, "{body}");
        done.push((ended, tier));
    }
    done.sort();
    // The first 40 picks after the backlog formed (skip the slot holder and the few picked
    // while requests were still arriving): 6:3:1 while all three tiers wait.
    let window: Vec<Tier> = done.iter().skip(6).take(30).map(|(_, t)| *t).collect();
    let count = |t| window.iter().filter(|w| **w == t).count();
    eprintln!(
        "30 picks under priority load: {} priority, {} default, {} flex",
        count(Tier::Priority),
        count(Tier::Default),
        count(Tier::Flex)
    );
    assert!(count(Tier::Default) >= 7, "{window:?}");
    assert!(count(Tier::Flex) >= 2, "{window:?}");
    assert!(count(Tier::Priority) >= 15, "{window:?}");
}

#[tokio::test]
async fn one_tenants_burst_does_not_hold_back_another_tenant_of_the_same_tier() {
    let p = one_heavy_replica(slow_stub(100, 1, 2), 2, |s| {
        tenant(s, "burst", "burst-key", TenantConfig::default());
        tenant(s, "steady", "steady-key", TenantConfig::default());
    })
    .await;
    let t0 = Instant::now();
    let burst: Vec<_> = (0..40)
        .map(|_| send(&p, Some("burst-key"), chat_body("heavy"), t0))
        .collect();
    backlog_reaches(&p, 30).await;
    let sent = t0.elapsed();
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .bearer_auth("steady-key")
        .body(chat_body("heavy").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let queue_ms: u64 = r.headers()["x-ssw-queue-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    r.text().await.unwrap();
    let waited = t0.elapsed() - sent;
    assert!(
        queue_ms < 400,
        "it waited for about one job, not the burst: {queue_ms} ms"
    );
    let mut last = Duration::ZERO;
    for h in burst {
        let (ended, status, _) = h.await.unwrap();
        assert_eq!(status, 200);
        last = last.max(ended);
    }
    eprintln!(
        "a steady tenant behind a 40-request burst: answered in {waited:?}; the burst drained at {last:?}"
    );
    // About one job per free slot: the next free slot goes to it (≤ 100 ms + its own 100 ms).
    assert!(waited < Duration::from_millis(600), "{waited:?}");
    assert!(last > Duration::from_secs(1), "{last:?}");
}

#[tokio::test]
async fn a_worker_keeps_slots_for_priority_work_a_flex_flood_cannot_take() {
    // Ten slots, 10 % reserved: one slot stays free for priority work while there is some.
    let p = one_heavy_replica(slow_stub(2000, 1, 2), 10, |_| {}).await;
    priority_traffic(&p).await;
    let t0 = Instant::now();
    let flood: Vec<_> = (0..30)
        .map(|_| send(&p, None, tiered("heavy", Tier::Flex), t0))
        .collect();
    backlog_reaches(&p, 20).await;
    TestPlatform::eventually(Duration::from_secs(5), "nine flex running", || async {
        p.stub_metric("heavy-0", "vllm:num_requests_running").await == 9.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.stub_metric("heavy-0", "vllm:num_requests_running").await,
        9.0,
        "the reserved slot stays free"
    );
    let sent = t0.elapsed();
    let (ended, status, body) = send(&p, None, tiered("heavy", Tier::Priority), t0)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let waited = ended - sent;
    eprintln!("priority next to a flex flood filling 9 of 10 slots: answered in {waited:?}");
    // Its own 2 s, not the flood's 2 s ahead of it.
    assert!(waited < Duration::from_millis(2900), "{waited:?}");
    for h in flood {
        assert_eq!(h.await.unwrap().1, 200);
    }
}

#[tokio::test]
async fn without_priority_traffic_the_reserve_is_lent_to_lower_tiers() {
    // The same ten slots, 10 % reserved, but no priority request yet: a flex flood takes all
    // ten (a reserve held for nobody idles a tenth of the engine while work is queued).
    let p = one_heavy_replica(slow_stub(1000, 1, 2), 10, |_| {}).await;
    let t0 = Instant::now();
    let flood: Vec<_> = (0..30)
        .map(|_| send(&p, None, tiered("heavy", Tier::Flex), t0))
        .collect();
    TestPlatform::eventually(Duration::from_secs(5), "ten flex running", || async {
        p.stub_metric("heavy-0", "vllm:num_requests_running").await == 10.0
    })
    .await;
    for h in flood {
        assert_eq!(h.await.unwrap().1, 200);
    }
    // A priority job takes the next free slot; from then on the reserve is held.
    priority_traffic(&p).await;
    let flood: Vec<_> = (0..30)
        .map(|_| send(&p, None, tiered("heavy", Tier::Flex), t0))
        .collect();
    backlog_reaches(&p, 15).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        p.stub_metric("heavy-0", "vllm:num_requests_running").await,
        9.0
    );
    for h in flood {
        assert_eq!(h.await.unwrap().1, 200);
    }
}

#[tokio::test]
async fn flex_is_refused_first_when_the_pool_is_overloaded() {
    let p = TestPlatform::start_with(ssw(), |s| {
        // Heavy has no replica: its jobs stay queued.
        s.replicas.retain(|r| r.pool == "light");
        s.config.pools.get_mut("heavy").unwrap().max_queue = 6;
    })
    .await;
    let t0 = Instant::now();
    let mut held = Vec::new();
    // Flex's own bound is half the pool's: 3.
    for _ in 0..3 {
        held.push(send(&p, None, tiered("heavy", Tier::Flex), t0));
    }
    backlog_reaches(&p, 3).await;
    let (_, status, body) = send(&p, None, tiered("heavy", Tier::Flex), t0)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, &v["error"]["code"]), (429, &json!("queue_full")));
    // Default and priority still get in, up to the pool's bound.
    for tier in [Tier::Default, Tier::Default, Tier::Priority] {
        held.push(send(&p, None, tiered("heavy", tier), t0));
    }
    backlog_reaches(&p, 6).await;
    let (_, status, _) = send(&p, None, tiered("heavy", Tier::Priority), t0)
        .await
        .unwrap();
    assert_eq!(status, 429, "the pool's own bound holds for every tier");
    for h in held {
        h.abort();
    }
}

/// A limited tenant's request: (status, x-ratelimit-* headers, body).
async fn metered(
    p: &TestPlatform,
    base: &str,
    key: &str,
    body: &Value,
) -> (u16, std::collections::BTreeMap<String, String>, Value) {
    let r = p
        .http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k.starts_with("x-ratelimit")
                || k.starts_with("x-ssw-quota")
                || k == "retry-after"
                || k == "x-should-retry"
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    let text = r.text().await.unwrap();
    let v = if text.starts_with('{') {
        serde_json::from_str(&text).unwrap()
    } else {
        Value::String(text)
    };
    (status, headers, v)
}

#[tokio::test]
async fn requests_per_minute_hold_over_every_gateway_with_openais_headers() {
    let p = TestPlatform::start_with(ssw(), |s| {
        tenant(
            s,
            "metered",
            "metered-key",
            TenantConfig {
                requests_per_minute: Some(4),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    let (second, url) = p.add_gateway("second").await;
    let first = p.platform.gateway_url.clone();
    let body = chat_body("light");
    let mut left = Vec::new();
    for base in [&first, &url, &first, &url] {
        let (status, h, v) = metered(&p, base, "metered-key", &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(h["x-ratelimit-limit-requests"], "4");
        left.push(h["x-ratelimit-remaining-requests"].clone());
        assert!(
            !h.contains_key("x-ratelimit-limit-tokens"),
            "no token limit: {h:?}"
        );
    }
    assert_eq!(left, ["3", "2", "1", "0"]);
    // The fifth, on either gateway: refused, told when to retry (a request refills every 15 s).
    let (status, h, v) = metered(&p, &url, "metered-key", &body).await;
    assert_eq!(
        (status, &v["error"]["code"]),
        (429, &json!("rate_limit_exceeded")),
        "{v}"
    );
    let retry: u64 = h["retry-after"].parse().unwrap();
    assert!((1..=15).contains(&retry), "{h:?}");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    // Another tenant is not affected.
    assert_eq!(p.chat(&body).await.status(), 401, "keys are required now");
    let m = p.get_text(&format!("{url}/metrics")).await;
    assert_eq!(
        ssw_test_support::metric(
            &m,
            "ssw_gateway_rate_limited_total",
            &[("tenant", "metered"), ("limit", "requests")]
        ),
        Some(1.0),
        "{m}"
    );
    drop(second);
}

#[tokio::test]
async fn a_spent_daily_quota_refuses_until_midnight_utc_as_insufficient_quota() {
    let p = TestPlatform::start_with(ssw(), |s| {
        tenant(
            s,
            "daily",
            "daily-key",
            TenantConfig {
                requests_per_minute: Some(1000),
                requests_per_day: Some(3),
                tokens_per_day: Some(100_000),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    let (second, url) = p.add_gateway("second").await;
    let body = chat_body("light");
    let mut left = Vec::new();
    for base in [&p.platform.gateway_url, &url, &p.platform.gateway_url] {
        let (status, h, v) = metered(&p, base, "daily-key", &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(h["x-ssw-quota-limit-requests"], "3");
        assert_eq!(h["x-ssw-quota-limit-tokens"], "100000");
        assert_eq!(h["x-ratelimit-limit-requests"], "1000", "the minute's too");
        left.push(h["x-ssw-quota-remaining-requests"].clone());
    }
    assert_eq!(left, ["2", "1", "0"]);
    let (status, h, v) = metered(&p, &url, "daily-key", &body).await;
    assert_eq!(
        (status, &v["error"]["code"], &v["error"]["type"]),
        (
            429,
            &json!("insufficient_quota"),
            &json!("insufficient_quota")
        ),
        "{v}"
    );
    assert_eq!(h["x-should-retry"], "false", "SDKs must not retry it");
    let to_midnight = 86_400 - (ssw_queue::now_ms() / 1000) % 86_400;
    let retry: u64 = h["retry-after"].parse().unwrap();
    assert!(retry.abs_diff(to_midnight) <= 2, "{retry} vs {to_midnight}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("quota of 3 requests per day"),
        "{v}"
    );
    let m = p.get_text(&format!("{url}/metrics")).await;
    assert_eq!(
        ssw_test_support::metric(
            &m,
            "ssw_gateway_rate_limited_total",
            &[("tenant", "daily"), ("limit", "requests_day")]
        ),
        Some(1.0),
        "{m}"
    );
    drop(second);
}

#[tokio::test]
async fn a_busy_tenant_asks_redis_once_per_tick_and_its_limit_still_holds_over_two_gateways() {
    // 600 requests a minute: each gateway may hold up to 30 ahead (5 %).
    let p = TestPlatform::start_with(ssw(), |s| {
        tenant(
            s,
            "busy",
            "busy-key",
            TenantConfig {
                requests_per_minute: Some(600),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    let (second, url) = p.add_gateway("second").await;
    let gateways = [p.platform.gateway_url.clone(), url.clone()];
    let t0 = Instant::now();
    // 16 clients per gateway, 50 requests each: 1 600 offered, far over the minute's 600.
    let mut clients = Vec::new();
    for (g, base) in gateways.iter().enumerate() {
        for c in 0..16 {
            let (http, base) = (p.http.clone(), base.clone());
            clients.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..50 {
                    let mut body = chat_body("light");
                    body["messages"][0]["content"] = json!(format!("g{g} c{c} r{i}"));
                    let r = http
                        .post(format!("{base}/v1/chat/completions"))
                        .bearer_auth("busy-key")
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                    let _ = r.bytes().await;
                }
                statuses
            }));
        }
    }
    let mut ok = 0u64;
    let mut refused = 0u64;
    for c in clients {
        for status in c.await.unwrap() {
            match status {
                200 => ok += 1,
                429 => refused += 1,
                other => panic!("status {other}"),
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // The bucket starts full (600) and refills 10 a second; what gateways held ahead and did
    // not use went back, so at most a tick's worth per gateway (2 × 30) was missed.
    let most = 600 + (secs * 10.0).ceil() as u64;
    eprintln!("{ok} admitted, {refused} refused in {secs:.2} s (at most {most})");
    assert_eq!(ok + refused, 1600);
    assert!(ok <= most, "{ok} admitted, over the limit's {most}");
    assert!(
        ok + 60 >= 600,
        "{ok} admitted: the allowances held back too much"
    );
    let mut calls = 0.0;
    for base in &gateways {
        let m = p.get_text(&format!("{base}/metrics")).await;
        for reason in ["need", "tick"] {
            calls += ssw_test_support::metric(
                &m,
                "ssw_gateway_rate_limit_calls_total",
                &[("tenant", "busy"), ("reason", reason)],
            )
            .unwrap_or(0.0);
        }
    }
    eprintln!("{calls} calls to redis for {} requests", ok + refused);
    assert!(
        calls < (ok + refused) as f64 / 3.0,
        "{calls} calls for {} requests: allowances are not held ahead",
        ok + refused
    );
    drop(second);
}

#[tokio::test]
async fn tokens_per_minute_charge_an_estimate_and_settle_the_real_usage() {
    let p = TestPlatform::start_with(ssw(), |s| {
        tenant(
            s,
            "tokens",
            "tokens-key",
            TenantConfig {
                tokens_per_minute: Some(1000),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    // Each request asks for up to 600 tokens (charged ~625) and uses about 10: settled at its
    // end, so one after another they all fit a 1000-token minute.
    let mut body = chat_body("light");
    body["max_tokens"] = json!(600);
    for i in 0..5 {
        let mut b = body.clone();
        b["stream"] = json!(i % 2 == 1);
        let (status, h, v) = metered(&p, &p.platform.gateway_url, "tokens-key", &b).await;
        assert_eq!(status, 200, "request {i}: {v}");
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        // USAGE runs as the answer ends; give it a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two at once on a slow engine: the second finds the first's estimate still charged.
    let p2 = &p;
    let slow = |i: usize| {
        let mut b = body.clone();
        b["model"] = json!("heavy");
        b["messages"][0]["content"] = json!(format!("wait {i}"));
        async move { metered(p2, &p2.platform.gateway_url, "tokens-key", &b).await }
    };
    let (a, b) = tokio::join!(slow(0), slow(1));
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 429], "{a:?} {b:?}");
    let refused = if a.0 == 429 { &a } else { &b };
    assert_eq!(refused.2["error"]["code"], "rate_limit_exceeded");
    assert!(
        refused.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1000 tokens per minute"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn concurrent_requests_of_a_tenant_are_bounded_and_freed_when_they_end() {
    let p = one_heavy_replica(slow_stub(600, 1, 2), 8, |s| {
        tenant(
            s,
            "narrow",
            "narrow-key",
            TenantConfig {
                max_concurrent: Some(2),
                ..TenantConfig::default()
            },
        );
    })
    .await;
    let body = chat_body("heavy");
    let (a, b, c) = tokio::join!(
        metered(&p, &p.platform.gateway_url, "narrow-key", &body),
        metered(&p, &p.platform.gateway_url, "narrow-key", &body),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            metered(&p, &p.platform.gateway_url, "narrow-key", &body).await
        },
    );
    assert_eq!((a.0, b.0), (200, 200));
    assert_eq!(c.0, 429, "{c:?}");
    assert!(
        c.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 concurrent"),
        "{c:?}"
    );
    // Both ended: their leases are gone.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, v) = metered(&p, &p.platform.gateway_url, "narrow-key", &body).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn engines_that_schedule_by_priority_get_vllms_priority_from_the_tier() {
    let p = TestPlatform::start_with(ssw(), |s| {
        s.config.pools.get_mut("heavy").unwrap().scheduling_policy =
            ssw_config::pool::SchedulingPolicy::Priority;
    })
    .await;
    for (i, tier) in Tier::ALL.into_iter().enumerate() {
        let r = p
            .chat_with_id(&format!("heavy-{tier}"), &tiered("heavy", tier))
            .await;
        assert_eq!(r.status(), 200);
        let r = p
            .chat_with_id(&format!("light-{tier}"), &tiered("light", tier))
            .await;
        assert_eq!(r.status(), 200, "an fcfs engine gets no priority field");
        let mut seen = None;
        for replica in ["heavy-0", "heavy-1"] {
            seen = seen.or(p.stub_request(replica, &format!("heavy-{tier}")).await);
        }
        assert_eq!(seen.unwrap()["priority"], json!(i), "{tier}");
        let mut light = None;
        for replica in ["light-0", "light-1"] {
            light = light.or(p.stub_request(replica, &format!("light-{tier}")).await);
        }
        assert!(light.unwrap().get("priority").is_none());
    }
    // A client cannot set it.
    let mut b = chat_body("heavy");
    b["priority"] = json!(-5);
    let r = p.chat(&b).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_worker_whose_free_slots_were_all_reserved_takes_work_as_soon_as_one_more_frees() {
    // Ten slots, one reserved; twenty clients of short default-tier jobs keep the worker at the
    // reserve's edge. A slot coming free while it waits for priority work must wake it at once.
    let p = one_heavy_replica(slow_stub(5, 1, 2), 10, |_| {}).await;
    priority_traffic(&p).await;
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let round: Vec<_> = (0..20)
            .map(|_| send(&p, None, chat_body("heavy"), t0))
            .collect();
        let started = t0.elapsed();
        for h in round {
            let (ended, status, body) = h.await.unwrap();
            assert_eq!(status, 200, "{body}");
            slowest = slowest.max(ended - started);
        }
    }
    eprintln!("slowest of 200 short jobs at the reserve's edge: {slowest:?}");
    // Without the wake-up a worker sat out its 1 s wait with a free slot.
    assert!(slowest < Duration::from_millis(800), "{slowest:?}");
}

#[tokio::test]
async fn a_priority_job_reaches_an_engine_that_has_requests_waiting_when_it_schedules_by_priority()
{
    // Two sequences of 4 s answers; the worker takes 4 jobs, one slot reserved: three default
    // jobs fill the engine and leave one waiting in it.
    let engine = StubConfig {
        batching: true,
        step_base: Duration::from_millis(100),
        step_per_seq: Duration::ZERO,
        prefill_per_token: Duration::ZERO,
        kv_tokens: 1_000_000,
        output_tokens: 40,
        scheduling_policy: ssw_config::pool::SchedulingPolicy::Priority,
        ..StubConfig::default()
    };
    let p = one_heavy_replica(engine, 2, |s| {
        s.config.worker.max_inflight = 4;
        let heavy = s.config.pools.get_mut("heavy").unwrap();
        heavy.priority_reserve = 0.25;
        heavy.scheduling_policy = ssw_config::pool::SchedulingPolicy::Priority;
    })
    .await;
    priority_traffic(&p).await;
    let t0 = Instant::now();
    let backlog: Vec<_> = (0..3)
        .map(|_| send(&p, None, tiered("heavy", Tier::Default), t0))
        .collect();
    TestPlatform::eventually(
        Duration::from_secs(5),
        "a request waiting in the engine",
        || async { p.stub_metric("heavy-0", "vllm:num_requests_waiting").await >= 1.0 },
    )
    .await;
    // Past the worker's 1 s wait in Redis for priority work: it now goes by the engine's state.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let sent = t0.elapsed();
    let (ended, status, body) = send(&p, None, tiered("heavy", Tier::Priority), t0)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let took = ended - sent;
    eprintln!("priority answered in {took:?} beside an engine with a request waiting");
    // Its own 40 steps take 4 s. Held in Redis until the engine's waiting request got a
    // sequence (the first answers end 4 s after they started), it would take about 6.5 s.
    assert!(took < Duration::from_millis(5_300), "{took:?}");
    for h in backlog {
        assert_eq!(h.await.unwrap().1, 200);
    }
}
