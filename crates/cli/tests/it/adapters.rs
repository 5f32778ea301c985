//! LoRA adapters on the real stack: requests routed by an adapter's name, the engine told that
//! name, `/v1/models` listing adapters under their pool, and adapter-aware pulling (a worker
//! takes the jobs of the adapters its engine holds first, within a bound).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ssw_config::route::VariantConfig;
use ssw_config::{AdapterConfig, RouteConfig, StubConfig};
use ssw_test_support::ssw_up::platform::{EngineSpec, PlatformSpec};
use ssw_test_support::{TestPlatform, chat_body, metric, stub_replica};

use crate::failures::slow_stub;
use crate::ssw;

const ADAPTERS: [&str; 4] = [
    "vampire-personality",
    "vampire-dialogue",
    "zombie-personality",
    "zombie-dialogue",
];

/// Heavy with the four adapters on one replica of `max_loras` slots, each answer `ms` long,
/// adapters waiting at most `wait` for their turn; light as usual.
fn lora_pool(s: &mut PlatformSpec, max_loras: u32, ms: u64, wait: Duration, slots: u32) {
    let modules = ADAPTERS
        .iter()
        .map(|a| (a.to_string(), format!("/adapters/{a}")))
        .collect();
    let heavy = s.config.pools.get_mut("heavy").unwrap();
    for a in ADAPTERS {
        heavy.adapters.insert(
            a.into(),
            AdapterConfig {
                source: format!("/adapters/{a}"),
                rank: 16,
            },
        );
    }
    heavy.max_loras = max_loras;
    heavy.adapter_wait = wait;
    s.replicas = vec![
        stub_replica(
            "heavy-0",
            "heavy",
            StubConfig {
                lora_modules: modules,
                max_loras,
                lora_swap_time: Duration::from_millis(20),
                max_num_seqs: slots,
                ..slow_stub(ms, 1, 1)
            },
        ),
        stub_replica("light-0", "light", slow_stub(5, 1, 4)),
    ];
    s.config.worker.max_inflight = slots;
}

fn body(model: &str, i: usize) -> Value {
    let mut b = chat_body(model);
    b["messages"][0]["content"] = json!(format!("line {i}"));
    b
}

#[tokio::test]
async fn an_adapter_is_a_model_of_its_pool_and_the_engine_is_told_its_name() {
    let p = TestPlatform::start_with(ssw(), |s| {
        lora_pool(s, 2, 5, Duration::from_secs(2), 4);
        // An archetype's new adapter tried on half of its NPCs.
        let variant = |adapter: &str, name: Option<&str>| VariantConfig {
            pool: "heavy".into(),
            adapter: Some(adapter.into()),
            weight: 1,
            name: name.map(str::to_owned),
        };
        s.config.routes.insert(
            "vampire-ab".into(),
            RouteConfig {
                variants: vec![
                    variant(ADAPTERS[0], None),
                    variant(ADAPTERS[1], Some("candidate")),
                ],
                sticky: ssw_config::route::default_sticky(),
                salt: None,
                shadow: None,
                guard: None,
            },
        );
    })
    .await;
    for model in ["vampire-personality", "heavy:zombie-dialogue"] {
        let r = p
            .post_with_id(
                "/v1/chat/completions",
                &format!("ad-{model}"),
                &body(model, 0),
            )
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ssw-pool"], "heavy");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let adapter = model.trim_start_matches("heavy:");
        assert_eq!(
            v["model"], adapter,
            "the engine answered as the adapter: {v}"
        );
        let sent = p
            .stub_request("heavy-0", &format!("ad-{model}"))
            .await
            .unwrap();
        assert_eq!(sent["model"], adapter);
    }
    let r = p.chat(&body("werewolf-personality", 0)).await;
    assert_eq!(r.status(), 404);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    let models: Value = serde_json::from_str(&p.get_text(&p.url("/v1/models")).await).unwrap();
    let cards = models["data"].as_array().unwrap();
    for a in ADAPTERS {
        let card = cards
            .iter()
            .find(|c| c["id"] == a)
            .unwrap_or_else(|| panic!("{a}: {models}"));
        assert_eq!(card["parent"], "heavy");
    }
    assert!(
        cards
            .iter()
            .any(|c| c["id"] == "heavy" && c.get("parent").is_none())
    );
    let route = cards.iter().find(|c| c["id"] == "vampire-ab").unwrap();
    assert_eq!(route["variants"][1]["adapter"], ADAPTERS[1], "{route}");
    // A route's variant that is an adapter: its users' requests reach the engine as it.
    let mut served = std::collections::BTreeMap::new();
    for i in 0..16 {
        let mut b = body("vampire-ab", i);
        b["user"] = json!(format!("npc-{i}"));
        let r = p.chat(&b).await;
        assert_eq!(r.status(), 200);
        let variant = r.headers()["x-ssw-variant"].to_str().unwrap().to_owned();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let want = if variant == "candidate" {
            ADAPTERS[1]
        } else {
            ADAPTERS[0]
        };
        assert_eq!(v["model"], want, "variant {variant}: {v}");
        *served.entry(variant).or_insert(0) += 1;
    }
    assert_eq!(served.len(), 2, "both variants served: {served:?}");
    // Metrics by adapter: requests however the adapter was named, tokens, queue wait; an
    // unknown name is no adapter's.
    let m = p.get_text(&p.url("/metrics")).await;
    let of = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels).unwrap_or(0.0);
    let requests = "ssw_gateway_adapter_requests_total";
    assert_eq!(of(requests, &[("code", "ok")]), 18.0, "{m}");
    assert_eq!(
        of(
            requests,
            &[("adapter", "zombie-dialogue"), ("pool", "heavy")]
        ),
        1.0
    );
    assert_eq!(
        of(requests, &[("adapter", ADAPTERS[0])]) + of(requests, &[("adapter", ADAPTERS[1])]),
        17.0
    );
    assert_eq!(
        metric(&m, requests, &[("adapter", "werewolf-personality")]),
        None
    );
    let tokens = |kind| {
        of(
            "ssw_gateway_adapter_tokens_total",
            &[("adapter", "zombie-dialogue"), ("kind", kind)],
        )
    };
    assert!(tokens("prompt") > 0.0 && tokens("completion") > 0.0, "{m}");
    let waits = "ssw_gateway_adapter_queue_wait_seconds_count";
    assert_eq!(of(waits, &[("adapter", "zombie-dialogue")]), 1.0);
    assert_eq!(of(waits, &[]), 18.0);
}

/// Sends 2 × `per` requests alternating two adapters while the engine is busy, and returns
/// the swap-ins and how long the last took.
async fn alternate(p: &TestPlatform, per: usize) -> (f64, Duration) {
    let t0 = Instant::now();
    let sends: Vec<_> = (0..2 * per)
        .map(|i| {
            let (http, url) = (p.http.clone(), p.url("/v1/chat/completions"));
            let b = body(ADAPTERS[i % 2], i).to_string();
            tokio::spawn(async move {
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), t0.elapsed())
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for s in sends {
        let (status, at) = s.await.unwrap();
        assert_eq!(status, 200);
        last = last.max(at);
    }
    (
        p.stub_metric("heavy-0", "ssw_stub_lora_swap_ins_total")
            .await,
        last,
    )
}

#[tokio::test]
async fn a_worker_takes_the_jobs_of_the_adapter_its_engine_holds_first() {
    // One slot: every change of adapter is a swap. 40 requests alternating two adapters.
    let aware =
        TestPlatform::start_with(ssw(), |s| lora_pool(s, 1, 50, Duration::from_secs(30), 2)).await;
    let (aware_swaps, aware_took) = alternate(&aware, 20).await;
    drop(aware);
    // The same with a 1 ms bound: every job is past it at once, oldest first (FIFO).
    let fifo =
        TestPlatform::start_with(ssw(), |s| lora_pool(s, 1, 50, Duration::from_millis(1), 2)).await;
    let (fifo_swaps, fifo_took) = alternate(&fifo, 20).await;
    eprintln!(
        "swap-ins: aware {aware_swaps} in {aware_took:?}, fifo {fifo_swaps} in {fifo_took:?}"
    );
    assert!(
        aware_swaps * 3.0 <= fifo_swaps,
        "aware {aware_swaps} vs fifo {fifo_swaps}"
    );
    // And sooner: a worker whose pull held the other adapter's jobs back is woken by its own
    // jobs' ends (the room they leave), not by a timeout (3.1 s instead of 1.1 s).
    assert!(
        aware_took < fifo_took,
        "aware {aware_took:?} vs fifo {fifo_took:?}"
    );
    let m = fifo.get_text(&heavy_worker_metrics(&fifo)).await;
    let counted = metric(&m, "ssw_worker_adapter_swaps_total", &[]).unwrap_or(0.0);
    assert!(
        (counted - fifo_swaps).abs() <= 2.0,
        "the worker's bookkeeping {counted} vs the engine's {fifo_swaps}"
    );
}

#[tokio::test]
async fn a_job_for_another_adapter_waits_no_longer_than_the_bound() {
    // The engine holds vampire-personality and is kept busy with it; a zombie job must still
    // start within the bound (500 ms) plus one answer.
    let p = TestPlatform::start_with(ssw(), |s| {
        lora_pool(s, 1, 100, Duration::from_millis(500), 1)
    })
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeders: Vec<_> = (0..3)
        .map(|f| {
            let (http, url, stop) = (p.http.clone(), p.url("/v1/chat/completions"), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let b = body(ADAPTERS[0], f * 1000 + i).to_string();
                    let _ = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(b)
                        .send()
                        .await;
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t0 = Instant::now();
    let r = p.chat(&body(ADAPTERS[2], 0)).await;
    let took = t0.elapsed();
    let queued: u64 = r.headers()["x-ssw-queue-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.status(), 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in feeders {
        let _ = f.await;
    }
    eprintln!("the zombie job waited {queued} ms in the queue, answered in {took:?}");
    assert!(
        queued >= 300,
        "affinity held it back while vampire jobs waited: {queued} ms"
    );
    assert!(queued <= 500 + 300, "past the bound: {queued} ms");
}

async fn adapters_cli(p: &TestPlatform, args: &[&str]) -> String {
    let config = p.platform.dir().join("gateway.toml");
    let head = ["adapters", "--config", config.to_str().unwrap()];
    crate::ssw_ok(head.iter().chain(args)).await
}

#[tokio::test]
async fn an_adapter_loaded_live_is_routed_without_a_restart_and_nothing_fails() {
    let p =
        TestPlatform::start_with(ssw(), |s| lora_pool(s, 2, 20, Duration::from_secs(2), 8)).await;
    // Traffic on an adapter the pool had from the start, throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (http, url, stop) = (p.http.clone(), p.url("/v1/chat/completions"), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed, mut i) = (0, 0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let b = body(ADAPTERS[0], c * 10_000 + i).to_string();
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(b)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => ok += 1,
                        _ => failed += 1,
                    }
                    i += 1;
                }
                (ok, failed)
            })
        })
        .collect();
    let new = "werewolf-goal-prioritisation";
    assert_eq!(p.chat(&body(new, 0)).await.status(), 404, "not routed yet");
    let said = adapters_cli(
        &p,
        &["load", "--pool", "heavy", new, "--source", "/adapters/wgp"],
    )
    .await;
    assert!(
        said.contains("engine of heavy-0: werewolf-goal-prioritisation loaded"),
        "{said}"
    );
    assert!(said.contains("have version 1 in force"), "{said}");
    let r = p.chat(&body(new, 1)).await;
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["model"], new, "the engine served the new adapter: {v}");
    let listed = adapters_cli(&p, &["list", "--pool", "heavy"]).await;
    assert!(
        listed.lines().filter(|l| l.contains(new)).count() >= 2,
        "routed and held: {listed}"
    );
    let said = adapters_cli(&p, &["unload", "--pool", "heavy", new]).await;
    assert!(said.contains("unloaded"), "{said}");
    assert_eq!(
        p.chat(&body(new, 2)).await.status(),
        404,
        "no longer routed"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed += f;
    }
    eprintln!("{ok} requests during the live load and unload, {failed} failed");
    assert!(ok > 10, "{ok}");
    assert_eq!(failed, 0);
}

#[tokio::test]
async fn adapters_loaded_live_on_a_pool_without_any_are_pulled_by_affinity_and_outlive_an_engine_restart()
 {
    let mut p = TestPlatform::start_with(ssw(), |s| {
        lora_pool(s, 1, 50, Duration::from_secs(30), 2);
        // No adapter at start, in ssw's configuration or on the engine.
        s.config.pools.get_mut("heavy").unwrap().adapters.clear();
        for r in &mut s.replicas {
            if let EngineSpec::Stub(stub) = &mut r.engine {
                stub.lora_modules.clear();
            }
        }
    })
    .await;
    for a in &ADAPTERS[..2] {
        let source = format!("/adapters/{a}");
        adapters_cli(&p, &["load", "--pool", "heavy", a, "--source", &source]).await;
    }
    // The worker reads the routing version at its next heartbeat (100 ms here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // As in the affinity test above: plain FIFO pulling swaps on 38 to 40 of these 40.
    let (swaps, took) = alternate(&p, 20).await;
    eprintln!("swap-ins {swaps} in {took:?}");
    assert!(
        swaps <= 10.0,
        "adapter-aware pulling is on: {swaps} swap-ins"
    );
    let url = heavy_worker_metrics(&p);
    // The engine loses an adapter while it stays up (nothing the probe notices): the job's 404
    // has the worker load it, and the job runs again.
    let stub_url = p.platform.stubs["heavy-0"].1.clone();
    let r = p
        .http
        .post(format!("{stub_url}/v1/unload_lora_adapter"))
        .header("content-type", "application/json")
        .body(json!({"lora_name": ADAPTERS[0]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    served(&p, ADAPTERS[0], 100).await;
    loads(&p, &url, 1.0).await;
    // The engine restarts and comes back with only its command line's adapters (none): the
    // worker loads the routed ones again, as it sees the engine come up or on a job's 404.
    p.platform.restart_stub("heavy-0").await.unwrap();
    served(&p, ADAPTERS[0], 101).await;
    served(&p, ADAPTERS[1], 102).await;
    let held = p.stub_get("heavy-0", "/v1/models").await;
    assert!(ADAPTERS[..2].iter().all(|a| held.contains(a)), "{held}");
    loads(&p, &url, 3.0).await;
}

/// Waits until the worker counts `n` adapters loaded on its engine.
async fn loads(p: &TestPlatform, url: &str, n: f64) {
    TestPlatform::eventually(Duration::from_secs(3), "loads counted", || async {
        let m = p.get_text(url).await;
        metric(
            &m,
            "ssw_worker_adapter_loads_total",
            &[("outcome", "loaded")],
        ) == Some(n)
    })
    .await;
}

/// One request for adapter `a`, answered by the engine as `a`.
async fn served(p: &TestPlatform, a: &str, i: usize) {
    let r = p.chat(&body(a, i)).await;
    assert_eq!(r.status(), 200, "{a}");
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["model"], a);
}

/// The `/metrics` URL of the heavy pool's worker.
fn heavy_worker_metrics(p: &TestPlatform) -> String {
    p.platform
        .worker_metrics
        .iter()
        .find(|(id, _)| id.starts_with("heavy"))
        .map(|(_, u)| format!("{u}/metrics"))
        .expect("heavy-0's metrics")
}
