//! Drains and model rollouts on the real stack: `ssw drain`/`resume`, `ssw rollout
//! --engine-api` under continuous mixed load (zero failed requests, every answer from the old or
//! the new model, the backlog rising while a replica is out and draining after), and a rollout
//! whose new model never comes up (it stops, the pool serves on).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ssw_test_support::{TestPlatform, metric, sse_events};
use ssw_up::platform::EngineSpec;

use crate::ssw;

/// The platform with small workers (4 slots) and ~90 ms answers: one heavy replica serves
/// about 44 requests/s, so the load below needs both and queues while one is out. Stubs load a
/// model in `load_time`.
async fn platform(load_time: Duration) -> TestPlatform {
    TestPlatform::start_with(ssw(), |s| {
        s.config.worker.max_inflight = 4;
        for r in &mut s.replicas {
            if let EngineSpec::Stub(stub) = &mut r.engine {
                stub.ttft = Duration::from_millis(20);
                stub.tpot = Duration::from_millis(10);
                stub.output_tokens = 8;
                stub.load_time = load_time;
            }
        }
    })
    .await
}

async fn cli(p: &TestPlatform, args: &[&str]) -> std::process::Output {
    let config = p.platform.dir().join("gateway.toml");
    tokio::process::Command::new(ssw())
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .await
        .unwrap()
}

/// One answer of the load.
#[derive(Debug)]
struct Answer {
    pool: &'static str,
    status: u16,
    model: String,
    worker: String,
    stream: bool,
    /// When it was sent, from the load's start.
    at: Duration,
    latency: Duration,
}

/// `clients` loops, each sending one request every `every` (alternating pools and streaming),
/// until `stop`.
async fn load(
    p: &TestPlatform,
    clients: usize,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<Answer> {
    let start = Instant::now();
    let one = |c: usize| {
        let stop = stop.clone();
        async move {
            let mut out = Vec::new();
            let mut i = 0usize;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.is_cancelled() {
                tick.tick().await;
                let pool = if (c + i).is_multiple_of(2) {
                    "heavy"
                } else {
                    "light"
                };
                let stream = (c / 2 + i).is_multiple_of(2);
                let at = start.elapsed();
                let sent = Instant::now();
                let body = json!({
                    "model": pool,
                    "messages": [{"role": "user", "content": format!("c{c} r{i}")}],
                    "stream": stream,
                });
                let r = p.chat(&body).await;
                let status = r.status().as_u16();
                let worker = r
                    .headers()
                    .get("x-ssw-worker")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let text = r.text().await.unwrap_or_default();
                let model = if status != 200 {
                    text
                } else if stream {
                    let (events, done) = sse_events(&text);
                    assert!(done, "stream without [DONE]: {text}");
                    let models: Vec<&str> =
                        events.iter().filter_map(|e| e["model"].as_str()).collect();
                    assert!(
                        models.windows(2).all(|w| w[0] == w[1]),
                        "one stream, two models: {models:?}"
                    );
                    models.first().copied().unwrap_or_default().to_owned()
                } else {
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    v["model"].as_str().unwrap_or_default().to_owned()
                };
                out.push(Answer {
                    pool,
                    status,
                    model,
                    worker,
                    stream,
                    at,
                    latency: sent.elapsed(),
                });
                i += 1;
            }
            out
        }
    };
    futures::future::join_all((0..clients).map(one))
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `ssw ARGS` run `before` into a load of 4 clients (one request each per 100 ms), which stops
/// `after` it returned; the answers and the command's output.
async fn during_load(
    p: &TestPlatform,
    before: Duration,
    args: &[&str],
    after: Duration,
) -> (Vec<Answer>, std::process::Output) {
    let stop = tokio_util::sync::CancellationToken::new();
    let run = async {
        tokio::time::sleep(before).await;
        let out = cli(p, args).await;
        tokio::time::sleep(after).await;
        stop.cancel();
        out
    };
    tokio::join!(load(p, 4, Duration::from_millis(100), stop.clone()), run)
}

fn assert_none_failed(answers: &[Answer]) {
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// `ssw status`'s output.
async fn ssw_status(p: &TestPlatform) -> String {
    String::from_utf8_lossy(&cli(p, &["status"]).await.stdout).into_owned()
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_rollout_under_load_swaps_the_heavy_model_without_a_failed_request() {
    let p = platform(Duration::from_secs(3)).await;
    let old = p.platform.base_config().pools["heavy"].served_model.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    // The heavy backlog, as the gateway samples it for its metrics.
    let sampler = {
        let stop = stop.clone();
        let p = &p;
        async move {
            let mut peak: f64 = 0.0;
            while !stop.is_cancelled() {
                let text = p.get_text(&p.url("/metrics")).await;
                peak = peak
                    .max(metric(&text, "ssw_queue_backlog", &[("pool", "heavy")]).unwrap_or(0.0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        }
    };
    let rollout = async {
        // A steady state first: the TTFT baseline.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let began = Instant::now();
        let out = cli(
            &p,
            &[
                "rollout",
                "--pool",
                "heavy",
                "--model",
                "new-model",
                "--engine-api",
            ],
        )
        .await;
        let took = began.elapsed();
        // And after: every heavy answer from the new model.
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
        (out, took)
    };
    // 10 clients, one request each per 100 ms: about 100 requests/s, half of them heavy.
    let (answers, peak, (out, took)) = tokio::join!(
        load(&p, 10, Duration::from_millis(100), stop.clone()),
        sampler,
        rollout
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("rollout done: heavy-0, heavy-1 of pool heavy serve new-model"),
        "{said}"
    );
    assert!(said.contains("[heavy-0] resumed"), "{said}");
    assert_none_failed(&answers);
    let heavy: Vec<&Answer> = answers.iter().filter(|a| a.pool == "heavy").collect();
    for a in &heavy {
        assert!(a.model == old || a.model == "new-model", "{a:?}");
    }
    let new = heavy.iter().filter(|a| a.model == "new-model").count();
    let rollout_start = Duration::from_secs(2);
    let rollout_end = rollout_start + took;
    // Sent after the rollout ended: the new model only.
    let late: Vec<&&Answer> = heavy
        .iter()
        .filter(|a| a.at > rollout_end + Duration::from_millis(200))
        .collect();
    assert!(!late.is_empty());
    assert!(late.iter().all(|a| a.model == "new-model"), "{late:?}");
    assert!(
        heavy
            .iter()
            .any(|a| a.model == old && a.worker == "heavy-0" && a.stream)
    );
    // The backlog rose while a replica was out, and drained.
    assert!(peak >= 1.0, "heavy backlog never rose (peak {peak})");
    TestPlatform::eventually(
        Duration::from_secs(5),
        "the heavy backlog drained",
        || async {
            let text = p.get_text(&p.url("/metrics")).await;
            metric(&text, "ssw_queue_backlog", &[("pool", "heavy")]) == Some(0.0)
        },
    )
    .await;
    let before: Vec<Duration> = heavy
        .iter()
        .filter(|a| a.at < rollout_start)
        .map(|a| a.latency)
        .collect();
    let during: Vec<Duration> = heavy
        .iter()
        .filter(|a| a.at >= rollout_start && a.at <= rollout_end)
        .map(|a| a.latency)
        .collect();
    eprintln!(
        "rollout of heavy in {:.1} s under load: {} requests ({} heavy, {new} from the new model), 0 failed; peak heavy backlog {peak}; heavy latency p99 {:?} before, {:?} during",
        took.as_secs_f64(),
        answers.len(),
        heavy.len(),
        p99(before),
        p99(during),
    );
    // Every surface says which replica serves which model.
    let models: Value =
        serde_json::from_str(&p.get_text(&p.url("/v1/models/heavy")).await).unwrap();
    let replicas = models["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2, "{models}");
    for r in replicas {
        assert_eq!(
            (r["model"].as_str(), r["state"].as_str()),
            (Some("new-model"), Some("serving")),
            "{models}"
        );
    }
    let status = ssw_status(&p).await;
    assert!(status.matches("new-model (").count() == 2, "{status}");
    let worker = p
        .get_text(&format!("{}/metrics", p.platform.worker_metrics["heavy-0"]))
        .await;
    assert_eq!(
        metric(
            &worker,
            "ssw_worker_engine_model_info",
            &[("model", "new-model")]
        ),
        Some(1.0),
        "{worker}"
    );
    assert_eq!(
        metric(&worker, "ssw_worker_engine_model_info", &[("model", &old)]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_rollout_whose_new_model_never_serves_stops_with_the_pool_serving_and_a_rerun_finishes_it()
 {
    let p = platform(Duration::from_secs(1)).await;
    // The new model takes 3 s to load; the rollout waits 1 s for it.
    let args = [
        "rollout",
        "--pool",
        "heavy",
        "--model",
        "broken",
        "--engine-api",
        "--load-time",
        "3s",
        "--ready-timeout",
        "1s",
    ];
    let (answers, out) = during_load(
        &p,
        Duration::from_millis(500),
        &args,
        Duration::from_secs(1),
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("heavy-0: the engine did not serve broken within 1s"),
        "{err}"
    );
    assert!(
        err.contains("heavy-0 stay drained; pool heavy serves on heavy-1"),
        "{err}"
    );
    assert!(err.contains("ssw resume heavy-0"), "{err}");
    assert_none_failed(&answers);
    let after: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.pool == "heavy" && a.at > Duration::from_secs(2))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|a| a.worker == "heavy-1"),
        "{after:?}"
    );
    let status = ssw_status(&p).await;
    assert!(status.contains("drained by rollout"), "{status}");
    // Once the engine has loaded it, run again: it takes over the drain it left, and finishes.
    let url = p.platform.stub_url("heavy-0").unwrap().to_owned();
    TestPlatform::eventually(
        Duration::from_secs(10),
        "heavy-0's engine loaded",
        || async {
            p.http
                .get(format!("{url}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    )
    .await;
    let out = cli(
        &p,
        &[
            "rollout",
            "--pool",
            "heavy",
            "--model",
            "broken",
            "--engine-api",
        ],
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!said.contains("left drained"), "{said}");
    assert!(
        said.contains("[heavy-0] resumed") && said.contains("[heavy-1] resumed"),
        "{said}"
    );
    let status = ssw_status(&p).await;
    assert!(!status.contains("drained by"), "{status}");
}

#[tokio::test]
async fn a_drained_worker_finishes_its_jobs_takes_no_more_and_stays_drained_across_a_restart() {
    let mut p = platform(Duration::from_secs(1)).await;
    // Long answers in flight on both heavy replicas.
    let long =
        json!({"model": "heavy", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8});
    let inflight: Vec<_> = (0..8).map(|_| p.chat(&long)).collect();
    let inflight = futures::future::join_all(inflight);
    let drain = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        cli(
            &p,
            &[
                "drain",
                "heavy-0",
                "--reason",
                "maintenance",
                "--wait",
                "10s",
            ],
        )
        .await
    };
    let (answers, out) = tokio::join!(inflight, drain);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("heavy-0: drained, nothing running"), "{said}");
    assert!(answers.iter().all(|r| r.status() == 200));
    for _ in 0..20 {
        let r = p.chat(&long).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ssw-worker"], "heavy-1");
    }
    // Kept across the worker's restart (as `ssw up` and systemd restart it).
    let pid = p.platform.workers["heavy-0"].pid().unwrap();
    ssw_test_support::signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.platform.supervise().await;
        let s = ssw_status(&p).await;
        let restarted = p.platform.workers["heavy-0"]
            .pid()
            .is_some_and(|n| n != pid);
        if restarted
            && s.lines()
                .any(|l| l.starts_with("heavy-0") && l.contains("drained"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "heavy-0 not back drained: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..10 {
        assert_eq!(p.chat(&long).await.headers()["x-ssw-worker"], "heavy-1");
    }
    let models: Value = serde_json::from_str(&p.get_text(&p.url("/v1/models")).await).unwrap();
    let heavy = &models["data"][0];
    assert_eq!(heavy["replicas"][0]["state"], "drained", "{models}");
    let out = cli(&p, &["resume", "heavy-0"]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("heavy-0: resumed"));
    TestPlatform::eventually(Duration::from_secs(10), "heavy-0 serving again", || async {
        futures::future::join_all((0..8).map(|_| p.chat(&long)))
            .await
            .iter()
            .any(|r| r.headers()["x-ssw-worker"] == "heavy-0")
    })
    .await;
    let out = cli(&p, &["drain", "nobody"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no worker `nobody` in the pools"));
}

#[tokio::test]
async fn an_engine_whose_model_changed_under_its_worker_gets_requests_with_its_new_name() {
    let p = platform(Duration::ZERO).await;
    // Swapped in place with no load time: the worker's probe never sees it down, and its last
    // reading of the model is fresh (it reads it again every 10 s).
    let url = p.platform.stub_url("heavy-0").unwrap().to_owned();
    let r = p
        .http
        .post(format!("{url}/stub/load_model"))
        .body(r#"{"model": "swapped"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body = json!({"model": "heavy", "messages": [{"role": "user", "content": "x"}]});
    let answers = futures::future::join_all((0..40).map(|_| p.chat(&body))).await;
    let mut on_swapped = 0;
    for r in answers {
        assert_eq!(r.status(), 200);
        let worker = r.headers()["x-ssw-worker"].to_str().unwrap().to_owned();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        if worker == "heavy-0" {
            // Its engine answered 404 to the old name; the job ran again with the new one.
            assert_eq!(v["model"], "swapped");
            on_swapped += 1;
        }
    }
    assert!(on_swapped > 0, "no request reached heavy-0");
}

#[tokio::test]
async fn a_rollout_through_vllms_engine_api_reloads_the_weights_in_place_under_load() {
    let p = platform(Duration::from_millis(500)).await;
    let old = p.platform.base_config().pools["light"].served_model.clone();
    let args = [
        "rollout",
        "--pool",
        "light",
        "--engine-api",
        "--weights",
        "/models/npc-ft2",
    ];
    let (answers, out) = during_load(
        &p,
        Duration::from_millis(500),
        &args,
        Duration::from_millis(500),
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("rollout of pool light to the weights in /models/npc-ft2"),
        "{said}"
    );
    assert_none_failed(&answers);
    // vLLM keeps its served name: every light answer carries it.
    assert!(
        answers
            .iter()
            .filter(|a| a.pool == "light")
            .all(|a| a.model == old)
    );
    for replica in ["light-0", "light-1"] {
        let state: Value = serde_json::from_str(&p.stub_get(replica, "/stub/state").await).unwrap();
        assert_eq!(state["weights"], "/models/npc-ft2", "{state}");
        assert_eq!(state["sleep_level"], 0, "{state}");
        assert_eq!(
            state["engine_api_calls"],
            json!([
                "sleep level=2",
                "wake_up weights",
                "reload_weights /models/npc-ft2",
                "wake_up kv_cache",
                "reset_prefix_cache"
            ]),
            "{replica}"
        );
    }
}
