//! The reply demultiplexer: one reader per gateway instance.
//!
//! Workers append events to this gateway's reply stream; one task reads it in order
//! (`XREAD BLOCK`) on a dedicated connection and hands each event to the request it belongs to.
//! After a dropped connection it reconnects with backoff and resumes after the last id it read,
//! so nothing is skipped. If the stream itself has vanished (Redis restarted without its data),
//! every request in flight is told at once instead of waiting for a timeout.
//!
//! What waits for a request is bounded: the streamed bytes held for one request (its client
//! reading more slowly than its engine writes) may not exceed `gateway.reply_buffer`; past it
//! the request is told it overflowed and stops being routed, so its stream ends with
//! `client_too_slow` and its job is cancelled. One reader never waits for a slow request.
//!
//! Each request's route keeps the run it listens to (the fence of the newest run heard from)
//! and the next event number of that run ([`Replies::dispatch`]): events of an older run are
//! dropped (a worker that was only slow cannot interleave with the one that took its job
//! over), repeats are dropped, and a gap once output has reached the client fails the request
//! instead of handing it a stream with a hole. A newer run after output also fails it: an
//! answer is never spliced from two runs.
//!
//! If Redis restarts and loses its data (the reply stream is gone; a Redis restarted from its
//! AOF still has it, and then nothing is resubmitted), requests whose client has seen nothing are told to enqueue their job again; the
//! others fail with `queue_unavailable`. A request whose answer is streaming from a worker that
//! stopped heartbeating fails at once ([`Replies::workers_gone`]) instead of after the stall
//! timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssw_protocol::error::ErrorCode;
use ssw_protocol::reply::{Reply, ReplyEvent};
use ssw_queue::Redis;
use ssw_queue::producer::ReplyReader;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// What reaches a request.
#[derive(Debug)]
pub enum Delivery {
    /// An event of its job.
    Event(ReplyEvent),
    /// More streamed bytes were waiting for it than `gateway.reply_buffer`: nothing more
    /// will come.
    Overflow,
    /// Redis lost the job (it restarted) before any of its answer reached the client: enqueue
    /// it again. Nothing more comes on this route.
    Resubmit,
}

/// Where events of one request go.
#[derive(Debug)]
pub struct EventRx {
    rx: mpsc::UnboundedReceiver<Delivery>,
    held: Arc<AtomicUsize>,
}

impl EventRx {
    /// The next delivery; `None` when the table dropped the route (the reply stream is gone).
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        if let Delivery::Event(ReplyEvent::Data(data)) = &d {
            self.held.fetch_sub(data.len(), Ordering::Relaxed);
        }
        Some(d)
    }
}

#[derive(Debug)]
struct Route {
    tx: mpsc::UnboundedSender<Delivery>,
    /// Streamed bytes sent and not yet taken.
    held: Arc<AtomicUsize>,
    pool: Arc<str>,
    /// The newest run heard from (0: none yet).
    fence: u32,
    /// That run's next event number.
    next_seq: u32,
    /// Output (a head or data) has been passed on to the client.
    delivered: bool,
    /// The worker whose output was passed on.
    worker: Option<String>,
}

impl Route {
    fn fail(&self, code: ErrorCode, message: &str) {
        let _ = self.tx.send(Delivery::Event(ReplyEvent::fail(
            code,
            String::new(),
            message,
        )));
    }
}

/// What the fence and sequence checks make of an event.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Deliver,
    Drop(&'static str),
    /// The request cannot be answered correctly any more.
    Fail(&'static str),
}

fn check(route: &mut Route, reply: &Reply) -> Verdict {
    if reply.fence == 0 {
        // From a worker before 0.2: nothing to check.
        return Verdict::Deliver;
    }
    if reply.fence < route.fence {
        return Verdict::Drop("stale");
    }
    if reply.fence > route.fence {
        if route.delivered {
            return Verdict::Fail("the worker answering this request was replaced mid-answer");
        }
        route.fence = reply.fence;
        route.next_seq = 0;
    }
    if reply.seq < route.next_seq {
        return Verdict::Drop("duplicate");
    }
    let output = matches!(reply.event, ReplyEvent::Data(_) | ReplyEvent::End);
    if reply.seq > route.next_seq && (route.delivered || output) {
        metrics::event_dropped("gap");
        return Verdict::Fail("part of the answer was lost on the way");
    }
    route.next_seq = reply.seq + 1;
    Verdict::Deliver
}

/// The table of requests in flight on this gateway.
#[derive(Debug)]
pub struct Replies {
    key: String,
    routes: Mutex<HashMap<String, Route>>,
    open: AtomicBool,
    /// Most streamed bytes held for one request.
    budget: usize,
}

impl Replies {
    /// A table for the reply stream `key`, holding at most `budget` streamed bytes per
    /// request.
    pub fn new(key: String, budget: usize) -> Self {
        Self {
            key,
            routes: Mutex::new(HashMap::new()),
            open: AtomicBool::new(false),
            budget,
        }
    }

    /// Whether the reply stream has been created: workers append with `NOMKSTREAM` (a gateway
    /// that is gone must not get its stream back), so a job enqueued before it exists would
    /// have its answer dropped. No request is admitted until then.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn set_open(&self) {
        self.open.store(true, Ordering::Release);
    }

    /// The reply stream key, written into every job.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Starts routing events of `job` (of `pool`) to the returned receiver.
    pub fn register(&self, job: &str, pool: Arc<str>) -> EventRx {
        let (tx, rx) = mpsc::unbounded_channel();
        let held = Arc::new(AtomicUsize::new(0));
        self.lock().insert(
            job.to_owned(),
            Route {
                tx,
                held: held.clone(),
                pool,
                fence: 0,
                next_seq: 0,
                delivered: false,
                worker: None,
            },
        );
        EventRx { rx, held }
    }

    /// Stops routing events of `job`.
    pub fn unregister(&self, job: &str) {
        self.lock().remove(job);
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an event to its request, after the fence and sequence checks (module docs); a
    /// request whose held stream would exceed the budget is told so instead and no longer
    /// routed.
    pub fn dispatch(&self, reply: Reply) {
        let mut routes = self.lock();
        let Some(route) = routes.get_mut(&reply.job) else {
            return;
        };
        match check(route, &reply) {
            Verdict::Deliver => {}
            Verdict::Drop(why) => {
                metrics::event_dropped(why);
                return;
            }
            Verdict::Fail(message) => {
                tracing::warn!(job = %reply.job, fence = reply.fence, seq = reply.seq, "{message}");
                route.fail(ErrorCode::UpstreamError, message);
                routes.remove(&reply.job);
                return;
            }
        }
        match &reply.event {
            ReplyEvent::Head { worker, .. } => {
                route.delivered = true;
                route.worker = Some(worker.clone());
            }
            ReplyEvent::Data(_) => route.delivered = true,
            _ => {}
        }
        if let ReplyEvent::Data(data) = &reply.event {
            let held = route.held.fetch_add(data.len(), Ordering::Relaxed) + data.len();
            if held > self.budget {
                let _ = route.tx.send(Delivery::Overflow);
                routes.remove(&reply.job);
                return;
            }
        }
        let _ = route.tx.send(Delivery::Event(reply.event));
    }

    /// Fails every request in flight with `code` (their replies can no longer arrive).
    pub fn fail_all(&self, code: ErrorCode, message: &str) {
        for route in self.lock().values() {
            route.fail(code, message);
        }
    }

    /// Redis restarted and lost the jobs: requests whose client has seen nothing enqueue their
    /// job again; the others fail (their answer cannot be resumed).
    pub fn restarted(&self) {
        let mut routes = self.lock();
        for route in routes.values() {
            if route.delivered {
                route.fail(
                    ErrorCode::QueueUnavailable,
                    "the queue restarted mid-answer; the rest of the answer is lost",
                );
            } else {
                let _ = route.tx.send(Delivery::Resubmit);
            }
        }
        routes.clear();
    }

    /// Pools with requests whose output is streaming from a known worker.
    pub fn pools_streaming(&self) -> Vec<Arc<str>> {
        let mut pools: Vec<Arc<str>> = self
            .lock()
            .values()
            .filter(|r| r.worker.is_some())
            .map(|r| r.pool.clone())
            .collect();
        pools.sort_unstable();
        pools.dedup();
        pools
    }

    /// Fails, at once, the requests of `pool` whose output came from a worker not in `live`
    /// (its heartbeat expired: it died or froze mid-answer). Returns how many.
    pub fn workers_gone(&self, pool: &str, live: &[String]) -> usize {
        let mut routes = self.lock();
        let gone: Vec<String> = routes
            .iter()
            .filter(|(_, r)| {
                &*r.pool == pool && r.worker.as_ref().is_some_and(|w| !live.contains(w))
            })
            .map(|(job, _)| job.clone())
            .collect();
        for job in &gone {
            if let Some(r) = routes.remove(job) {
                tracing::warn!(%job, worker = r.worker.as_deref().unwrap_or(""), "worker stopped heartbeating mid-answer; failing the request");
                r.fail(
                    ErrorCode::UpstreamError,
                    "the worker answering this request died mid-answer",
                );
            }
        }
        gone.len()
    }
}

const BLOCK: Duration = Duration::from_secs(1);
/// Entries per read. Entries are bounded (a streamed chunk by the worker's coalescing, a whole
/// answer by `worker.max_response_bytes`), so a read is too, and finishes well within the
/// read's own timeout.
const BATCH: usize = 128;
const TRIM_EVERY: Duration = Duration::from_millis(200);

/// Runs the reader until `shutdown`.
/// `ttl`: `gateway.reply_ttl`, how long the reply stream outlives this gateway.
pub async fn run_reader(
    redis: Redis,
    replies: Arc<Replies>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut reader = ReplyReader::new(replies.key().to_owned(), "0-0".to_owned());
    let mut backoff = Duration::from_millis(50);
    let mut connected_once = false;
    let mut server: Option<String> = None;
    let mut last_trim = tokio::time::Instant::now();
    let mut untrimmed = false;
    while !shutdown.is_cancelled() {
        let conn = async {
            let run_id = redis.run_id().await?;
            let existed = redis.keep_replies(reader.key(), ttl).await?;
            Ok::<_, ssw_queue::QueueError>((redis.dedicated().await?, existed, run_id))
        };
        let (mut conn, existed, run_id) = match conn.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reply reader cannot reach redis; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        let restarted = server.as_ref().is_some_and(|s| *s != run_id);
        if connected_once && !existed {
            tracing::error!(
                restarted,
                "redis lost its data; enqueueing again the requests nobody had answered yet, failing the others"
            );
            replies.restarted();
            reader = ReplyReader::new(replies.key().to_owned(), "0-0".to_owned());
        } else if restarted {
            // Persistence (AOF) kept the queue and this stream: nothing to enqueue again. (Had
            // the keeper recreated the stream first, it has already resubmitted.)
            tracing::warn!("redis restarted with its data; reading on");
        }
        server = Some(run_id);
        if !connected_once {
            tracing::info!("reply stream ready");
            replies.set_open();
        }
        connected_once = true;
        backoff = Duration::from_millis(50);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reader.read(&mut conn, BLOCK, BATCH) => r,
            };
            match batch {
                Ok(events) => {
                    untrimmed |= !events.is_empty();
                    for ev in events {
                        match ev {
                            Ok(reply) => replies.dispatch(reply),
                            Err(e) => tracing::error!(error = %e, "malformed reply entry skipped"),
                        }
                    }
                    // Let the requests just woken answer their clients before the next read
                    // is sent.
                    tokio::task::yield_now().await;
                    if untrimmed && last_trim.elapsed() >= TRIM_EVERY {
                        if let Err(e) = redis.trim_replies(reader.key(), reader.last_id()).await {
                            tracing::warn!(error = %e, "trimming the reply stream failed");
                        }
                        untrimmed = false;
                        last_trim = tokio::time::Instant::now();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reply stream read failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// How often the workers of streaming answers are checked for a live heartbeat.
const WORKER_CHECK: Duration = Duration::from_secs(1);

/// Fails at once the requests whose answer is streaming from a worker that stopped
/// heartbeating (it died or froze), instead of after `gateway.stall_timeout`. A job whose
/// worker died before output needs nothing here: a live worker takes it over.
pub async fn watch_workers(redis: Redis, replies: Arc<Replies>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(WORKER_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for pool in replies.pools_streaming() {
            match redis.live_workers(&pool, ssw_queue::now_ms()).await {
                Ok(live) => {
                    replies.workers_gone(&pool, &live);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read live workers"),
            }
        }
    }
}

/// Renews the reply stream's TTL (`ttl`, every third of it) and notices if it vanished between
/// renewals.
pub async fn run_keeper(
    redis: Redis,
    replies: Arc<Replies>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    // The reader creates the stream at start-up; the first renewal is one period later.
    let period = ttl / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match redis.keep_replies(replies.key(), ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("reply stream had vanished (redis lost its data)");
                replies.restarted();
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the reply stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(job: &str, n: usize) -> Reply {
        Reply {
            job: job.into(),
            fence: 0,
            seq: 0,
            event: ReplyEvent::Data(vec![b'x'; n]),
        }
    }

    #[tokio::test]
    async fn a_request_that_falls_behind_its_budget_is_told_and_dropped() {
        let replies = Replies::new("k".into(), 100);
        let mut slow = replies.register("slow", "p".into());
        let mut fast = replies.register("fast", "p".into());
        for _ in 0..3 {
            replies.dispatch(data("slow", 40));
            replies.dispatch(data("fast", 40));
            // The fast reader takes each chunk as it comes.
            assert!(matches!(fast.recv().await, Some(Delivery::Event(_))));
        }
        assert_eq!(replies.len(), 1, "the slow request is no longer routed");
        assert!(matches!(slow.recv().await, Some(Delivery::Event(_))));
        assert!(matches!(slow.recv().await, Some(Delivery::Event(_))));
        assert!(matches!(slow.recv().await, Some(Delivery::Overflow)));
        // A whole answer is one event, bounded by the worker, not by the stream budget.
        replies.dispatch(Reply {
            job: "fast".into(),
            fence: 0,
            seq: 0,
            event: ReplyEvent::Full {
                status: 200,
                worker: "w".into(),
                claimed_ms: 0,
                body: vec![b'x'; 1000],
            },
        });
        assert!(matches!(
            fast.recv().await,
            Some(Delivery::Event(ReplyEvent::Full { .. }))
        ));
    }

    fn ev(job: &str, fence: u32, seq: u32, event: ReplyEvent) -> Reply {
        Reply {
            job: job.into(),
            fence,
            seq,
            event,
        }
    }

    fn head(worker: &str) -> ReplyEvent {
        ReplyEvent::Head {
            worker: worker.into(),
            claimed_ms: 0,
            data: b"data: 1\n\n".to_vec(),
        }
    }

    fn bytes(d: &str) -> ReplyEvent {
        ReplyEvent::Data(d.as_bytes().to_vec())
    }

    /// What the request has received so far, as short strings.
    fn got(rx: &mut EventRx) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(d) = rx.rx.try_recv() {
            out.push(match d {
                Delivery::Event(ReplyEvent::Data(d)) => String::from_utf8(d).unwrap(),
                Delivery::Event(ReplyEvent::Fail { code, .. }) => format!("fail:{code}"),
                Delivery::Event(e) => e.kind().to_owned(),
                Delivery::Overflow => "overflow".into(),
                Delivery::Resubmit => "resubmit".into(),
            });
        }
        out
    }

    #[test]
    fn a_superseded_run_is_ignored_and_never_interleaves() {
        let replies = Replies::new("k".into(), 1 << 20);
        let mut rx = replies.register("j", "p".into());
        // Run 1 sends a keep-alive, then stalls; run 2 takes over before any output.
        replies.dispatch(ev("j", 1, 0, ReplyEvent::KeepAlive));
        replies.dispatch(ev("j", 2, 0, head("w2")));
        // Run 1 wakes up and writes: dropped.
        replies.dispatch(ev("j", 1, 1, head("w1")));
        replies.dispatch(ev("j", 1, 2, bytes("from-1")));
        replies.dispatch(ev("j", 2, 1, bytes("from-2")));
        replies.dispatch(ev("j", 2, 2, ReplyEvent::End));
        assert_eq!(got(&mut rx), ["keep-alive", "head", "from-2", "end"]);
    }

    #[test]
    fn a_newer_run_after_output_fails_the_request_instead_of_splicing() {
        let replies = Replies::new("k".into(), 1 << 20);
        let mut rx = replies.register("j", "p".into());
        replies.dispatch(ev("j", 1, 0, head("w1")));
        replies.dispatch(ev("j", 2, 0, head("w2")));
        replies.dispatch(ev("j", 2, 1, bytes("from-2")));
        assert_eq!(got(&mut rx), ["head", "fail:upstream_error"]);
        assert!(replies.is_empty(), "no longer routed");
    }

    #[test]
    fn repeats_are_dropped_and_a_gap_in_output_fails_the_request() {
        let replies = Replies::new("k".into(), 1 << 20);
        let mut rx = replies.register("j", "p".into());
        replies.dispatch(ev("j", 1, 0, head("w")));
        replies.dispatch(ev("j", 1, 1, bytes("a")));
        replies.dispatch(ev("j", 1, 1, bytes("a")));
        replies.dispatch(ev("j", 1, 3, bytes("c")));
        assert_eq!(got(&mut rx), ["head", "a", "fail:upstream_error"]);
        // Before output a lost keep-alive does not matter.
        let mut rx = replies.register("k", "p".into());
        replies.dispatch(ev("k", 1, 1, ReplyEvent::KeepAlive));
        replies.dispatch(ev("k", 1, 2, head("w")));
        assert_eq!(got(&mut rx), ["keep-alive", "head"]);
        // But a lost head does.
        let mut rx = replies.register("m", "p".into());
        replies.dispatch(ev("m", 1, 1, bytes("x")));
        assert_eq!(got(&mut rx), ["fail:upstream_error"]);
    }

    #[test]
    fn after_a_redis_restart_unanswered_requests_resubmit_and_answered_ones_fail() {
        let replies = Replies::new("k".into(), 1 << 20);
        let mut queued = replies.register("q", "p".into());
        let mut running = replies.register("r", "p".into());
        let mut streaming = replies.register("s", "p".into());
        replies.dispatch(ev("r", 1, 0, ReplyEvent::KeepAlive));
        replies.dispatch(ev("s", 1, 0, head("w")));
        replies.restarted();
        assert_eq!(got(&mut queued), ["resubmit"]);
        assert_eq!(got(&mut running), ["keep-alive", "resubmit"]);
        assert_eq!(got(&mut streaming), ["head", "fail:queue_unavailable"]);
        assert!(replies.is_empty());
    }

    #[test]
    fn a_stream_from_a_worker_that_stopped_heartbeating_fails_at_once() {
        let replies = Replies::new("k".into(), 1 << 20);
        let mut a = replies.register("a", "p".into());
        let mut b = replies.register("b", "p".into());
        let mut other_pool = replies.register("c", "q".into());
        replies.dispatch(ev("a", 1, 0, head("w1")));
        replies.dispatch(ev("b", 1, 0, head("w2")));
        replies.dispatch(ev("c", 1, 0, head("w1")));
        assert_eq!(
            replies.pools_streaming(),
            vec![Arc::<str>::from("p"), "q".into()]
        );
        assert_eq!(replies.workers_gone("p", &["w2".to_owned()]), 1);
        assert_eq!(got(&mut a), ["head", "fail:upstream_error"]);
        assert_eq!(got(&mut b), ["head"]);
        assert_eq!(got(&mut other_pool), ["head"]);
    }
}
