//! Failure semantics, each proven on the real stack: full queue, queue timeout, cancellation,
//! engine errors, worker deaths, Redis restart, graceful shutdown.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use ssw_config::StubConfig;
use ssw_test_support::{TestPlatform, chat_body, signal, sse_events, stub_replica, test_stub};

use crate::ssw;

async fn error_of(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).expect("JSON error body");
    (status, headers, v)
}

pub(crate) fn slow_stub(ttft_ms: u64, tpot_ms: u64, tokens: u32) -> StubConfig {
    StubConfig {
        ttft: Duration::from_millis(ttft_ms),
        tpot: Duration::from_millis(tpot_ms),
        output_tokens: tokens,
        ..StubConfig::default()
    }
}

/// Only the light pool has replicas: heavy jobs stay queued.
fn light_only(s: &mut ssw_test_support::ssw_up::platform::PlatformSpec) {
    s.replicas.retain(|r| r.pool == "light");
}

/// Sends a heavy request with id `request_id` and gives up on it after `after`, unanswered.
async fn abandon_heavy_request(p: &TestPlatform, request_id: &str, after: Duration) {
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .header("x-request-id", request_id)
        .timeout(after)
        .body(chat_body("heavy").to_string())
        .send()
        .await;
    assert!(
        r.is_err(),
        "answered although no worker serves heavy: {r:?}"
    );
}

/// Adds a heavy worker (to a platform that had none), waits until it serves, and checks that
/// none of `request_ids` ever reached its engine.
async fn a_late_heavy_worker_never_runs(p: &mut TestPlatform, request_ids: &[&str]) {
    let stub_url = p
        .platform
        .add_stub("heavy-late", "heavy", test_stub())
        .unwrap();
    p.platform
        .spawn_worker("heavy-late", "heavy", &stub_url, vec![])
        .unwrap();
    TestPlatform::eventually(
        Duration::from_secs(10),
        "a late heavy worker serving",
        || async { p.chat(&chat_body("heavy")).await.status() == 200 },
    )
    .await;
    let seen = p.stub_request_ids("heavy-late").await;
    assert!(!seen.is_empty());
    for id in request_ids {
        assert!(!seen.iter().any(|s| s == id), "{id} ran: {seen:?}");
    }
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after_before_enqueueing() {
    let p = TestPlatform::start_with(ssw(), |s| {
        light_only(s);
        s.config.pools.get_mut("heavy").unwrap().max_queue = 3;
    })
    .await;
    // Three requests wait in the heavy queue (no heavy worker)...
    let waiting: Vec<_> = (0..3).map(|_| p.spawn_chat(&chat_body("heavy"))).collect();
    TestPlatform::eventually(Duration::from_secs(5), "3 jobs queued", || async {
        let v: Value = p
            .http
            .get(p.url("/readyz"))
            .send()
            .await
            .unwrap()
            .json_value()
            .await;
        v["pools"][0]["backlog"] == 3
    })
    .await;
    // ...so the fourth is refused at once.
    let started = Instant::now();
    let (status, headers, v) = error_of(p.chat(&chat_body("heavy")).await).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "queue_full");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // The light pool is unaffected.
    assert_eq!(p.chat(&chat_body("light")).await.status(), 200);
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn a_job_nobody_starts_in_time_gets_503_and_never_runs() {
    let mut p = TestPlatform::start_with(ssw(), |s| {
        light_only(s);
        s.config.pools.get_mut("heavy").unwrap().queue_timeout = Duration::from_millis(800);
    })
    .await;
    let started = Instant::now();
    let r = p.chat_with_id("too-late", &chat_body("heavy")).await;
    let (status, headers, v) = error_of(r).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_timeout");
    assert!(headers.contains_key("retry-after"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // A heavy worker that appears afterwards serves new requests but never runs the expired one.
    a_late_heavy_worker_never_runs(&mut p, &["too-late"]).await;
}

#[tokio::test]
async fn a_queued_job_whose_client_left_never_runs() {
    let mut p = TestPlatform::start_with(ssw(), light_only).await;
    abandon_heavy_request(&p, "gone-before-start", Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_late_heavy_worker_never_runs(&mut p, &["gone-before-start"]).await;
}

#[tokio::test]
async fn a_running_job_whose_client_left_is_aborted_on_the_engine_within_a_second() {
    let p = TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica("heavy-0", "heavy", slow_stub(50, 100, 200)),
            stub_replica("light-0", "light", test_stub()),
        ];
    })
    .await;
    // Streaming: read the first chunk, then hang up.
    let mut body = chat_body("heavy");
    body["stream"] = json!(true);
    let r = p.chat(&body).await;
    assert_eq!(r.status(), 200);
    let mut chunks = r.bytes_stream();
    chunks.next().await.expect("first chunk").expect("bytes");
    drop(chunks);
    let hung_up = Instant::now();
    TestPlatform::eventually(
        Duration::from_secs(3),
        "stream abort reaches the engine",
        || async {
            p.stub_metric("heavy-0", "ssw_stub_aborted_requests_total")
                .await
                == 1.0
        },
    )
    .await;
    assert!(
        hung_up.elapsed() < Duration::from_millis(1500),
        "{:?}",
        hung_up.elapsed()
    );
    // Non-streaming: the client times out while the engine is still generating.
    let r = p
        .http
        .post(p.url("/v1/chat/completions"))
        .timeout(Duration::from_millis(500))
        .body(chat_body("heavy").to_string())
        .send()
        .await;
    assert!(r.is_err());
    let hung_up = Instant::now();
    TestPlatform::eventually(
        Duration::from_secs(3),
        "non-stream abort reaches the engine",
        || async {
            p.stub_metric("heavy-0", "ssw_stub_aborted_requests_total")
                .await
                == 2.0
        },
    )
    .await;
    assert!(
        hung_up.elapsed() < Duration::from_millis(1500),
        "{:?}",
        hung_up.elapsed()
    );
    // The slot is free again: the engine runs nothing.
    TestPlatform::eventually(Duration::from_secs(2), "engine idle", || async {
        p.stub_metric("heavy-0", "vllm:num_requests_running").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn engine_failures_are_retried_elsewhere_then_reported_as_502() {
    let failing = StubConfig {
        error_rate: 1.0,
        ..test_stub()
    };
    let p = TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica("heavy-bad", "heavy", failing.clone()),
            stub_replica("heavy-good", "heavy", test_stub()),
            stub_replica("light-bad", "light", failing.clone()),
        ];
    })
    .await;
    // Every heavy request succeeds, whichever worker pulled it first.
    for _ in 0..10 {
        let r = p.chat(&chat_body("heavy")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ssw-worker"], "heavy-good");
    }
    // With no healthy engine the client gets 502 after max_attempts.
    let (status, _, v) = error_of(p.chat(&chat_body("light")).await).await;
    assert_eq!(status, 502, "{v}");
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(
        p.stub_metric("light-bad", "ssw_stub_request_errors_total")
            .await,
        3.0,
        "max_attempts deliveries"
    );
}

#[tokio::test]
async fn jobs_of_a_worker_killed_before_output_complete_on_another() {
    let mut p = TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica("heavy-0", "heavy", slow_stub(1500, 1, 4)),
            stub_replica("light-0", "light", test_stub()),
        ];
    })
    .await;
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let http = p.http.clone();
            let url = p.url("/v1/chat/completions");
            let mut body = chat_body("heavy");
            body["stream"] = json!(i % 2 == 0);
            tokio::spawn(async move {
                let r = http.post(url).body(body.to_string()).send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.headers()["x-ssw-worker"].to_str().unwrap().to_owned(),
                    r.text().await.unwrap(),
                )
            })
        })
        .collect();
    TestPlatform::eventually(Duration::from_secs(5), "3 jobs on the engine", || async {
        p.stub_metric("heavy-0", "vllm:num_requests_running").await == 3.0
    })
    .await;
    let pid = p.platform.workers["heavy-0"].pid().unwrap();
    signal(pid, libc::SIGKILL);
    let stub_url = p.platform.stub_url("heavy-0").unwrap().to_owned();
    p.platform
        .spawn_worker("heavy-1", "heavy", &stub_url, vec![])
        .unwrap();
    for c in clients {
        let (status, worker, body) = tokio::time::timeout(Duration::from_secs(15), c)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(worker, "heavy-1");
        assert!(body.contains("[Qwen/Qwen2.5-14B-Instruct-AWQ]"), "{body}");
    }
}

#[tokio::test]
async fn a_worker_killed_mid_stream_ends_the_stream_with_an_explicit_error() {
    let p = TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica("heavy-0", "heavy", slow_stub(10, 200, 100)),
            stub_replica("light-0", "light", test_stub()),
        ];
    })
    .await;
    let mut body = chat_body("heavy");
    body["stream"] = json!(true);
    let r = p.chat(&body).await;
    assert_eq!(r.status(), 200);
    let mut chunks = r.bytes_stream();
    let mut text = String::from_utf8(chunks.next().await.unwrap().unwrap().to_vec()).unwrap();
    signal(p.platform.workers["heavy-0"].pid().unwrap(), libc::SIGKILL);
    let killed = Instant::now();
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(c) = chunks.next().await {
            text.push_str(std::str::from_utf8(&c.unwrap()).unwrap());
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ended");
    assert!(
        killed.elapsed() < Duration::from_secs(4),
        "within the stall timeout: {:?}",
        killed.elapsed()
    );
    let (events, done) = sse_events(&text);
    assert!(done, "ends with [DONE]");
    let last = events.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_error", "{last}");
}

#[tokio::test]
async fn redis_down_means_fast_503_and_service_resumes_when_it_is_back() {
    let mut p = TestPlatform::start(ssw()).await;
    assert_eq!(p.chat(&chat_body("heavy")).await.status(), 200);
    p.platform.redis.as_mut().unwrap().kill().await;
    let started = Instant::now();
    let (status, headers, v) = error_of(p.chat(&chat_body("heavy")).await).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_unavailable");
    assert!(headers.contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        p.http.get(p.url("/readyz")).send().await.unwrap().status(),
        503
    );
    p.platform.redis.as_mut().unwrap().restart().await.unwrap();
    // Gateway and workers reconnect by themselves.
    TestPlatform::eventually(
        Duration::from_secs(15),
        "both pools served again",
        || async {
            p.chat(&chat_body("heavy")).await.status() == 200
                && p.chat(&chat_body("light")).await.status() == 200
        },
    )
    .await;
    let mut s = chat_body("light");
    s["stream"] = json!(true);
    let (events, done) = sse_events(&p.chat(&s).await.text().await.unwrap());
    assert!(done && !events.is_empty());
}

#[tokio::test]
async fn an_enqueue_that_timed_out_is_never_run_although_redis_executed_it() {
    // Redis frozen (SIGSTOP): the gateway's enqueue is sent but unanswered, so the client gets
    // 503; once Redis resumes it executes the enqueue anyway. The job must not run.
    let mut p = TestPlatform::start_with(ssw(), light_only).await;
    TestPlatform::eventually(Duration::from_secs(5), "the reply stream", || async {
        let r = p.http.get(p.url("/readyz")).send().await.unwrap();
        r.json_value().await["reply_stream"] == "ok"
    })
    .await;
    // An abandoned heavy request first, so the enqueue script is loaded: a frozen Redis then
    // runs the very command the gateway gave up on.
    abandon_heavy_request(&p, "abandoned", Duration::from_millis(200)).await;
    TestPlatform::eventually(
        Duration::from_secs(5),
        "the abandoned job removed",
        || async {
            let r = p.http.get(p.url("/readyz")).send().await.unwrap();
            let ready = r.json_value().await;
            ready["pools"]
                .as_array()
                .unwrap()
                .iter()
                .any(|pool| pool["pool"] == "heavy" && pool["backlog"] == 0)
        },
    )
    .await;
    let redis = p.platform.redis.as_ref().unwrap().pid().unwrap();
    signal(redis, libc::SIGSTOP);
    let r = p.chat_with_id("unconfirmed", &chat_body("heavy")).await;
    signal(redis, libc::SIGCONT);
    let (status, _, v) = error_of(r).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(
        v["error"]["message"],
        "the queue is unavailable; retry later"
    );
    a_late_heavy_worker_never_runs(&mut p, &["unconfirmed", "abandoned"]).await;
}

#[tokio::test]
async fn a_gateway_admits_nothing_before_its_reply_stream_exists() {
    // Workers append replies with NOMKSTREAM, so a job enqueued before the gateway's reply
    // stream exists would have its answer dropped: such a gateway must refuse, not accept.
    let p = TestPlatform::start(ssw()).await;
    let mut cfg = p.platform.base_config();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    cfg.gateway.listen = format!("127.0.0.1:{port}").parse().unwrap();
    let path = p.platform.dir().join("late-gateway.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    let redis = p.platform.redis.as_ref().unwrap().pid().unwrap();
    signal(redis, libc::SIGSTOP);
    let mut late = tokio::process::Command::new(ssw())
        .args(["gateway", "--config"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let chat = || {
        p.http
            .post(format!("{url}/v1/chat/completions"))
            .body(chat_body("light").to_string())
            .send()
    };
    TestPlatform::eventually(
        Duration::from_secs(5),
        "the late gateway listening",
        || async { p.http.get(format!("{url}/healthz")).send().await.is_ok() },
    )
    .await;
    let (status, headers, v) = error_of(chat().await.unwrap()).await;
    let ready = p.http.get(format!("{url}/readyz")).send().await.unwrap();
    let ready_status = ready.status().as_u16();
    let ready = ready.json_value().await;
    signal(redis, libc::SIGCONT);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("connecting"),
        "{v}"
    );
    assert!(headers.contains_key("retry-after"));
    assert_eq!(ready_status, 503);
    assert_eq!(ready["reply_stream"], "not created yet", "{ready}");
    // Once Redis answers, the late gateway serves like the first one.
    TestPlatform::eventually(
        Duration::from_secs(10),
        "the late gateway serving",
        || async { chat().await.unwrap().status() == 200 },
    )
    .await;
    late.kill().await.unwrap();
}

#[tokio::test]
async fn sigterm_drains_workers_and_gateway_and_they_exit_zero() {
    let mut p = TestPlatform::start_with(ssw(), |s| {
        s.replicas = vec![
            stub_replica("heavy-0", "heavy", slow_stub(10, 50, 20)),
            stub_replica("light-0", "light", slow_stub(10, 50, 20)),
        ];
    })
    .await;
    let (http0, url0) = (p.http.clone(), p.url("/v1/chat/completions"));
    let send = |model: &str, stream: bool| {
        let http = http0.clone();
        let url = url0.clone();
        let mut body = chat_body(model);
        body["stream"] = json!(stream);
        tokio::spawn(async move {
            let r = http.post(url).body(body.to_string()).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    // A worker with a job in flight finishes it, then exits 0.
    let job = send("heavy", false);
    TestPlatform::eventually(Duration::from_secs(5), "job running", || async {
        p.stub_metric("heavy-0", "vllm:num_requests_running").await == 1.0
    })
    .await;
    let mut worker = p.platform.workers.remove("heavy-0").unwrap();
    worker.signal(libc::SIGTERM);
    let (status, body) = job.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let exit = tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    // The gateway finishes a stream in flight, refuses new work, exits 0.
    let stream = send("light", true);
    TestPlatform::eventually(Duration::from_secs(5), "stream running", || async {
        p.stub_metric("light-0", "vllm:num_requests_running").await == 1.0
    })
    .await;
    let mut gateway = p.platform.gateway.take().unwrap();
    gateway.signal(libc::SIGTERM);
    let (status, text) = stream.await.unwrap();
    assert_eq!(status, 200);
    let (events, done) = sse_events(&text);
    assert!(done, "the stream in flight completed");
    assert!(events.iter().all(|e| e.get("error").is_none()));
    let exit = tokio::time::timeout(Duration::from_secs(10), gateway.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    // The launcher keeps the listening socket (to start a gateway again on it, as systemd
    // socket activation does), so a new connection is queued, never answered.
    assert!(
        p.http
            .get(p.url("/healthz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_err(),
        "no longer answering"
    );
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_str(&self.text().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn a_worker_whose_engine_is_down_stops_pulling_and_says_so() {
    let mut p = TestPlatform::start(ssw()).await;
    let (mut stub, _) = p.platform.stubs.remove("heavy-0").unwrap();
    stub.signal(libc::SIGKILL);
    stub.wait().await.unwrap();
    TestPlatform::eventually(
        Duration::from_secs(5),
        "readyz shows one serving heavy worker",
        || async {
            let v: Value = p
                .http
                .get(p.url("/readyz"))
                .send()
                .await
                .unwrap()
                .json_value()
                .await;
            v["pools"][0]["live_workers"] == 2
                && v["pools"][0]["serving_workers"] == 1
                && v["ready"] == true
        },
    )
    .await;
    // Every heavy request lands on the replica whose engine is up.
    for _ in 0..20 {
        let r = p.chat(&chat_body("heavy")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ssw-worker"], "heavy-1");
    }
}

#[tokio::test]
async fn check_config_names_the_bad_field() {
    let dir = std::env::temp_dir().join(format!("ssw-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, text: &str, role: Option<&str>| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let mut cmd = std::process::Command::new(ssw());
        cmd.arg("check-config").arg(&path);
        if let Some(r) = role {
            cmd.args(["--role", r]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(
        "good.toml",
        "[worker]\npool = \"heavy\"\nengine_url = \"http://127.0.0.1:8001\"\n",
        None,
    );
    assert!(ok, "{out}");
    let (ok, out) = run(
        "bad-queue.toml",
        "[pools.heavy]\nserved_model = \"m\"\nmax_queue = 0\n",
        None,
    );
    assert!(!ok);
    assert!(out.contains("pools.heavy.max_queue"), "{out}");
    let (ok, out) = run(
        "bad-duration.toml",
        "[gateway]\nstall_timeout = \"forever\"\n",
        None,
    );
    assert!(!ok);
    assert!(out.contains("stall_timeout"), "{out}");
    let (ok, out) = run("no-pool.toml", "", Some("worker"));
    assert!(!ok);
    assert!(out.contains("worker.pool"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
