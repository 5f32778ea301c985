//! A fresh job starts its engine request before the claim's verdict arrives, but nothing of it
//! reaches Redis or the client until the verdict lets this worker run it; a refusal aborts the
//! engine request silently. A job that is not fresh waits for the verdict before touching the
//! engine. Real redis-server and a real stub engine on loopback; the verdict is sent by hand, so
//! each test decides when (and what) the claim answers.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use ssw_config::{Config, StubConfig};
use ssw_protocol::job::Job;
use ssw_protocol::reply::ReplyEvent;
use ssw_protocol::tier::Tier;
use ssw_queue::consumer::{Claim, PullPolicy};
use ssw_queue::now_ms;
use ssw_queue::producer::{Enqueued, QueueLimits, ReplyReader};
use ssw_test_support::ssw_up::redis::RedisServer;
use ssw_test_support::test_config;
use ssw_worker::Ctx;
use ssw_worker::job::{self, Decision, Pulled};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

const POOL: &str = "heavy";
const REPLIES: &str = "ssw:{gw:test}:replies";

struct Rig {
    _redis: RedisServer,
    _dir: TempDir,
    stub: String,
    ctx: Arc<Ctx>,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Redis, a stub engine answering after `ttft`, and a worker context in front of it.
async fn rig(ttft: Duration) -> Rig {
    let dir = std::env::temp_dir().join(format!("ssw-early-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = RedisServer::start(&dir)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = format!("http://{}", listener.local_addr().unwrap());
    let stub_cfg = StubConfig {
        ttft,
        tpot: Duration::ZERO,
        output_tokens: 4,
        ..StubConfig::default()
    };
    tokio::spawn(ssw_stub::serve(listener, stub_cfg, stop.clone()));
    let mut cfg: Config = test_config();
    cfg.redis.url = redis.url();
    cfg.worker.pool = Some(POOL.into());
    cfg.worker.id = Some("w-test".into());
    cfg.worker.engine_url = stub.clone();
    let ctx = Arc::new(Ctx::new(&cfg).unwrap());
    ctx.redis.ensure_group(POOL).await.unwrap();
    ctx.redis
        .keep_replies(REPLIES, Duration::from_secs(60))
        .await
        .unwrap();
    Rig {
        _redis: redis,
        _dir: TempDir(dir),
        stub,
        ctx,
        http: reqwest::Client::new(),
        _stop: stop.drop_guard(),
    }
}

impl Rig {
    /// Pulls a job and runs it; the test sends the claim's verdict through the returned sender.
    async fn started(
        &self,
        request_id: &str,
        stream: bool,
        early: bool,
    ) -> (
        oneshot::Sender<Option<Decision>>,
        tokio::task::JoinHandle<bool>,
    ) {
        let pulled = self.pulled(request_id, stream, early).await;
        let (verdict_tx, verdict) = job::verdict();
        let run = tokio::spawn(job::run(
            self.ctx.clone(),
            pulled,
            verdict,
            CancellationToken::new(),
            Default::default(),
        ));
        (verdict_tx, run)
    }

    /// The real claim script's verdict on `request_id`'s job, as the worker would get it.
    async fn claim(&self, request_id: &str) -> Decision {
        let id = format!("job-{request_id}");
        let claims = self
            .ctx
            .redis
            .claim(
                POOL,
                "w-test",
                &[(&id, now_ms() + 60_000)],
                now_ms(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        match claims[0] {
            Claim::Run { fence } => Decision::Run { fence },
            other => Decision::Refused(other),
        }
    }

    /// Waits until the engine has the request, then a little longer, so that anything the
    /// worker would send early has had time to reach Redis.
    async fn engine_got(&self, request_id: &str) {
        until("the engine request", async || {
            self.engine_saw().await.iter().any(|id| id == request_id)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// Enqueues a job and pulls it, as the worker's pull loop would.
    async fn pulled(&self, request_id: &str, stream: bool, early: bool) -> Pulled {
        let now = now_ms();
        let job = Job {
            id: format!("job-{request_id}"),
            request_id: request_id.into(),
            reply_to: REPLIES.into(),
            enqueued_ms: now,
            deadline_ms: now + 60_000,
            stream,
            attempt: 1,
            crashes: 0,
            crashed_on: String::new(),
            tier: Tier::Default,
            tenant: "default".into(),
            endpoint: Default::default(),
            adapter: String::new(),
            body: serde_json::to_vec(&serde_json::json!({
                "model": StubConfig::default().served_model, "stream": stream,
                "messages": [{"role": "user", "content": "hi"}],
            }))
            .unwrap(),
        };
        let r = &self.ctx.redis;
        assert!(matches!(
            r.enqueue(
                POOL,
                &job,
                QueueLimits {
                    max_queue: 100,
                    max_queue_bytes: 1 << 20,
                    max_tier: 0,
                    max_tenant: 0,
                }
            )
            .await
            .unwrap(),
            Enqueued::Accepted(_)
        ));
        let policy = PullPolicy {
            most: 1,
            below_priority: 1,
            default_share: 0.3,
            flex_share: 0.1,
            adapters: ssw_queue::consumer::Adapters::NONE,
        };
        let mut batch = r.pull(POOL, "w-test", policy).await.unwrap();
        assert_eq!(batch.len(), 1);
        let p = batch.remove(0);
        Pulled {
            entry_id: p.entry_id,
            size: p.size,
            job: p.job.unwrap(),
            pulled_ms: now,
            reclaimed: false,
            early,
        }
    }

    /// Request ids the stub engine has received.
    async fn engine_saw(&self) -> Vec<String> {
        let body = self
            .http
            .get(format!("{}/stub/requests", self.stub))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["request_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Every reply event on the test's reply stream so far.
    async fn replies(&self) -> Vec<ReplyEvent> {
        let mut reader = ReplyReader::new(REPLIES.into(), "0-0".into());
        let mut conn = self.ctx.redis.dedicated().await.unwrap();
        reader
            .read(&mut conn, Duration::from_millis(10), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().event)
            .collect()
    }

    /// Entries left on the pool's stream (waiting or pending).
    async fn entries_left(&self) -> usize {
        self.ctx
            .redis
            .pool_stats(POOL, now_ms())
            .await
            .unwrap()
            .backlog as usize
            + self
                .ctx
                .redis
                .pool_stats(POOL, now_ms())
                .await
                .unwrap()
                .pending as usize
    }
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_early_job_answers_nobody_before_its_claim_and_is_dropped_when_refused() {
    let rig = rig(Duration::ZERO).await;
    let (verdict_tx, run) = rig.started("early-refused", false, true).await;
    // The engine gets the request (and, with no delay, answers it) while the claim is out...
    rig.engine_got("early-refused").await;
    // ...but the answer waits for the verdict.
    assert_eq!(rig.replies().await, vec![]);
    assert!(!run.is_finished());
    verdict_tx
        .send(Some(Decision::Refused(Claim::Cancelled)))
        .unwrap();
    assert!(run.await.unwrap(), "the engine request was made");
    assert_eq!(rig.replies().await, vec![], "nothing for a cancelled job");
    assert_eq!(
        rig.entries_left().await,
        0,
        "the entry is acknowledged and gone"
    );
}

#[tokio::test]
async fn an_early_stream_sends_its_head_with_the_first_bytes_once_claimed() {
    let rig = rig(Duration::from_millis(20)).await;
    let (verdict_tx, run) = rig.started("early-run", true, true).await;
    rig.engine_got("early-run").await;
    assert_eq!(rig.replies().await, vec![], "no head before the claim");
    verdict_tx.send(Some(rig.claim("early-run").await)).unwrap();
    assert!(run.await.unwrap());
    let events = rig.replies().await;
    let Some(ReplyEvent::Head { worker, data, .. }) = events.first() else {
        panic!("the first event is the head: {events:?}");
    };
    assert_eq!(worker, "w-test");
    assert!(data.starts_with(b"data: {"), "the head carries output");
    assert_eq!(events.last(), Some(&ReplyEvent::End));
    let sse: Vec<u8> = events
        .iter()
        .flat_map(|e| match e {
            ReplyEvent::Head { data, .. } | ReplyEvent::Data(data) => data.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert!(
        String::from_utf8(sse)
            .unwrap()
            .ends_with("data: [DONE]\n\n")
    );
    assert_eq!(rig.entries_left().await, 0);
}

#[tokio::test]
async fn a_job_that_is_not_fresh_reaches_the_engine_only_after_its_claim() {
    let rig = rig(Duration::ZERO).await;
    let (verdict_tx, run) = rig.started("late", false, false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.engine_saw().await, Vec::<String>::new());
    verdict_tx
        .send(Some(Decision::Refused(Claim::Cancelled)))
        .unwrap();
    assert!(!run.await.unwrap(), "no engine request was made");
    assert_eq!(rig.engine_saw().await, Vec::<String>::new());
    assert_eq!(rig.entries_left().await, 0);
}

#[tokio::test]
async fn an_early_job_is_kept_alive_while_the_engine_works() {
    // The engine takes several keep-alive intervals (250 ms in the test config) to answer; the
    // verdict arrives once its request is under way, as in the worker. The gateway must hear
    // keep-alives meanwhile, or it fails the request once `gateway.stall_timeout` passes.
    let rig = rig(Duration::from_millis(900)).await;
    let (verdict_tx, run) = rig.started("slow", false, true).await;
    rig.engine_got("slow").await;
    verdict_tx.send(Some(rig.claim("slow").await)).unwrap();
    assert!(run.await.unwrap());
    let events = rig.replies().await;
    let alive = events
        .iter()
        .filter(|e| **e == ReplyEvent::KeepAlive)
        .count();
    assert!(
        alive >= 2,
        "keep-alives while the engine worked: {events:?}"
    );
    assert!(
        matches!(events.last(), Some(ReplyEvent::Full { status: 200, .. })),
        "{events:?}"
    );
}
