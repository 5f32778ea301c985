//! Each Lua script against a real redis-server: its contract (KEYS, ARGV, return value, what
//! it writes), and the races it exists to decide. Scripts are atomic, so a race is two calls in
//! either order; both orders are tested where the outcome matters.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use redis::AsyncCommands;
use ssw_config::RedisConfig;
use ssw_protocol::heartbeat::WorkerStatus;
use ssw_protocol::job::Job;
use ssw_protocol::keys::{GROUP, JobState, Keys};
use ssw_protocol::reply::{Reply, ReplyEvent};
use ssw_protocol::tier::Tier;
use ssw_queue::consumer::{Claim, Commit, PullPolicy, Pulled, ReclaimScan, Requeue, Wait, Watch};
use ssw_queue::limits::{AllowanceCall, Amounts};
use ssw_queue::producer::{Enqueued, Expiry, Lane, QueueLimits};
use ssw_queue::{QueueError, Redis, now_ms};
use ssw_up::redis::RedisServer;

const POOL: &str = "p";
const TTL: Duration = Duration::from_secs(60);
const LIMITS: QueueLimits = QueueLimits {
    max_queue: 100,
    max_queue_bytes: 1 << 20,
    max_tier: 0,
    max_tenant: 0,
};

/// Take anything, shares as configured by default.
fn any(most: usize) -> PullPolicy<'static> {
    PullPolicy {
        most,
        below_priority: most,
        default_share: 0.3,
        flex_share: 0.1,
        adapters: ssw_queue::consumer::Adapters::NONE,
    }
}

/// The lane of [`job`]'s jobs.
fn lane() -> Lane {
    Lane {
        tier: Tier::Default,
        tenant: "default".into(),
        owner: "default".into(),
    }
}

struct Rig {
    _server: RedisServer,
    _dir: Dir,
    redis: Redis,
    raw: redis::aio::MultiplexedConnection,
    keys: Keys,
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn rig() -> Rig {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ssw-scripts-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let server = RedisServer::start(&dir)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cfg = RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    };
    let redis = Redis::new(&cfg, None).unwrap();
    redis.ensure_group(POOL).await.unwrap();
    let raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Rig {
        _server: server,
        _dir: Dir(dir),
        redis,
        raw,
        keys: Keys::default(),
    }
}

fn job(id: &str, body_len: usize) -> Job {
    let now = now_ms();
    Job {
        id: id.into(),
        request_id: format!("req-{id}"),
        reply_to: "ssw:{gw:g.1}:replies".into(),
        enqueued_ms: now,
        deadline_ms: now + 60_000,
        stream: false,
        attempt: 1,
        crashes: 0,
        crashed_on: String::new(),
        tier: Tier::Default,
        tenant: "default".into(),
        endpoint: Default::default(),
        adapter: String::new(),
        body: vec![b'x'; body_len],
    }
}

/// A job of `tier` for `tenant`.
fn job_for(id: &str, tier: Tier, tenant: &str) -> Job {
    Job {
        tier,
        tenant: tenant.into(),
        ..job(id, 4)
    }
}

fn ids(pulled: &[Pulled]) -> Vec<String> {
    pulled
        .iter()
        .map(|p| p.job.as_ref().unwrap().id.clone())
        .collect()
}

impl Rig {
    async fn enqueue(&self, j: &Job) -> String {
        match self.redis.enqueue(POOL, j, LIMITS).await.unwrap() {
            Enqueued::Accepted(id) => id,
            other => panic!("{other:?}"),
        }
    }

    /// Enqueues and hands the job to consumer `worker` (PULL).
    async fn handed(&mut self, j: &Job, worker: &str) -> String {
        let entry = self.enqueue(j).await;
        let pulled = self.redis.pull(POOL, worker, any(1)).await.unwrap();
        assert_eq!(pulled.len(), 1);
        assert_eq!(pulled[0].entry_id, entry);
        entry
    }

    async fn claim(&self, worker: &str, j: &Job) -> Claim {
        self.redis
            .claim(POOL, worker, &[(&j.id, j.deadline_ms)], now_ms(), TTL)
            .await
            .unwrap()[0]
    }

    async fn state(&mut self, j: &str) -> Option<JobState> {
        let s: Option<String> = self.raw.get(self.keys.job_state(POOL, j)).await.unwrap();
        s.map(|s| JobState::parse(&s).unwrap())
    }

    async fn queued_bytes(&mut self) -> i64 {
        let v: Option<i64> = self.raw.get(self.keys.queued_bytes(POOL)).await.unwrap();
        v.unwrap_or(0)
    }

    async fn stream_len(&mut self) -> usize {
        self.raw.xlen(self.keys.jobs(POOL)).await.unwrap()
    }

    async fn pending(&mut self) -> usize {
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(self.keys.jobs(POOL))
            .arg(GROUP)
            .query_async(&mut self.raw)
            .await
            .unwrap();
        match v {
            redis::Value::Array(a) => match &a[0] {
                redis::Value::Int(n) => *n as usize,
                _ => 0,
            },
            _ => 0,
        }
    }
}

#[tokio::test]
async fn enqueue_keeps_both_limits_and_counts_bytes() {
    let mut r = rig().await;
    let limits = QueueLimits {
        max_queue: 2,
        max_queue_bytes: 250,
        ..LIMITS
    };
    let ok = |e: Enqueued| matches!(e, Enqueued::Accepted(_));
    assert!(ok(r
        .redis
        .enqueue(POOL, &job("a", 100), limits)
        .await
        .unwrap()));
    assert_eq!(r.queued_bytes().await, 100);
    // 100 + 200 > 250: refused on bytes, nothing written.
    assert_eq!(
        r.redis.enqueue(POOL, &job("b", 200), limits).await.unwrap(),
        Enqueued::FullBytes { bytes: 100 }
    );
    assert_eq!(r.stream_len().await, 1);
    assert!(ok(r
        .redis
        .enqueue(POOL, &job("c", 100), limits)
        .await
        .unwrap()));
    // Two waiting: refused on the backlog.
    assert_eq!(
        r.redis.enqueue(POOL, &job("d", 1), limits).await.unwrap(),
        Enqueued::Full { backlog: 2 }
    );
    assert_eq!(r.queued_bytes().await, 200);
}

#[tokio::test]
async fn a_full_redis_refuses_new_jobs_but_still_cancels_answers_and_finishes() {
    let mut r = rig().await;
    let a = job("a", 1000);
    r.redis.keep_replies(&a.reply_to, TTL).await.unwrap();
    let entry = r.handed(&a, "w").await;
    let Claim::Run { fence } = r.claim("w", &a).await else {
        panic!()
    };
    let queued = r.enqueue(&job("q", 10)).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut r.raw)
        .await
        .unwrap();
    let before = r.stream_len().await;
    match r.redis.enqueue(POOL, &job("b", 10), LIMITS).await {
        Err(QueueError::OutOfMemory(_)) => {}
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(r.stream_len().await, before, "nothing written");
    // What frees memory, records a decision or answers a running job still runs.
    r.redis
        .cancel(POOL, "q", &queued, TTL, 10, &lane())
        .await
        .unwrap();
    let reply = |seq, event| Reply {
        job: "a".into(),
        fence,
        seq,
        event,
    };
    let replies_before: usize = r.raw.xlen(&a.reply_to).await.unwrap();
    let data = reply(0, ReplyEvent::Data(b"data: {}\n\n".to_vec()));
    assert!(r.redis.send_reply(&a.reply_to, &data).await.unwrap());
    let end = reply(1, ReplyEvent::End);
    assert!(
        r.redis
            .finish(
                POOL,
                &entry,
                &a.reply_to,
                Some(&end),
                "a",
                ("w", fence),
                1000
            )
            .await
            .unwrap()
    );
    let replies: usize = r.raw.xlen(&a.reply_to).await.unwrap();
    // At least both (FINISH was new to Redis: its pipeline ran twice, REPLY included; the
    // gateway drops the repeat by its sequence number).
    assert!(
        replies - replies_before >= 2,
        "both reply events written at maxmemory"
    );
    assert_eq!(r.stream_len().await, 0);
    assert_eq!(r.queued_bytes().await, 0);
}

#[tokio::test]
async fn claim_fences_each_run_and_refuses_what_must_not_run() {
    let mut r = rig().await;
    let a = job("a", 10);
    r.handed(&a, "w1").await;
    assert_eq!(r.claim("w1", &a).await, Claim::Run { fence: 1 });
    assert_eq!(
        r.state("a").await,
        Some(JobState::Started {
            worker: "w1".into(),
            fence: 1
        })
    );
    // Taken over from a dead worker: the next fence.
    assert_eq!(r.claim("w2", &a).await, Claim::Run { fence: 2 });
    // Output committed by run 2, whose worker then died: nobody may run it again.
    let _: () = r
        .raw
        .set_ex(r.keys.job_state(POOL, "a"), "output:w2:2", 60)
        .await
        .unwrap();
    assert_eq!(r.claim("w3", &a).await, Claim::Orphaned { fence: 3 });
    // Cancelled.
    let b = job("b", 10);
    let entry = r.handed(&b, "w1").await;
    r.redis
        .cancel(POOL, "b", &entry, TTL, 10, &lane())
        .await
        .unwrap();
    assert_eq!(r.claim("w1", &b).await, Claim::Cancelled);
    // Past its deadline before anyone started it: expired, and marked so.
    let mut c = job("c", 10);
    c.deadline_ms = now_ms() - 1;
    r.handed(&c, "w1").await;
    assert_eq!(r.claim("w1", &c).await, Claim::Expired);
    assert_eq!(r.state("c").await, Some(JobState::Cancelled));
}

#[tokio::test]
async fn claim_and_expire_exclude_each_other_in_either_order() {
    let mut r = rig().await;
    // Claim first: the deadline check finds it running.
    let a = job("a", 10);
    let ea = r.handed(&a, "w").await;
    assert!(matches!(r.claim("w", &a).await, Claim::Run { .. }));
    assert!(matches!(
        r.redis
            .expire(POOL, "a", &ea, TTL, 10, &lane())
            .await
            .unwrap(),
        Expiry::Running(JobState::Started { .. })
    ));
    // Expire first: the claim refuses it, and the entry is gone.
    let b = job("b", 10);
    let eb = r.handed(&b, "w").await;
    assert_eq!(
        r.redis
            .expire(POOL, "b", &eb, TTL, 10, &lane())
            .await
            .unwrap(),
        Expiry::Expired
    );
    assert_eq!(r.claim("w", &b).await, Claim::Cancelled);
    assert_eq!(r.queued_bytes().await, 10, "b's bytes released, a's kept");
}

#[tokio::test]
async fn only_the_owning_run_commits_finishes_or_requeues() {
    let mut r = rig().await;
    let a = job("a", 10);
    let entry = r.handed(&a, "w1").await;
    let Claim::Run { fence: f1 } = r.claim("w1", &a).await else {
        panic!()
    };
    // w1 stalls; w2 takes the job over (run 2).
    let Claim::Run { fence: f2 } = r.claim("w2", &a).await else {
        panic!()
    };
    let head = |fence| Reply {
        job: "a".into(),
        fence,
        seq: 0,
        event: ReplyEvent::Head {
            worker: "w".into(),
            claimed_ms: 0,
            data: b"data: {}\n\n".to_vec(),
        },
    };
    r.redis.keep_replies(&a.reply_to, TTL).await.unwrap();
    // The stale run cannot commit, finish or requeue.
    assert_eq!(
        r.redis
            .commit_reply(POOL, "w1", f1, &a.reply_to, &head(f1), TTL)
            .await
            .unwrap(),
        Commit::Lost
    );
    assert_eq!(
        r.redis
            .requeue(POOL, &entry, &a, ("w1", f1), TTL)
            .await
            .unwrap(),
        Requeue::Lost
    );
    r.redis
        .finish(POOL, &entry, &a.reply_to, None, "a", ("w1", f1), 10)
        .await
        .unwrap();
    assert_eq!(r.stream_len().await, 1, "the stale finish touched nothing");
    assert_eq!(
        r.redis.watch(POOL, "w1", &[("a", f1)]).await.unwrap(),
        vec![Watch::Lost]
    );
    // The owner can.
    assert_eq!(
        r.redis
            .commit_reply(POOL, "w2", f2, &a.reply_to, &head(f2), TTL)
            .await
            .unwrap(),
        Commit::Committed
    );
    assert_eq!(
        r.redis.watch(POOL, "w2", &[("a", f2)]).await.unwrap(),
        vec![Watch::Mine]
    );
    r.redis
        .finish(POOL, &entry, &a.reply_to, None, "a", ("w2", f2), 10)
        .await
        .unwrap();
    assert_eq!(r.stream_len().await, 0);
    assert_eq!(r.pending().await, 0);
    assert_eq!(r.state("a").await, None);
    assert_eq!(r.queued_bytes().await, 0);
}

#[tokio::test]
async fn commit_reports_a_gone_gateway() {
    let mut r = rig().await;
    let a = job("a", 10);
    r.handed(&a, "w").await;
    let Claim::Run { fence } = r.claim("w", &a).await else {
        panic!()
    };
    let head = Reply {
        job: "a".into(),
        fence,
        seq: 0,
        event: ReplyEvent::End,
    };
    // No reply stream: the gateway is gone.
    assert_eq!(
        r.redis
            .commit_reply(POOL, "w", fence, &a.reply_to, &head, TTL)
            .await
            .unwrap(),
        Commit::GatewayGone
    );
    assert_eq!(
        r.redis.streams_exist(&[&a.reply_to]).await.unwrap(),
        vec![false]
    );
}

#[tokio::test]
async fn requeue_puts_the_job_back_once_and_the_next_run_gets_the_next_fence() {
    let mut r = rig().await;
    let a = job("a", 10);
    let entry = r.handed(&a, "w1").await;
    let Claim::Run { fence } = r.claim("w1", &a).await else {
        panic!()
    };
    let mut again = a.clone();
    again.attempt = 2;
    let Requeue::Queued(new_entry) = r
        .redis
        .requeue(POOL, &entry, &again, ("w1", fence), TTL)
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_ne!(new_entry, entry);
    assert_eq!(r.stream_len().await, 1);
    assert_eq!(r.pending().await, 0);
    assert_eq!(r.queued_bytes().await, 10, "one job's bytes, not two");
    assert_eq!(r.state("a").await, Some(JobState::Queued { fence }));
    // A second requeue of the same run finds it no longer owns the job.
    assert_eq!(
        r.redis
            .requeue(POOL, &entry, &again, ("w1", fence), TTL)
            .await
            .unwrap(),
        Requeue::Lost
    );
    assert_eq!(r.claim("w2", &a).await, Claim::Run { fence: fence + 1 });
}

#[tokio::test]
async fn requeue_of_a_cancelled_job_removes_it() {
    let mut r = rig().await;
    let b = job("b", 10);
    let eb = r.handed(&b, "w1").await;
    let Claim::Run { fence } = r.claim("w1", &b).await else {
        panic!()
    };
    r.redis
        .cancel(POOL, "b", &eb, TTL, 10, &lane())
        .await
        .unwrap();
    assert_eq!(
        r.redis
            .requeue(POOL, &eb, &b, ("w1", fence), TTL)
            .await
            .unwrap(),
        Requeue::Cancelled
    );
    assert_eq!(r.stream_len().await, 0);
    assert_eq!(r.pending().await, 0);
    assert_eq!(r.queued_bytes().await, 0);
}

#[tokio::test]
async fn cancel_removes_an_unstarted_job_and_only_marks_a_running_one() {
    let mut r = rig().await;
    let a = job("a", 10);
    let ea = r.enqueue(&a).await;
    assert_eq!(
        r.redis
            .cancel(POOL, "a", &ea, TTL, 10, &lane())
            .await
            .unwrap(),
        None
    );
    assert_eq!(r.stream_len().await, 0);
    assert_eq!(r.queued_bytes().await, 0);
    // A second cancel does not release the bytes again.
    r.redis
        .cancel(POOL, "a", &ea, TTL, 10, &lane())
        .await
        .unwrap();
    assert_eq!(r.queued_bytes().await, 0);
    // Running: the marker only; the worker sees it and finishes the job.
    let b = job("b", 10);
    let eb = r.handed(&b, "w").await;
    let Claim::Run { fence } = r.claim("w", &b).await else {
        panic!()
    };
    let prev = r
        .redis
        .cancel(POOL, "b", &eb, TTL, 10, &lane())
        .await
        .unwrap();
    assert_eq!(
        prev,
        Some(JobState::Started {
            worker: "w".into(),
            fence
        })
    );
    assert_eq!(r.stream_len().await, 1);
    assert_eq!(
        r.redis.watch(POOL, "w", &[("b", fence)]).await.unwrap(),
        vec![Watch::Cancelled]
    );
    r.redis
        .finish(POOL, &eb, &b.reply_to, None, "b", ("w", fence), 10)
        .await
        .unwrap();
    assert_eq!(r.stream_len().await, 0);
    assert_eq!(r.state("b").await, Some(JobState::Cancelled), "marker kept");
    // Entry unknown (an enqueue still on its way): the marker alone stops any claim.
    let c = job("c", 10);
    r.redis
        .cancel(POOL, "c", "", TTL, 10, &lane())
        .await
        .unwrap();
    r.handed(&c, "w").await;
    assert_eq!(r.claim("w", &c).await, Claim::Cancelled);
}

#[tokio::test]
async fn drop_acknowledges_deletes_and_releases_bytes_once() {
    let mut r = rig().await;
    let a = job("a", 10);
    let ea = r.handed(&a, "w").await;
    r.redis.drop_entry(POOL, &ea, 10).await.unwrap();
    r.redis.drop_entry(POOL, &ea, 10).await.unwrap();
    assert_eq!(r.stream_len().await, 0);
    assert_eq!(r.pending().await, 0);
    assert_eq!(r.queued_bytes().await, 0);
}

fn status(worker: &str) -> WorkerStatus {
    WorkerStatus {
        worker: worker.into(),
        pool: POOL.into(),
        engine_url: String::new(),
        engine_up: true,
        engine_detail: None,
        inflight: 0,
        max_inflight: 1,
        engine_running: None,
        engine_waiting: None,
        kv_cache_usage: None,
        draining: false,
        drain: None,
        paused: false,
        served_model: None,
        revision: None,
        gpus: Vec::new(),
        started_ms: 0,
        heartbeat_ms: 0,
        version: String::new(),
    }
}

/// A heartbeat `age` ago, valid for 5 s.
async fn beat(r: &Rig, worker: &str, age: Duration) {
    let at = now_ms() - age.as_millis() as u64;
    r.redis
        .heartbeat(&status(worker), at, Duration::from_secs(5))
        .await
        .unwrap();
}

/// A reclaim scan of `budget` entries after `cursor` taking up to 10, holding `held`; nothing of
/// the worker's own counts as stranded before an hour.
fn scan<'a>(cursor: &'a str, budget: usize, held: &'a [String]) -> ReclaimScan<'a> {
    ReclaimScan {
        cursor,
        budget,
        want: 10,
        now_ms: now_ms(),
        stranded_after: Duration::from_secs(3600),
        held,
    }
}

#[tokio::test]
async fn reclaim_takes_back_its_own_entries_it_does_not_hold_once_they_are_stranded() {
    let mut r = rig().await;
    beat(&r, "me", Duration::ZERO).await;
    beat(&r, "live", Duration::ZERO).await;
    // `held`: a job the worker runs; `lost`: handed out by a PULL whose reply never came back.
    let held = r.handed(&job("held", 1), "me").await;
    let lost = r.handed(&job("lost", 1), "me").await;
    r.handed(&job("other", 1), "live").await;
    let in_hand = [held.clone()];
    let now = scan("-", 100, &in_hand);
    let young = r.redis.reclaim(POOL, "me", now).await.unwrap();
    assert!(young.jobs.is_empty(), "not stranded before its time");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let fast = ReclaimScan {
        stranded_after: Duration::from_millis(50),
        ..now
    };
    let got = r.redis.reclaim(POOL, "me", fast).await.unwrap();
    let taken: Vec<_> = got.jobs.into_iter().map(|p| p.entry_id).collect();
    assert_eq!(taken, vec![lost.clone()], "only the entry it does not hold");
    assert_eq!(got.stranded, 1);
    // Taken back by XCLAIM: its idle time starts again, so the next scan leaves it alone.
    let again = r.redis.reclaim(POOL, "me", fast).await.unwrap();
    assert!(again.jobs.is_empty(), "{:?}", again.jobs);
}

#[tokio::test]
async fn reclaim_takes_only_dead_workers_jobs_and_resumes_past_a_long_pending_list() {
    let mut r = rig().await;
    beat(&r, "live", Duration::ZERO).await;
    beat(&r, "dead", Duration::from_secs(60)).await;
    beat(&r, "me", Duration::ZERO).await;
    // 30 jobs of a live worker first, then 3 of a dead one, then 2 of mine.
    for i in 0..30 {
        r.handed(&job(&format!("l{i}"), 1), "live").await;
    }
    let mut dead = Vec::new();
    for i in 0..3 {
        dead.push(r.handed(&job(&format!("d{i}"), 1), "dead").await);
    }
    for i in 0..2 {
        r.handed(&job(&format!("m{i}"), 1), "me").await;
    }
    // A scan of 10 entries at a time: the dead worker's jobs lie beyond the first windows.
    let mut cursor = "-".to_owned();
    let mut taken = Vec::new();
    for _ in 0..10 {
        let got = r
            .redis
            .reclaim(POOL, "me", scan(&cursor, 10, &[]))
            .await
            .unwrap();
        taken.extend(got.jobs.into_iter().map(|p| p.entry_id));
        cursor = got.cursor;
        if cursor == "-" {
            break;
        }
    }
    assert_eq!(taken, dead, "exactly the dead worker's jobs");
    let again = r
        .redis
        .reclaim(POOL, "me", scan("-", 100, &[]))
        .await
        .unwrap();
    assert!(again.jobs.is_empty());
    assert_eq!(again.cursor, "-");
    // A worker that was never heard of counts as dead.
    let ghost = r.handed(&job("g", 1), "ghost").await;
    let got = r
        .redis
        .reclaim(POOL, "me", scan("-", 100, &[]))
        .await
        .unwrap();
    assert_eq!(
        got.jobs.into_iter().map(|p| p.entry_id).collect::<Vec<_>>(),
        vec![ghost]
    );
}

#[tokio::test]
async fn heartbeats_mark_workers_live_and_drop_hour_old_ones() {
    let mut r = rig().await;
    beat(&r, "a", Duration::ZERO).await;
    beat(&r, "old", Duration::from_secs(2 * 3600)).await;
    assert_eq!(
        r.redis.live_workers(POOL, now_ms()).await.unwrap(),
        vec!["a".to_owned()]
    );
    // The next beat drops the worker silent for over an hour from both keys.
    beat(&r, "a", Duration::ZERO).await;
    let all: Vec<String> = r
        .raw
        .zrange(Keys::default().workers(POOL), 0, -1)
        .await
        .unwrap();
    assert_eq!(all, vec!["a".to_owned()]);
    let statuses: Vec<String> = r
        .raw
        .hkeys(Keys::default().worker_status(POOL))
        .await
        .unwrap();
    assert_eq!(statuses, vec!["a".to_owned()]);
}

#[tokio::test]
async fn a_drain_reaches_the_worker_through_its_heartbeat_and_outlives_its_death() {
    let r = rig().await;
    let redis = &r.redis;
    let beat = |at| async move {
        redis
            .heartbeat(&status("w"), at, Duration::from_secs(5))
            .await
            .unwrap()
    };
    assert_eq!(beat(now_ms()).await, None);
    let d = ssw_protocol::heartbeat::Drain {
        by: "ops@h".into(),
        reason: "swap".into(),
        at_ms: 7,
    };
    assert_eq!(r.redis.drain(POOL, "w", &d).await.unwrap(), None);
    let later = ssw_protocol::heartbeat::Drain {
        by: "other".into(),
        ..d.clone()
    };
    assert_eq!(
        r.redis.drain(POOL, "w", &later).await.unwrap(),
        Some(d.clone()),
        "the first drain is kept, and said"
    );
    assert_eq!(beat(now_ms()).await, Some(d.clone()));
    assert_eq!(
        r.redis.drains(POOL).await.unwrap(),
        vec![("w".to_owned(), d.clone())]
    );
    // Silent for over an hour, the worker is dropped from the live set: its drain stays.
    beat(now_ms() - 2 * 3_600_000).await;
    r.redis
        .heartbeat(&status("x"), now_ms(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        r.redis
            .worker_statuses(POOL)
            .await
            .unwrap()
            .iter()
            .all(|s| s.worker != "w")
    );
    assert_eq!(r.redis.drains(POOL).await.unwrap().len(), 1);
    assert!(r.redis.resume(POOL, "w").await.unwrap());
    assert!(!r.redis.resume(POOL, "w").await.unwrap());
    assert_eq!(beat(now_ms()).await, None);
}

#[tokio::test]
async fn the_reply_stream_is_created_once_and_its_loss_is_reported() {
    let mut r = rig().await;
    let key = "ssw:{gw:g.1}:replies";
    assert!(!r.redis.keep_replies(key, TTL).await.unwrap(), "created");
    assert!(r.redis.keep_replies(key, TTL).await.unwrap(), "existed");
    let ttl: i64 = r.raw.pttl(key).await.unwrap();
    assert!(ttl > 0 && ttl <= TTL.as_millis() as i64);
    let _: () = r.raw.del(key).await.unwrap();
    assert!(
        !r.redis.keep_replies(key, TTL).await.unwrap(),
        "lost, made again"
    );
}

#[tokio::test]
async fn pool_stats_count_backlog_pending_and_bytes() {
    let mut r = rig().await;
    r.handed(&job("b", 5), "w").await;
    r.enqueue(&job("a", 7)).await;
    let s = r.redis.pool_stats(POOL, now_ms()).await.unwrap();
    assert_eq!((s.backlog, s.pending, s.queued_bytes), (1, 1, 12));
    assert!(s.oldest_waiting_ms.is_some());
}

#[tokio::test]
async fn a_pipelined_script_is_loaded_when_redis_does_not_know_it() {
    // A restarted Redis has an empty script cache; FINISH rides in a pipeline.
    let mut r = rig().await;
    let a = job("a", 10);
    let entry = r.handed(&a, "w").await;
    let Claim::Run { fence } = r.claim("w", &a).await else {
        panic!()
    };
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut r.raw)
        .await
        .unwrap();
    r.redis
        .finish(POOL, &entry, &a.reply_to, None, "a", ("w", fence), 10)
        .await
        .unwrap();
    assert_eq!(r.stream_len().await, 0);
}

/// Pulls one job at a time `n` times; returns the tiers served, in order.
async fn serve_one_by_one(r: &Rig, n: usize) -> Vec<Tier> {
    let mut served = Vec::new();
    for _ in 0..n {
        let p = r.redis.pull(POOL, "w", any(1)).await.unwrap();
        assert_eq!(p.len(), 1);
        served.push(p[0].job.as_ref().unwrap().tier);
    }
    served
}

#[tokio::test]
async fn pull_serves_priority_first_and_every_lower_tier_its_minimum_share() {
    let r = rig().await;
    // Backlogs in every tier, flex and default enqueued first.
    let roomy = QueueLimits {
        max_queue: 1000,
        ..LIMITS
    };
    for tier in [Tier::Flex, Tier::Default, Tier::Priority] {
        for i in 0..100 {
            let j = job_for(&format!("{tier}-{i}"), tier, "t");
            assert!(matches!(
                r.redis.enqueue(POOL, &j, roomy).await.unwrap(),
                Enqueued::Accepted(_)
            ));
        }
    }
    let served = serve_one_by_one(&r, 100).await;
    let count = |t| served.iter().filter(|s| **s == t).count();
    // 6:3:1 with shares 0.3 and 0.1: each lower tier within one pick of its share.
    for (tier, share) in [(Tier::Priority, 60), (Tier::Default, 30), (Tier::Flex, 10)] {
        assert!(count(tier).abs_diff(share) <= 1, "{tier}: {served:?}");
    }
    // And never more than a few picks apart: at most 3 lower-tier picks in a row.
    let longest_wait = served
        .split(|t| *t == Tier::Priority)
        .map(<[Tier]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_wait <= 2, "{served:?}");
    // The first pick is priority although it arrived last: nothing queues it behind others.
    assert_eq!(served[0], Tier::Priority);
    // With priority gone, default is served and flex keeps its share (1 in 10).
    let r = rig().await;
    for tier in [Tier::Flex, Tier::Default] {
        for i in 0..30 {
            r.enqueue(&job_for(&format!("{tier}-{i}"), tier, "t")).await;
        }
    }
    let served = serve_one_by_one(&r, 20).await;
    let flex = served.iter().filter(|s| **s == Tier::Flex).count();
    assert_eq!(flex, 2, "{served:?}");
}

#[tokio::test]
async fn pull_gives_a_lower_tier_no_credit_while_it_has_nothing_waiting() {
    let r = rig().await;
    // Only priority waits for a long while: flex earns nothing meanwhile…
    for i in 0..20 {
        r.enqueue(&job_for(&format!("p{i}"), Tier::Priority, "t"))
            .await;
    }
    serve_one_by_one(&r, 10).await;
    // …so a flex job arriving now still waits for its share, not a banked burst.
    for i in 0..5 {
        r.enqueue(&job_for(&format!("f{i}"), Tier::Flex, "t")).await;
    }
    let served = serve_one_by_one(&r, 10).await;
    assert_eq!(
        served.iter().filter(|s| **s == Tier::Flex).count(),
        1,
        "{served:?}"
    );
}

#[tokio::test]
async fn pull_takes_turns_between_the_tenants_of_a_tier() {
    let r = rig().await;
    for i in 0..50 {
        r.enqueue(&job_for(&format!("a{i}"), Tier::Default, "burst"))
            .await;
    }
    r.enqueue(&job_for("b0", Tier::Default, "steady")).await;
    r.enqueue(&job_for("c0", Tier::Default, "other")).await;
    let first: Vec<String> = ids(&r.redis.pull(POOL, "w", any(3)).await.unwrap());
    // One job per tenant in turn: the burst's 50 do not delay the others by more than one.
    assert_eq!(first, ["a0", "b0", "c0"]);
    let next = ids(&r.redis.pull(POOL, "w", any(2)).await.unwrap());
    assert_eq!(
        next,
        ["a1", "a2"],
        "the others' lanes are empty: the burst goes on"
    );
}

#[tokio::test]
async fn pull_keeps_reserved_slots_for_priority_work() {
    let r = rig().await;
    r.enqueue(&job_for("d", Tier::Default, "t")).await;
    let narrow = PullPolicy {
        below_priority: 0,
        ..any(2)
    };
    assert!(r.redis.pull(POOL, "w", narrow).await.unwrap().is_empty());
    r.enqueue(&job_for("p", Tier::Priority, "t")).await;
    assert_eq!(ids(&r.redis.pull(POOL, "w", narrow).await.unwrap()), ["p"]);
    // Two free slots, one of them reserved: one lower-tier job, and not a second.
    r.enqueue(&job_for("d2", Tier::Default, "t")).await;
    let one_below = PullPolicy {
        below_priority: 1,
        ..any(2)
    };
    assert_eq!(
        ids(&r.redis.pull(POOL, "w", one_below).await.unwrap()),
        ["d"]
    );
}

#[tokio::test]
async fn pulled_jobs_are_this_workers_pending_entries_and_counts_follow() {
    let mut r = rig().await;
    let e = r.enqueue(&job_for("a", Tier::Flex, "t")).await;
    r.enqueue(&job_for("b", Tier::Priority, "u")).await;
    let s = r.redis.pool_stats(POOL, now_ms()).await.unwrap();
    assert_eq!(
        (s.backlog, s.tiers[0].waiting, s.tiers[2].waiting),
        (2, 1, 1)
    );
    assert!(
        s.tiers[2]
            .oldest_waiting_ms
            .is_some_and(|ms| ms <= now_ms())
    );
    let mut tenants = s.tenants.clone();
    tenants.sort();
    assert_eq!(tenants, [("t".to_owned(), 1), ("u".to_owned(), 1)]);
    let pulled = r.redis.pull(POOL, "w", any(5)).await.unwrap();
    assert_eq!(ids(&pulled), ["b", "a"]);
    assert_eq!(pulled[1].entry_id, e);
    assert_eq!(r.pending().await, 2);
    let s = r.redis.pool_stats(POOL, now_ms()).await.unwrap();
    assert_eq!((s.backlog, s.pending, s.oldest_waiting_ms), (0, 2, None));
    assert!(s.tiers.iter().all(|t| t.waiting == 0), "{s:?}");
    // A dead worker's pulled jobs are reclaimable like any pending entry.
    let taken = r
        .redis
        .reclaim(POOL, "w2", scan("-", 100, &[]))
        .await
        .unwrap();
    assert_eq!(
        taken.jobs.len(),
        2,
        "w never heartbeat: its entries are taken"
    );
}

#[tokio::test]
async fn cancel_and_expire_take_a_waiting_job_out_of_its_lane() {
    let r = rig().await;
    let a = job_for("a", Tier::Flex, "t");
    let b = job_for("b", Tier::Flex, "t");
    let ea = r.enqueue(&a).await;
    let eb = r.enqueue(&b).await;
    r.redis
        .cancel(POOL, "a", &ea, TTL, 4, &Lane::of(&a))
        .await
        .unwrap();
    assert_eq!(
        r.redis
            .expire(POOL, "b", &eb, TTL, 4, &Lane::of(&b))
            .await
            .unwrap(),
        Expiry::Expired
    );
    let s = r.redis.pool_stats(POOL, now_ms()).await.unwrap();
    assert_eq!((s.backlog, s.tiers[2].waiting), (0, 0), "{s:?}");
    assert!(r.redis.pull(POOL, "w", any(5)).await.unwrap().is_empty());
    // The tenant left the ring with its empty lane; a new job of it is served normally.
    r.enqueue(&job_for("c", Tier::Flex, "t")).await;
    assert_eq!(ids(&r.redis.pull(POOL, "w", any(5)).await.unwrap()), ["c"]);
}

#[tokio::test]
async fn enqueue_keeps_the_tiers_and_the_tenants_bounds() {
    let r = rig().await;
    let bounded = QueueLimits {
        max_tier: 2,
        max_tenant: 3,
        ..LIMITS
    };
    for i in 0..2 {
        let j = job_for(&format!("f{i}"), Tier::Flex, "t");
        assert!(matches!(
            r.redis.enqueue(POOL, &j, bounded).await.unwrap(),
            Enqueued::Accepted(_)
        ));
    }
    let j = job_for("f2", Tier::Flex, "t");
    assert_eq!(
        r.redis.enqueue(POOL, &j, bounded).await.unwrap(),
        Enqueued::FullTier { waiting: 2 }
    );
    // The tier's bound is the tier's: default still goes in, up to the tenant's bound.
    let j = job_for("d0", Tier::Default, "t");
    assert!(matches!(
        r.redis.enqueue(POOL, &j, bounded).await.unwrap(),
        Enqueued::Accepted(_)
    ));
    let j = job_for("d1", Tier::Default, "t");
    assert_eq!(
        r.redis.enqueue(POOL, &j, bounded).await.unwrap(),
        Enqueued::FullTenant { waiting: 3 }
    );
    let j = job_for("d2", Tier::Default, "other");
    assert!(matches!(
        r.redis.enqueue(POOL, &j, bounded).await.unwrap(),
        Enqueued::Accepted(_)
    ));
}

#[tokio::test]
async fn requeue_puts_a_job_back_in_its_own_lane() {
    let mut r = rig().await;
    let j = job_for("p", Tier::Priority, "t");
    let entry = r.handed(&j, "w").await;
    let Claim::Run { fence } = r.claim("w", &j).await else {
        panic!("claim")
    };
    let again = r
        .redis
        .requeue(POOL, &entry, &j, ("w", fence), TTL)
        .await
        .unwrap();
    assert!(matches!(again, Requeue::Queued(_)), "{again:?}");
    let s = r.redis.pool_stats(POOL, now_ms()).await.unwrap();
    assert_eq!(s.tiers[0].waiting, 1);
    let narrow = PullPolicy {
        below_priority: 0,
        ..any(1)
    };
    assert_eq!(ids(&r.redis.pull(POOL, "w2", narrow).await.unwrap()), ["p"]);
}

#[tokio::test]
async fn idle_workers_are_woken_by_the_work_they_may_take() {
    let r = rig().await;
    let mut conn = r.redis.dedicated().await.unwrap();
    let short = Duration::from_millis(200);
    // Nothing waits: the wait times out.
    assert!(
        !r.redis
            .wait_for_work(&mut conn, POOL, "w", false, short)
            .await
            .unwrap()
    );
    // A default job wakes a worker that may take any tier…
    r.enqueue(&job_for("d", Tier::Default, "t")).await;
    assert!(
        r.redis
            .wait_for_work(&mut conn, POOL, "w", false, short)
            .await
            .unwrap()
    );
    // …but not one whose free slots are all reserved for priority;
    r.enqueue(&job_for("d2", Tier::Default, "t")).await;
    assert!(
        !r.redis
            .wait_for_work(&mut conn, POOL, "w", true, short)
            .await
            .unwrap()
    );
    // a priority job does, and so does the worker itself when a slot comes free.
    r.enqueue(&job_for("p", Tier::Priority, "t")).await;
    assert!(
        r.redis
            .wait_for_work(&mut conn, POOL, "w", true, short)
            .await
            .unwrap()
    );
    r.redis.wake_self(POOL, "w").await.unwrap();
    assert!(
        r.redis
            .wait_for_work(&mut conn, POOL, "w", true, short)
            .await
            .unwrap()
    );
    assert!(
        !r.redis
            .wait_for_work(&mut conn, POOL, "other", true, short)
            .await
            .unwrap(),
        "a worker's own token wakes only it"
    );
}

#[tokio::test]
async fn pull_after_redis_lost_the_group_loses_no_job() {
    let mut r = rig().await;
    // Redis restarted empty: a gateway enqueues before any worker recreated the group.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut r.raw)
        .await
        .unwrap();
    r.enqueue(&job("a", 4)).await;
    assert_eq!(ids(&r.redis.pull(POOL, "w", any(1)).await.unwrap()), ["a"]);
    assert_eq!(r.pending().await, 1);
}

/// An ALLOWANCE call at `now` needing one request of `tokens` tokens (and a slot) of
/// `limits`, from a gateway with `in_use` slots in use and nothing else to give back.
fn need(
    limits: ssw_queue::limits::TenantLimits,
    tokens: u64,
    in_use: u64,
    now: u64,
) -> AllowanceCall {
    AllowanceCall {
        slots_in_use: in_use,
        need: Amounts {
            requests: u64::from(limits.counts_requests()),
            tokens,
            slots: u64::from(limits.max_concurrent > 0),
        },
        lease_until_ms: now + 5_000,
        now_ms: now,
        ..AllowanceCall::default()
    }
}

#[tokio::test]
async fn allowance_charges_all_or_nothing_and_refills_evenly() {
    use ssw_queue::limits::{Limit, TenantLimits};
    let r = rig().await;
    let limits = TenantLimits {
        requests_per_minute: 2,
        tokens_per_minute: 1000,
        max_concurrent: 0,
        ..Default::default()
    };
    let ask = |t: &'static str, tokens: u64, at: u64| {
        let redis = r.redis.clone();
        async move {
            redis
                .allowance(t, limits, "gw", &need(limits, tokens, 0, at))
                .await
                .unwrap()
        }
    };
    let t0 = now_ms();
    let d = ask("t", 400, t0).await;
    assert_eq!((d.refused, d.requests_left, d.tokens_left), (None, 1, 600));
    assert_eq!(
        d.granted,
        Amounts {
            requests: 1,
            tokens: 400,
            slots: 0
        }
    );
    assert_eq!(
        d.requests_reset,
        Duration::from_secs(30),
        "one request refills in 30 s"
    );
    // Over the tokens: refused, and nothing charged (the request bucket keeps its one).
    let d = ask("t", 700, t0).await;
    assert_eq!(d.refused, Some(Limit::Tokens));
    assert_eq!(d.granted, Amounts::default());
    assert_eq!(
        d.retry_after,
        Duration::from_secs(6),
        "100 tokens at 1000/min"
    );
    assert_eq!(d.requests_left, 1);
    let d = ask("t", 100, t0).await;
    assert_eq!((d.refused, d.requests_left), (None, 0));
    let d = ask("t", 1, t0).await;
    assert_eq!(
        (d.refused, d.retry_after),
        (Some(Limit::Requests), Duration::from_secs(30))
    );
    // 30 s later one request has refilled; another tenant was never touched.
    assert_eq!(ask("t", 1, t0 + 30_000).await.refused, None);
    let d = ask("u", 1, t0).await;
    assert_eq!((d.refused, d.requests_left), (None, 1));
}

#[tokio::test]
async fn daily_quotas_count_over_the_utc_day_and_start_again_at_midnight() {
    use ssw_queue::limits::{Limit, TenantLimits};
    let r = rig().await;
    let limits = TenantLimits {
        requests_per_minute: 100,
        requests_per_day: 3,
        tokens_per_day: 1_000,
        ..Default::default()
    };
    // 10:00 UTC on some day: 14 h until the quotas start again.
    let midnight = (now_ms() / 86_400_000 + 1) * 86_400_000;
    let today = midnight / 86_400_000 - 1;
    let t0 = midnight - 14 * 3_600_000;
    let mut call = need(limits, 100, 0, t0);
    call.more.requests = 10;
    call.more.tokens = 10_000;
    let d = r.redis.allowance("t", limits, "gw", &call).await.unwrap();
    assert_eq!(d.refused, None);
    assert_eq!(
        (d.granted.requests, d.granted.tokens),
        (3, 750),
        "ahead: what the day holds above its last quarter (and never more than the minute's)"
    );
    assert_eq!((d.requests_left_today, d.tokens_left_today), (0, 250));
    assert_eq!(d.day_reset, Duration::from_secs(14 * 3_600));
    // The tick gives back 1 request and 650 tokens, today's.
    let tick = AllowanceCall {
        requests_back: 1,
        tokens_back: 650,
        day: today,
        requests_back_day: 1,
        tokens_back_day: 650,
        now_ms: t0 + 100,
        lease_until_ms: t0 + 5_000,
        ..AllowanceCall::default()
    };
    let d = r.redis.allowance("t", limits, "gw", &tick).await.unwrap();
    assert_eq!((d.requests_left_today, d.tokens_left_today), (1, 900));
    let d = r
        .redis
        .allowance("t", limits, "gw", &need(limits, 950, 0, t0 + 200))
        .await
        .unwrap();
    assert_eq!(
        d.refused,
        Some(Limit::TokensPerDay),
        "950 of 900 tokens left"
    );
    assert_eq!(d.retry_after, Duration::from_millis(14 * 3_600_000 - 200));
    assert_eq!(d.granted, Amounts::default());
    let d = r
        .redis
        .allowance("t", limits, "gw", &need(limits, 100, 0, t0 + 300))
        .await
        .unwrap();
    assert_eq!((d.refused, d.requests_left_today), (None, 0));
    // The requests are spent, although the minute's bucket holds more.
    let d = r
        .redis
        .allowance("t", limits, "gw", &need(limits, 1, 0, t0 + 400))
        .await
        .unwrap();
    assert_eq!(d.refused, Some(Limit::RequestsPerDay));
    assert!(
        d.requests_left > 90,
        "the minute allows it: {}",
        d.requests_left
    );
    // A give-back of yesterday's grants does not reach today's count.
    let late = AllowanceCall {
        day: today - 1,
        requests_back_day: 1,
        tokens_back_day: 500,
        now_ms: t0 + 450,
        lease_until_ms: t0 + 5_000,
        ..AllowanceCall::default()
    };
    let d = r.redis.allowance("t", limits, "gw", &late).await.unwrap();
    assert_eq!((d.requests_left_today, d.tokens_left_today), (0, 800));
    // Settled usage beyond the estimate counts against today's tokens.
    let debt = AllowanceCall {
        tokens_back: -10_000,
        day: today,
        tokens_back_day: -10_000,
        now_ms: t0 + 500,
        lease_until_ms: t0 + 5_000,
        ..AllowanceCall::default()
    };
    let d = r.redis.allowance("t", limits, "gw", &debt).await.unwrap();
    assert_eq!(d.tokens_left_today, 0);
    // A gateway whose clock lags (still yesterday by it) counts on the day already begun.
    let d = r
        .redis
        .allowance(
            "t",
            limits,
            "gw",
            &need(limits, 1, 0, midnight - 86_400_000 - 1_000),
        )
        .await
        .unwrap();
    assert_eq!(
        d.refused,
        Some(Limit::RequestsPerDay),
        "yesterday's count is not restarted"
    );
    // A new UTC day: both quotas are whole again, whatever yesterday owed; a request larger
    // than the day's tokens is served then (into debt), not refused for ever.
    let d = r
        .redis
        .allowance("t", limits, "gw", &need(limits, 5_000, 0, midnight + 1))
        .await
        .unwrap();
    assert_eq!(d.refused, None);
    assert_eq!((d.requests_left_today, d.tokens_left_today), (2, 0));
    assert_eq!(d.day_reset, Duration::from_millis(86_400_000 - 1));
    // The key lives until the day ends, not longer.
    let mut c = r.raw.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(r.keys.tenant_day("t"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        ttl > 86_400_000 - 60_000 && ttl <= 86_400_000 + 60_000,
        "{ttl}"
    );
}

#[tokio::test]
async fn allowance_grants_ahead_only_what_the_buckets_hold_and_takes_back_what_was_not_used() {
    let r = rig().await;
    let limits = ssw_queue::limits::TenantLimits {
        requests_per_minute: 100,
        tokens_per_minute: 10_000,
        max_concurrent: 10,
        ..Default::default()
    };
    let t0 = now_ms();
    // One request and 30 more ahead: the buckets hold 99 requests and 9 slots beyond it.
    let mut call = need(limits, 100, 0, t0);
    call.more = Amounts {
        requests: 30,
        tokens: 3_000,
        slots: 30,
    };
    let d = r.redis.allowance("t", limits, "gw1", &call).await.unwrap();
    assert_eq!(d.refused, None);
    assert_eq!(
        d.granted,
        Amounts {
            requests: 31,
            tokens: 3_100,
            slots: 10
        },
        "more is granted as far as the buckets allow"
    );
    assert_eq!((d.requests_left, d.tokens_left), (69, 6_900));
    // Another gateway finds the slots taken: refused, nothing charged.
    let d = r
        .redis
        .allowance("t", limits, "gw2", &need(limits, 100, 0, t0))
        .await
        .unwrap();
    assert_eq!(d.refused, Some(ssw_queue::limits::Limit::Concurrent));
    assert_eq!((d.requests_left, d.tokens_left), (69, 6_900));
    // gw1's tick: it used 1 request, 2 slots and 150 tokens of its 3 100; the rest goes back.
    let tick = AllowanceCall {
        requests_back: 30,
        tokens_back: 2_950,
        slots_in_use: 2,
        lease_until_ms: t0 + 5_000,
        now_ms: t0,
        ..AllowanceCall::default()
    };
    let d = r.redis.allowance("t", limits, "gw1", &tick).await.unwrap();
    assert_eq!((d.refused, d.granted), (None, Amounts::default()));
    assert_eq!((d.requests_left, d.tokens_left), (99, 9_850));
    // Now gw2 gets a slot, and at most the 8 free ones ahead.
    let mut call = need(limits, 100, 0, t0);
    call.more.slots = 20;
    call.lease_until_ms = t0 + 60_000;
    let d = r.redis.allowance("t", limits, "gw2", &call).await.unwrap();
    assert_eq!((d.refused, d.granted.slots), (None, 8));
    let d = r
        .redis
        .allowance("t", limits, "gw3", &need(limits, 100, 0, t0))
        .await
        .unwrap();
    assert_eq!(d.refused, Some(ssw_queue::limits::Limit::Concurrent));
    // gw1 dies: its lease lapses after 5 s and its 2 slots are free again.
    let at = t0 + 6_000;
    let d = r
        .redis
        .allowance("t", limits, "gw3", &need(limits, 100, 0, at))
        .await
        .unwrap();
    assert_eq!(d.refused, None, "gw1's slots lapsed with its lease");
    // A tick may also settle more tokens than were charged: the bucket goes into debt.
    let debt = AllowanceCall {
        tokens_back: -20_000,
        lease_until_ms: at + 5_000,
        now_ms: at,
        ..AllowanceCall::default()
    };
    let d = r.redis.allowance("t", limits, "gw3", &debt).await.unwrap();
    assert_eq!(d.tokens_left, 0);
    let d = r
        .redis
        .allowance("t", limits, "gw3", &need(limits, 10, 0, at))
        .await
        .unwrap();
    assert_eq!(d.refused, Some(ssw_queue::limits::Limit::Tokens));
    // A request larger than a minute's tokens, where a minute does not divide evenly: it
    // waits for a full bucket, then runs it into debt (the key's TTL grows by the refill
    // time, a whole number of ms).
    let odd = ssw_queue::limits::TenantLimits {
        requests_per_minute: 0,
        tokens_per_minute: 7_000,
        max_concurrent: 0,
        ..Default::default()
    };
    let d = r
        .redis
        .allowance("odd", odd, "gw1", &need(odd, 8_000, 0, at))
        .await
        .unwrap();
    assert_eq!(
        (d.refused, d.granted.tokens, d.tokens_left),
        (None, 8_000, 0)
    );
    let settle = AllowanceCall {
        tokens_back: -2_345,
        lease_until_ms: at + 5_000,
        now_ms: at + 7,
        ..AllowanceCall::default()
    };
    r.redis.allowance("odd", odd, "gw1", &settle).await.unwrap();
    let mut raw = r.raw.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(r.keys.tenant_tpm("odd"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(ttl > 120_000, "{ttl}: the debt keeps the bucket");
}

#[tokio::test]
async fn publish_routing_is_compare_and_swap_and_keeps_the_last_versions() {
    let mut r = rig().await;
    use ssw_queue::routing::{KEEP_VERSIONS, Publish};
    assert_eq!(r.redis.routing_version().await.unwrap(), 0);
    assert_eq!(
        r.redis.publish_routing(0, "one").await.unwrap(),
        Publish::Published(1)
    );
    // Two writers based on version 1: the first wins, the second publishes nothing.
    assert_eq!(
        r.redis.publish_routing(1, "two").await.unwrap(),
        Publish::Published(2)
    );
    assert_eq!(
        r.redis.publish_routing(1, "rival").await.unwrap(),
        Publish::Conflict { in_force: 2 }
    );
    assert_eq!(r.redis.routing_version().await.unwrap(), 2);
    assert_eq!(
        r.redis.routing_document(2).await.unwrap().as_deref(),
        Some("two")
    );
    // Restore writes only into an empty Redis.
    assert_eq!(
        r.redis.restore_routing(7, "held").await.unwrap(),
        Publish::Conflict { in_force: 2 }
    );
    // Only the last KEEP_VERSIONS documents stay.
    for v in 2..KEEP_VERSIONS + 5 {
        assert_eq!(
            r.redis
                .publish_routing(v, &format!("v{}", v + 1))
                .await
                .unwrap(),
            Publish::Published(v + 1)
        );
    }
    let kept = r.redis.routing_documents().await.unwrap();
    assert_eq!(kept.len() as u64, KEEP_VERSIONS);
    assert_eq!(kept.first().unwrap().0, 6);
    assert_eq!(
        kept.last().unwrap(),
        &(KEEP_VERSIONS + 5, format!("v{}", KEEP_VERSIONS + 5))
    );
    // Redis restarted empty: a gateway's version comes back under its number, and the count
    // goes on from it.
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut r.raw)
        .await
        .unwrap();
    assert_eq!(
        r.redis.restore_routing(42, "held").await.unwrap(),
        Publish::Published(42)
    );
    assert_eq!(
        r.redis.restore_routing(41, "older").await.unwrap(),
        Publish::Conflict { in_force: 42 }
    );
    assert_eq!(
        r.redis.publish_routing(42, "next").await.unwrap(),
        Publish::Published(43)
    );
    let key: String = r.keys.routing_version();
    assert!(key.contains("{routing}"), "one hash slot: {key}");
}

#[tokio::test]
async fn a_pull_after_a_wake_up_takes_a_token_per_extra_job_and_an_empty_pull_writes_nothing() {
    let mut r = rig().await;
    let tokens = |r: &mut Rig, list: &str| {
        let key = r.keys.wake(POOL, list);
        let mut c = r.raw.clone();
        async move { c.llen::<_, u64>(key).await.unwrap() }
    };
    for i in 0..5 {
        r.enqueue(&job_for(&format!("d{i}"), Tier::Default, "t"))
            .await;
    }
    r.enqueue(&job_for("p0", Tier::Priority, "t")).await;
    assert_eq!(
        (
            tokens(&mut r, "any").await,
            tokens(&mut r, "priority").await
        ),
        (5, 1)
    );
    // A PULL without a wake-up takes no token (a job's token may be on its way to a worker's
    // BLPOP: taking another would leave a waiting job without one).
    assert_eq!(r.redis.pull(POOL, "w", any(2)).await.unwrap().len(), 2);
    assert_eq!(
        (
            tokens(&mut r, "any").await,
            tokens(&mut r, "priority").await
        ),
        (5, 1)
    );
    // A wake-up (BLPOP: the priority token, first in its list order) and a PULL of three: two
    // more tokens go.
    let mut conn = r.redis.dedicated().await.unwrap();
    let got = r
        .redis
        .wait_then_pull(
            &mut conn,
            POOL,
            "w",
            any(3),
            Wait::Any,
            Duration::from_secs(1),
        )
        .await
        .unwrap()
        .jobs;
    assert_eq!(got.len(), 3);
    assert_eq!(
        (
            tokens(&mut r, "any").await,
            tokens(&mut r, "priority").await
        ),
        (3, 0)
    );
    // One job left and three tokens: never fewer tokens than waiting jobs.
    // Nothing the policy allows: nothing written (no consumer, no count or credit).
    let before: Vec<(String, String)> = r.raw.hgetall(r.keys.waiting(POOL)).await.unwrap();
    let narrow = PullPolicy {
        below_priority: 0,
        ..any(5)
    };
    assert!(r.redis.pull(POOL, "w2", narrow).await.unwrap().is_empty());
    let after: Vec<(String, String)> = r.raw.hgetall(r.keys.waiting(POOL)).await.unwrap();
    assert_eq!(before, after, "an empty PULL wrote the counts");
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(r.keys.jobs(POOL))
        .arg(GROUP)
        .query_async(&mut r.raw)
        .await
        .unwrap();
    assert_eq!(consumers.len(), 1, "only w, which took jobs, is a consumer");
}

#[tokio::test]
async fn shadow_copies_are_taken_only_when_nothing_else_waits_and_stay_out_of_the_backlog() {
    let r = rig().await;
    r.enqueue(&job_for("s0", Tier::Shadow, "~shadow")).await;
    r.enqueue(&job_for("s1", Tier::Shadow, "~shadow")).await;
    // Shadow copies are not the pool's backlog: a pool bound of one still takes a real job.
    let one = QueueLimits {
        max_queue: 1,
        ..LIMITS
    };
    assert!(matches!(
        r.redis
            .enqueue(POOL, &job_for("d0", Tier::Default, "t"), one)
            .await
            .unwrap(),
        Enqueued::Accepted(_)
    ));
    r.enqueue(&job_for("f0", Tier::Flex, "t")).await;
    // With the reserve's slots only (nothing below priority), no shadow copy either.
    let narrow = PullPolicy {
        below_priority: 0,
        ..any(5)
    };
    assert!(r.redis.pull(POOL, "w", narrow).await.unwrap().is_empty());
    // Every other tier first, whatever the shares; then the copies.
    let mut order = Vec::new();
    for _ in 0..4 {
        order.extend(ids(&r.redis.pull(POOL, "w", any(1)).await.unwrap()));
    }
    assert_eq!(order, ["d0", "f0", "s0", "s1"]);
    // A copy behind real work waits: one real job arrives, it goes first.
    r.enqueue(&job_for("s2", Tier::Shadow, "~shadow")).await;
    r.enqueue(&job_for("f1", Tier::Flex, "t")).await;
    assert_eq!(ids(&r.redis.pull(POOL, "w", any(1)).await.unwrap()), ["f1"]);
    // Its own bound: the shadow lane's, apart from the pool's.
    let shadow_bound = QueueLimits {
        max_tier: 1,
        ..LIMITS
    };
    assert!(matches!(
        r.redis
            .enqueue(POOL, &job_for("s3", Tier::Shadow, "~shadow"), shadow_bound)
            .await
            .unwrap(),
        Enqueued::FullTier { waiting: 1 }
    ));
}

#[tokio::test]
async fn lease_is_held_by_one_caller_renewed_by_it_and_free_once_it_lapses() {
    let r = rig().await;
    let key = r.keys.route_guard("npc-dialogue");
    assert!(
        key.contains("{r:npc-dialogue}"),
        "one slot per route: {key}"
    );
    let ms = Duration::from_millis(300);
    assert!(r.redis.lease(&key, "gw-a", ms).await.unwrap());
    assert!(!r.redis.lease(&key, "gw-b", ms).await.unwrap(), "held by a");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        r.redis.lease(&key, "gw-a", ms).await.unwrap(),
        "renewed by its holder"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !r.redis.lease(&key, "gw-b", ms).await.unwrap(),
        "still a's after the renewal"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        r.redis.lease(&key, "gw-b", ms).await.unwrap(),
        "a's lapsed: b takes it"
    );
}

#[tokio::test]
async fn fast_push_bounds_the_lane_and_a_worker_pops_each_job_once() {
    use ssw_queue::fast::FAST_LANE_MAX;
    let mut r = rig().await;
    let mut first = job("fast-0", 10);
    first.endpoint = ssw_protocol::job::Endpoint::Tokenize;
    assert!(r.redis.fast_push(POOL, &first).await.unwrap());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(r.keys.fast(POOL))
        .query_async(&mut r.raw)
        .await
        .unwrap();
    assert!(ttl > 60_000, "the lane outlives its jobs' deadlines: {ttl}");
    for i in 1..FAST_LANE_MAX {
        assert!(
            r.redis
                .fast_push(POOL, &job(&format!("fast-{i}"), 10))
                .await
                .unwrap()
        );
    }
    assert!(
        !r.redis
            .fast_push(POOL, &job("one-too-many", 10))
            .await
            .unwrap(),
        "the lane is full"
    );
    let mut conn = r.redis.dedicated().await.unwrap();
    let popped = conn
        .fast_pop(r.redis.keys(), POOL, Duration::from_millis(100))
        .await
        .unwrap()
        .expect("a job")
        .expect("decodable");
    assert_eq!(popped, first, "first in, first out, every field intact");
    // Taken once: the next pop gets the next job, and a push fits again.
    let next = conn
        .fast_pop(r.redis.keys(), POOL, Duration::from_millis(100))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.id, "fast-1");
    assert!(r.redis.fast_push(POOL, &job("fits", 10)).await.unwrap());
}

#[tokio::test]
async fn pull_prefers_resident_adapters_and_takes_a_starved_one_first() {
    use ssw_queue::consumer::Adapters;
    let r = rig().await;
    // b, a, b, a, … for one tenant, and a base-model job last.
    for i in 0..6 {
        let mut j = job_for(&format!("j{i}"), Tier::Default, "t");
        j.adapter = if i % 2 == 0 { "b" } else { "a" }.into();
        r.enqueue(&j).await;
    }
    r.enqueue(&job_for("base", Tier::Default, "t")).await;
    let policy = |resident, wait_ms| PullPolicy {
        adapters: Adapters {
            resident,
            wait: Duration::from_millis(wait_ms),
            room: 1,
        },
        ..any(3)
    };
    // `a` is resident: its jobs and the base model's (no swap either) first, in ring turns,
    // although b's came first.
    let got = ids(&r.redis.pull(POOL, "w", policy("a", 60_000)).await.unwrap());
    assert_eq!(got, ["j1", "base", "j3"]);
    // Then the rest of `a`, and only then `b`.
    let got = ids(&r.redis.pull(POOL, "w", policy("a", 60_000)).await.unwrap());
    assert_eq!(got, ["j5", "j0", "j2"]);
    // A job past the bound goes first, though another adapter is resident.
    let mut late = job_for("late", Tier::Default, "u");
    late.adapter = "c".into();
    r.enqueue(&late).await;
    let mut fresh = job_for("fresh", Tier::Default, "t");
    fresh.adapter = "b".into();
    r.enqueue(&fresh).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let got = ids(&r.redis.pull(POOL, "w", policy("b", 20)).await.unwrap());
    assert_eq!(got[0], "late", "{got:?}");
}

#[tokio::test]
async fn a_tier_blocked_on_adapters_keeps_its_jobs_and_its_share_for_another_worker() {
    use ssw_queue::consumer::Adapters;
    let mut r = rig().await;
    for i in 0..3 {
        let mut j = job_for(&format!("z{i}"), Tier::Flex, "t");
        j.adapter = "z".into();
        r.enqueue(&j).await;
    }
    for i in 0..3 {
        r.enqueue(&job_for(&format!("p{i}"), Tier::Priority, "t"))
            .await;
    }
    // This worker's engine holds `a` and has no room: the flex jobs are not for it.
    let full = PullPolicy {
        adapters: Adapters {
            resident: "a",
            wait: Duration::from_secs(60),
            room: 0,
        },
        // Flex earns a pick every second one: it is picked (and found blocked) in this PULL.
        flex_share: 0.5,
        ..any(6)
    };
    let got = ids(&r.redis.pull(POOL, "w1", full).await.unwrap());
    assert_eq!(got, ["p0", "p1", "p2"]);
    let w: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(r.keys.waiting(POOL))
        .arg("flex")
        .arg("credit:flex")
        .query_async(&mut r.raw)
        .await
        .unwrap();
    assert_eq!(w[0].as_deref(), Some("3"), "still waiting, counted");
    assert!(
        w[1].as_deref()
            .is_some_and(|c| c.parse::<i64>().unwrap() > 0),
        "flex keeps the share it earned: {w:?}"
    );
    // A worker with room takes them.
    let room = PullPolicy {
        adapters: Adapters {
            resident: "",
            wait: Duration::from_secs(60),
            room: 1,
        },
        ..any(6)
    };
    assert_eq!(
        ids(&r.redis.pull(POOL, "w2", room).await.unwrap()),
        ["z0", "z1", "z2"]
    );
}

#[tokio::test]
async fn a_pull_held_back_for_adapter_room_says_so_and_gives_back_the_token_it_woke_on() {
    use ssw_queue::consumer::Adapters;
    let mut r = rig().await;
    for i in 0..3 {
        let mut j = job_for(&format!("z{i}"), Tier::Default, "t");
        j.adapter = "z".into();
        r.enqueue(&j).await;
    }
    let mut p = job_for("pz", Tier::Priority, "t");
    p.adapter = "z".into();
    r.enqueue(&p).await;
    let tokens = |r: &mut Rig| {
        let keys = [r.keys.wake(POOL, "any"), r.keys.wake(POOL, "priority")];
        let mut c = r.raw.clone();
        async move {
            (
                c.llen::<_, u64>(&keys[0]).await.unwrap(),
                c.llen::<_, u64>(&keys[1]).await.unwrap(),
            )
        }
    };
    assert_eq!(tokens(&mut r).await, (3, 1));
    let full = PullPolicy {
        adapters: Adapters {
            resident: "a",
            wait: Duration::from_secs(60),
            room: 0,
        },
        ..any(4)
    };
    let got = r.redis.pull_batch(POOL, "w1", full).await.unwrap();
    assert!(got.jobs.is_empty() && got.held_back, "{got:?}");
    // Woken by a token for a job it cannot take (the priority one's, first in BLPOP's order,
    // then one of `any`): each goes back to its own list, for a worker that can take it.
    let mut conn = r.redis.dedicated().await.unwrap();
    for _ in 0..2 {
        let got = r
            .redis
            .wait_then_pull(
                &mut conn,
                POOL,
                "w1",
                full,
                Wait::Any,
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert!(got.jobs.is_empty() && got.held_back);
        assert_eq!(
            tokens(&mut r).await,
            (3, 1),
            "one token per waiting job still"
        );
    }
    // Held back, the worker waits on its own list: no token taken, none added; its own
    // wake-up (a job of its ending) is not given back.
    let t0 = std::time::Instant::now();
    let got = r
        .redis
        .wait_then_pull(
            &mut conn,
            POOL,
            "w1",
            full,
            Wait::Own,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
    assert!(got.held_back && t0.elapsed() >= Duration::from_millis(150));
    r.redis.wake_self(POOL, "w1").await.unwrap();
    let got = r
        .redis
        .wait_then_pull(
            &mut conn,
            POOL,
            "w1",
            full,
            Wait::Own,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(got.held_back);
    assert_eq!(tokens(&mut r).await, (3, 1));
    let own: u64 = r.raw.llen(r.keys.wake(POOL, "worker:w1")).await.unwrap();
    assert_eq!(own, 0);
    // A worker with room takes them all; an empty queue is not held back.
    let room = PullPolicy {
        adapters: Adapters {
            resident: "",
            wait: Duration::from_secs(60),
            room: 1,
        },
        ..any(4)
    };
    assert_eq!(r.redis.pull(POOL, "w2", room).await.unwrap().len(), 4);
    let got = r.redis.pull_batch(POOL, "w1", full).await.unwrap();
    assert!(got.jobs.is_empty() && !got.held_back);
}
