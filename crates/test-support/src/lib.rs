//! Test harness: the real platform on loopback.
//!
//! [`TestPlatform`] starts a real `redis-server` on a free port and real `ssw` processes (stub
//! engines, workers, gateway) through [`ssw_up`], with timings shortened so failure paths
//! (heartbeat expiry, reclaim, stall) play out in about a second. Helpers parse SSE streams and
//! Prometheus text.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use ssw_config::{Config, StubConfig};
use ssw_up::platform::{EngineSpec, Platform, PlatformSpec, ReplicaSpec};

pub use ssw_up;

/// Fast timings for tests: workers notice cancellation, death and engine state within ~1 s.
pub fn test_config() -> Config {
    let mut c = Config {
        pools: ssw_config::default_pools(),
        ..Config::default()
    };
    c.gateway.listen = "127.0.0.1:0".parse().expect("address");
    c.gateway.stall_timeout = Duration::from_secs(2);
    // Tests poll /readyz for queue state: every answer fresh.
    c.gateway.readiness_ttl = Duration::ZERO;
    let w = &mut c.worker;
    w.heartbeat_interval = Duration::from_millis(100);
    w.heartbeat_ttl = Duration::from_secs(1);
    w.engine_poll_interval = Duration::from_millis(100);
    w.cancel_poll_interval = Duration::from_millis(100);
    w.keepalive_interval = Duration::from_millis(250);
    w.drain_timeout = Duration::from_secs(10);
    c
}

/// A stub with small delays, so requests take measurable time.
pub fn test_stub() -> StubConfig {
    StubConfig {
        ttft: Duration::from_millis(5),
        tpot: Duration::from_millis(1),
        output_tokens: 8,
        ..StubConfig::default()
    }
}

/// The platform under test, torn down (every process killed) on drop.
pub struct TestPlatform {
    /// The processes.
    pub platform: Platform,
    /// A client for the gateway.
    pub http: reqwest::Client,
}

impl TestPlatform {
    /// The A40 layout (two stubs per pool) with test timings, ready to serve.
    pub async fn start(ssw: &Path) -> Self {
        Self::start_with(ssw, |_| {}).await
    }

    /// Like [`TestPlatform::start`], after `tweak` adjusted the spec; waits for readiness only if
    /// every pool has a replica.
    pub async fn start_with(ssw: &Path, tweak: impl FnOnce(&mut PlatformSpec)) -> Self {
        let mut spec = PlatformSpec::a40_stubs(ssw.to_owned(), test_config(), test_stub());
        spec.env.push((
            "RUST_LOG".into(),
            std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ));
        tweak(&mut spec);
        let every_pool_served = spec
            .config
            .pools
            .keys()
            .all(|p| spec.replicas.iter().any(|r| &r.pool == p));
        let mut platform = Platform::start(spec)
            .await
            .unwrap_or_else(|e| panic!("starting the platform: {e}"));
        if every_pool_served {
            platform
                .wait_ready(Duration::from_secs(20))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let p = Self {
            platform,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .expect("client"),
        };
        if !every_pool_served {
            // Not ready by design (a pool without workers), but admitting requests: the
            // gateway answers 503 until its reply stream exists.
            Self::eventually(Duration::from_secs(20), "the gateway admitting", || async {
                let Ok(r) = p.http.get(p.url("/readyz")).send().await else {
                    return false;
                };
                let text = r.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or_default();
                body["reply_stream"] == "ok"
            })
            .await;
        }
        p
    }

    /// One more gateway on the same Redis and workers ([`Platform::add_gateway`]), ready;
    /// returns it and its URL.
    pub async fn add_gateway(&self, name: &str) -> (ssw_up::process::Child, String) {
        let (child, url) = self
            .platform
            .add_gateway(name)
            .unwrap_or_else(|e| panic!("starting gateway {name}: {e}"));
        Self::eventually(
            Duration::from_secs(10),
            &format!("gateway {name} ready"),
            || async {
                self.http
                    .get(format!("{url}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        (child, url)
    }

    /// `gateway_url + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.platform.gateway_url)
    }

    /// POSTs a chat completion.
    pub async fn chat(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("gateway reachable")
    }

    /// POSTs a chat completion on its own task (a request left waiting while the test goes on).
    pub fn spawn_chat(
        &self,
        body: &Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let post = self
            .http
            .post(self.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send();
        tokio::spawn(post)
    }

    /// POSTs a chat completion with the client's own `x-request-id`.
    pub async fn chat_with_id(&self, request_id: &str, body: &Value) -> reqwest::Response {
        self.post_with_id("/v1/chat/completions", request_id, body)
            .await
    }

    /// POSTs `body` as JSON to the gateway's `path` with the client's own `x-request-id`.
    pub async fn post_with_id(
        &self,
        path: &str,
        request_id: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .header("x-request-id", request_id)
            .body(body.to_string())
            .send()
            .await
            .expect("gateway reachable")
    }

    /// GETs any URL as text.
    pub async fn get_text(&self, url: &str) -> String {
        self.http
            .get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body: {e}"))
    }

    /// GETs a stub replica's path as text.
    pub async fn stub_get(&self, replica: &str, path: &str) -> String {
        let base = self.platform.stub_url(replica).expect("stub replica");
        self.get_text(&format!("{base}{path}")).await
    }

    /// A metric of a stub replica (summed over label sets).
    pub async fn stub_metric(&self, replica: &str, name: &str) -> f64 {
        metric(&self.stub_get(replica, "/metrics").await, name, &[]).unwrap_or(0.0)
    }

    /// The request ids a stub replica has received.
    pub async fn stub_request_ids(&self, replica: &str) -> Vec<String> {
        let v: Value =
            serde_json::from_str(&self.stub_get(replica, "/stub/requests").await).expect("json");
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The body a stub replica received for `request_id`.
    pub async fn stub_request(&self, replica: &str, request_id: &str) -> Option<Value> {
        let v: Value =
            serde_json::from_str(&self.stub_get(replica, "/stub/requests").await).expect("json");
        v.as_array()?
            .iter()
            .find(|r| r["request_id"] == request_id)
            .map(|r| r["body"].clone())
    }

    /// The gateway's address (`127.0.0.1:PORT`).
    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        self.platform
            .gateway_url
            .trim_start_matches("http://")
            .parse()
            .expect("gateway address")
    }

    /// The gateway process's resident memory, in KiB.
    pub fn gateway_rss_kib(&self) -> u64 {
        let pid = self
            .platform
            .gateway
            .as_ref()
            .and_then(|g| g.pid())
            .expect("gateway running");
        rss_kib(pid)
    }

    /// Waits until no job is waiting or running in any pool (nothing left behind in Redis).
    pub async fn assert_no_jobs_left(&self, timeout: Duration) {
        let last = std::cell::RefCell::new(String::new());
        let found = Self::poll_until(timeout, || async {
            let Ok(r) = self.http.get(self.url("/readyz")).send().await else {
                return false;
            };
            let body = r.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            *last.borrow_mut() = body;
            v["pools"]
                .as_array()
                .is_some_and(|pools| pools.iter().all(|p| p["backlog"] == 0 && p["pending"] == 0))
        })
        .await;
        assert!(
            found,
            "timed out after {timeout:?} waiting for no job left in any pool; /readyz said {}",
            last.into_inner()
        );
    }

    /// Waits until the gateway answers `/healthz`.
    pub async fn assert_healthy(&self) {
        let r = self
            .http
            .get(self.url("/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .expect("gateway answers /healthz");
        assert_eq!(r.status(), 200);
    }

    /// Sends `n` requests with `body` to `path`, each on its own task, and returns once
    /// `pool`'s backlog holds them (a pool without workers keeps them waiting).
    pub async fn hold_in_queue(
        &self,
        path: &str,
        body: &Value,
        pool: &str,
        n: usize,
    ) -> Vec<tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>> {
        let held = (0..n)
            .map(|i| {
                let (http, url, body) = (self.http.clone(), self.url(path), body.to_string());
                tokio::spawn(async move {
                    http.post(url)
                        .header("content-type", "application/json")
                        .header("x-request-id", format!("wait-{i}"))
                        .body(body)
                        .send()
                        .await
                })
            })
            .collect();
        Self::eventually(Duration::from_secs(5), "requests queued", || async {
            let text = self.get_text(&self.url("/readyz")).await;
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            v["pools"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|x| x["pool"] == pool && x["backlog"] == n))
        })
        .await;
        held
    }

    /// Waits until `cond` holds, polling every 50 ms, or panics with `what` after `timeout`.
    pub async fn eventually<F, Fut>(timeout: Duration, what: &str, cond: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        if !Self::poll_until(timeout, cond).await {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
    }

    /// Polls `cond` every 50 ms until it holds (true) or `timeout` passes (false).
    pub async fn poll_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if cond().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// A replica spec with a stub engine.
pub fn stub_replica(id: &str, pool: &str, stub: StubConfig) -> ReplicaSpec {
    ReplicaSpec {
        id: id.into(),
        pool: pool.into(),
        engine: EngineSpec::Stub(Box::new(stub)),
        gpus: vec![],
    }
}

/// A minimal chat body.
pub fn chat_body(model: &str) -> Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
}

/// A response's status, headers and body (JSON, or the text as a JSON string).
pub async fn json_of(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

/// The JSON `data:` events of an SSE body, and whether it ended with `[DONE]`.
pub fn sse_events(body: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
        } else {
            events.push(
                serde_json::from_str(data)
                    .unwrap_or_else(|e| panic!("bad SSE event {data:?}: {e}")),
            );
        }
    }
    (events, done)
}

/// The value of `name` with all of `labels`, summed over matching series, from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            && let Ok(v) = value.parse::<f64>()
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// A process's resident memory (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `sig` to a process.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
