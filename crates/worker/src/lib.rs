//! The SSW worker: one per engine replica.
//!
//! It pulls jobs of one pool from the pool's Redis stream only while it has a free slot
//! (`max_inflight`), its engine is healthy and the engine reports no waiting requests: the
//! backlog stays in Redis, where whichever replica has room takes it. Each job runs on its own
//! task ([`job`]); background tasks probe the engine ([`engine`]), publish heartbeats, abort
//! jobs whose client cancelled, whose gateway died or whose run was superseded, and reclaim
//! jobs of workers whose heartbeat expired.
//!
//! # Layout
//! - this file: [`run`], the pull loop and the background tasks.
//! - [`job`]: one job's execution and outcome.
//! - [`engine`]: engine client, health and load probe.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssw_config::{Config, WorkerConfig};
use ssw_protocol::heartbeat::{Drain, WorkerStatus};
use ssw_protocol::tier::Tier;
use ssw_queue::consumer::{PullPolicy, Pulled, ReclaimScan, Wait};
use ssw_queue::{QueueError, Redis};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod engine;
pub mod job;
pub mod telemetry;

use engine::{Engine, EngineState};
use job::{Decision, Stop};

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `worker.pool` is missing or unknown (validate the config first).
    #[error("worker.pool: not set or not a configured pool")]
    NoPool,
    /// Redis settings unusable.
    #[error("redis: {0}")]
    Redis(#[from] QueueError),
    /// Engine client could not be built.
    #[error("worker.engine_url: {0}")]
    Engine(#[from] reqwest::Error),
    /// Secret file unreadable.
    #[error("{field}: {source}")]
    Secret {
        /// The config field naming the file.
        field: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A job this worker is running, by entry id.
struct Running {
    job_id: String,
    reply_to: String,
    /// The run's fence, once the claim has given one.
    fence: Option<u32>,
    cancel: CancellationToken,
    stop: Arc<Mutex<Option<Stop>>>,
}

impl Running {
    fn stop(&self, why: Stop) {
        self.stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(why);
        self.cancel.cancel();
    }
}

/// Shared context of the worker's tasks.
pub struct Ctx {
    /// Worker settings.
    pub cfg: WorkerConfig,
    /// Worker id.
    pub id: String,
    /// Pool served.
    pub pool: String,
    /// The pool's `max_attempts`.
    pub max_attempts: u32,
    /// The pool's `max_crash_retries`.
    pub max_crash_retries: u32,
    /// The pool's queue timeout per tier (deadline of requeued jobs).
    pub queue_timeouts: [Duration; 4],
    /// Free slots kept for priority work (`pools.<p>.priority_reserve` of `max_inflight`)
    /// while the pool has priority traffic: see [`Ctx::reserve`].
    pub reserved_slots: u32,
    /// When this worker last pulled a priority job (Unix ms; 0: never).
    last_priority_ms: std::sync::atomic::AtomicU64,
    /// The default and flex tiers' minimum shares of picks.
    pub min_shares: (f64, f64),
    /// The engine schedules by priority (`pools.<p>.scheduling_policy = "priority"`): a
    /// priority job sent to it overtakes the requests waiting in it.
    pub engine_priority: bool,
    /// Redis.
    pub redis: Redis,
    /// Engine client.
    pub engine: Engine,
    /// Engine health and load.
    pub engine_state: Arc<EngineState>,
    /// TTL of job state markers.
    pub state_ttl: Duration,
    running: Mutex<HashMap<String, Running>>,
    /// Jobs this worker handed to another replica after they crashed its engine (bounded).
    bounced: Mutex<VecDeque<String>>,
    inflight: AtomicU32,
    slot_freed: Notify,
    /// The pull loop waits for priority work only (its free slots are all reserved): a slot
    /// coming free must wake it through Redis.
    waiting_narrow: AtomicBool,
    draining: AtomicBool,
    drain_aborted: AtomicBool,
    /// An operator's drain, as the last heartbeat read it.
    drain: Mutex<Option<Drain>>,
    /// The pull loop has stopped for `drain`.
    paused: AtomicBool,
    /// A heartbeat has reached Redis (and told whether an operator drained this worker).
    beat_ok: AtomicBool,
    /// The engine model last exported as a metric (name, revision).
    model_exported: Mutex<Option<(String, String)>>,
    started_ms: u64,
    /// Adapter-aware pulling (while the pool routes LoRA adapters): how long a job may wait
    /// for its adapter's turn.
    pub adapter_wait: Duration,
    /// The pool's adapters in the configuration file (routing versions may replace them).
    configured_adapters: std::collections::BTreeMap<String, ssw_config::AdapterConfig>,
    /// The engine's `max_loras`.
    pub max_loras: u32,
    /// The adapters this worker sent its engine most recently, newest last, at most
    /// `max_loras`: what the engine holds in its slots (it evicts the least recently used;
    /// this worker is its only client).
    resident: Mutex<VecDeque<String>>,
    /// Requests running on the engine per adapter.
    adapter_running: Mutex<HashMap<String, u32>>,
}

/// A request running on the engine for an adapter ([`Ctx::adapter_runs`]).
pub struct AdapterRun {
    ctx: Arc<Ctx>,
    adapter: String,
}

impl Drop for AdapterRun {
    fn drop(&mut self) {
        let mut running = self
            .ctx
            .adapter_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.adapter) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.adapter);
            }
        }
    }
}

/// [`Ctx::pull_blocked`]'s reason while an operator's drain is in force.
const DRAINED: &str = "drained by an operator";

/// How long a worker keeps its priority reserve after it last pulled a priority job.
pub const RESERVE_HOLD: Duration = Duration::from_secs(30);

impl Ctx {
    /// The context of a worker with this (validated) configuration; connects lazily.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        let (pool, pool_cfg) = config.worker_pool().ok_or(StartError::NoPool)?;
        let secret = |field: &'static str, path: &Option<std::path::PathBuf>| {
            path.as_deref()
                .map(ssw_config::read_secret)
                .transpose()
                .map_err(|source| StartError::Secret { field, source })
        };
        let password = secret("redis.password_file", &config.redis.password_file)?;
        let engine_key = secret(
            "worker.engine_api_key_file",
            &config.worker.engine_api_key_file,
        )?;
        let cfg = config.worker.clone();
        Ok(Self {
            id: cfg.id.clone().unwrap_or_else(|| default_id(pool)),
            pool: pool.to_owned(),
            max_attempts: pool_cfg.max_attempts,
            max_crash_retries: pool_cfg.max_crash_retries,
            queue_timeouts: Tier::LANES.map(|t| pool_cfg.tier_queue_timeout(t)),
            reserved_slots: pool_cfg.reserved_slots(config.worker.max_inflight),
            last_priority_ms: std::sync::atomic::AtomicU64::new(0),
            min_shares: (
                pool_cfg.min_share(Tier::Default),
                pool_cfg.min_share(Tier::Flex),
            ),
            engine_priority: pool_cfg.scheduling_policy
                == ssw_config::pool::SchedulingPolicy::Priority,
            redis: Redis::new(&config.redis, password)?,
            engine: Engine::new(&cfg, engine_key.as_deref())?,
            engine_state: Arc::new({
                let state = EngineState::default();
                state.set_routed(routed(&pool_cfg.adapters));
                state
            }),
            state_ttl: job::state_ttl(&cfg),
            running: Mutex::new(HashMap::new()),
            bounced: Mutex::new(VecDeque::new()),
            inflight: AtomicU32::new(0),
            slot_freed: Notify::new(),
            waiting_narrow: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_aborted: AtomicBool::new(false),
            drain: Mutex::new(None),
            paused: AtomicBool::new(false),
            beat_ok: AtomicBool::new(false),
            model_exported: Mutex::new(None),
            started_ms: ssw_queue::now_ms(),
            adapter_wait: pool_cfg.adapter_wait.max(Duration::from_millis(1)),
            configured_adapters: pool_cfg.adapters.clone(),
            max_loras: pool_cfg.max_loras,
            resident: Mutex::new(VecDeque::new()),
            adapter_running: Mutex::new(HashMap::new()),
            cfg,
        })
    }

    /// A job for `adapter` goes to the engine: it is the most recently used (and swapped in
    /// if it was not resident). Returns whether it was resident.
    pub fn use_adapter(&self, adapter: &str) -> bool {
        let mut r = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        let was = match r.iter().position(|a| a == adapter) {
            Some(i) => {
                r.remove(i);
                true
            }
            None => false,
        };
        r.push_back(adapter.to_owned());
        // The engine evicts the least recently used slot with nothing running (as vLLM's and
        // the stub's do); a running one only when every slot runs.
        let running = self
            .adapter_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        while r.len() > self.max_loras.max(1) as usize {
            let idle = r
                .iter()
                .take(r.len() - 1)
                .position(|a| running.get(a).is_none_or(|n| *n == 0));
            match idle {
                Some(i) => r.remove(i),
                None => r.pop_front(),
            };
        }
        was
    }

    /// The adapters resident on the engine, comma-separated, and how many more it could load
    /// now (free slots, and slots whose adapter has nothing running): PULL's view.
    pub fn adapter_view(&self) -> (String, u32) {
        if !self.engine_state.has_adapters() {
            // No adapters: PULL ignores the view (nothing to build per pull).
            return (String::new(), 0);
        }
        let mut r = self.resident.lock().unwrap_or_else(|p| p.into_inner());
        // Adapters the engine says it runs fill the slots this worker's bookkeeping has not
        // (a restarted worker's view starts empty while its engine holds adapters). Never
        // over its own: the engine's figure is up to a probe old.
        if r.len() < self.max_loras as usize {
            for a in self.engine_state.lora_running() {
                if r.len() < self.max_loras as usize && !r.contains(&a) {
                    r.push_front(a);
                }
            }
        }
        let running = self
            .adapter_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let idle = r
            .iter()
            .filter(|a| running.get(*a).is_none_or(|n| *n == 0))
            .count();
        let free = (self.max_loras as usize).saturating_sub(r.len());
        let list = r.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        (list, (free + idle) as u32)
    }

    /// A request for `adapter` runs on the engine until the guard drops.
    pub fn adapter_runs(self: &Arc<Self>, adapter: &str) -> AdapterRun {
        let mut running = self
            .adapter_running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *running.entry(adapter.to_owned()).or_default() += 1;
        AdapterRun {
            ctx: self.clone(),
            adapter: adapter.to_owned(),
        }
    }

    /// Whether jobs are being aborted because the drain timed out.
    pub fn drain_aborted(&self) -> bool {
        self.drain_aborted.load(Ordering::Relaxed)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to hand `job` to another replica instead of running it: true the first time
    /// this worker sees it again after it crashed this worker's engine.
    pub fn bounce(&self, job: &str) -> bool {
        const REMEMBERED: usize = 1024;
        let mut b = self.bounced.lock().unwrap_or_else(|p| p.into_inner());
        if b.iter().any(|j| j == job) {
            return false;
        }
        if b.len() == REMEMBERED {
            b.pop_front();
        }
        b.push_back(job.to_owned());
        true
    }

    /// Jobs running now.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Slots left.
    pub fn free_slots(&self) -> u32 {
        self.cfg
            .max_inflight
            .saturating_sub(self.inflight.load(Ordering::Relaxed))
    }

    /// The operator's drain in force, if any.
    pub fn drain(&self) -> Option<Drain> {
        self.drain.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes a heartbeat and takes in what it says: the operator's drain, if any, and that
    /// Redis has heard from this worker (it may pull from then on).
    async fn beat(&self) -> Result<(), QueueError> {
        let drain = self
            .redis
            .heartbeat(&self.status(), ssw_queue::now_ms(), self.cfg.heartbeat_ttl)
            .await?;
        let started = drain.is_some() && self.drain().is_none();
        self.set_drain(drain);
        if !self.beat_ok.swap(true, Ordering::Relaxed) {
            self.slot_freed.notify_one();
        }
        if started {
            // The pull loop may wait in Redis for jobs: wake it, so it stops now and the next
            // heartbeat reports it paused.
            if let Err(e) = self.redis.wake_self(&self.pool, &self.id).await {
                tracing::debug!(error = %e, "cannot wake the pull loop");
            }
        }
        Ok(())
    }

    /// Records the drain the last heartbeat read; wakes the pull loop when it ends.
    fn set_drain(&self, drain: Option<Drain>) {
        let mut slot = self.drain.lock().unwrap_or_else(|p| p.into_inner());
        match (&*slot, &drain) {
            (None, Some(d)) => tracing::info!(
                by = %d.by,
                reason = %d.reason,
                "drained by an operator: pulling stops, jobs in flight finish"
            ),
            (Some(_), None) => {
                tracing::info!("drain ended: pulling again");
                self.slot_freed.notify_one();
            }
            _ => {}
        }
        *slot = drain;
        telemetry::drained(self, slot.is_some());
    }

    /// Why the worker should not pull now, if it should not.
    fn pull_blocked(&self) -> Option<&'static str> {
        if self
            .drain
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            Some(DRAINED)
        } else if self.free_slots() == 0 {
            Some("no free slot")
        } else if !self.engine_state.is_up() {
            Some("engine down")
        } else if self.engine_backed_up() && !self.engine_priority {
            Some("engine has waiting requests")
        } else {
            None
        }
    }

    /// The slots kept free for priority work now: the pool's reserve while this worker has
    /// pulled priority work within [`RESERVE_HOLD`], else none. A reserve held with no
    /// priority traffic would idle a share of the engine while lower tiers queue (measured:
    /// an eighth of the capacity with 8 slots, one reserved); lent out, the first priority job
    /// after a quiet spell waits for one slot to come free, and the reserve is back from then.
    pub fn reserve(&self) -> u32 {
        let last = self.last_priority_ms.load(Ordering::Relaxed);
        let recent =
            last > 0 && ssw_queue::now_ms().saturating_sub(last) < RESERVE_HOLD.as_millis() as u64;
        if recent { self.reserved_slots } else { 0 }
    }

    /// Notes that a priority job was pulled (the reserve is held from now for [`RESERVE_HOLD`]).
    fn priority_seen(&self) {
        self.last_priority_ms
            .store(ssw_queue::now_ms(), Ordering::Relaxed);
    }

    /// The engine has requests waiting (and the worker respects that): only priority work,
    /// which an engine that schedules by priority runs ahead of them, may still be sent.
    fn engine_backed_up(&self) -> bool {
        self.cfg.respect_engine_waiting && self.engine_state.load().waiting.unwrap_or(0.0) > 0.0
    }

    fn status(&self) -> WorkerStatus {
        let load = self.engine_state.load();
        let model = self.engine_state.model();
        WorkerStatus {
            worker: self.id.clone(),
            pool: self.pool.clone(),
            engine_url: self.engine.base.clone(),
            engine_up: self.engine_state.is_up(),
            engine_detail: self.engine_state.detail(),
            inflight: self.inflight.load(Ordering::Relaxed),
            max_inflight: self.cfg.max_inflight,
            engine_running: load.running,
            engine_waiting: load.waiting,
            kv_cache_usage: load.kv_cache_usage,
            draining: self.draining.load(Ordering::Relaxed),
            drain: self.drain(),
            paused: self.paused.load(Ordering::Relaxed),
            served_model: model.as_ref().map(|m| m.name.clone()),
            revision: model.map(|m| m.revision),
            gpus: self.cfg.gpus.clone(),
            started_ms: self.started_ms,
            heartbeat_ms: ssw_queue::now_ms(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

fn default_id(pool: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    format!("{pool}-{host}-{}", std::process::id())
}

/// Runs the worker until `shutdown`, then drains: stops pulling, lets in-flight jobs finish
/// within `drain_timeout` (then hands unfinished ones back or fails them), and deregisters.
/// `metrics` serves `/metrics` and `/healthz` when given.
pub async fn run(
    config: Config,
    metrics: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let ctx = Arc::new(Ctx::new(&config)?);
    tracing::info!(worker = %ctx.id, pool = %ctx.pool, engine = %ctx.engine.base, "worker starting");
    let background = CancellationToken::new();
    let bg = TaskTracker::new();
    ssw_telemetry::start_process_metrics("worker", background.clone());
    telemetry::slots(&ctx);
    telemetry::init_jobs(&ctx);
    if let Some(listener) = metrics {
        bg.spawn(telemetry::serve(listener, background.clone()));
    }
    bg.spawn(telemetry::gpus(ctx.clone(), background.clone()));
    // The pool's routed adapters before the engine's first probe, which loads those it lacks.
    let mut routing_seen = 0;
    sync_adapters(&ctx, &mut routing_seen).await;
    bg.spawn(ctx.engine.clone().monitor(
        ctx.engine_state.clone(),
        ctx.cfg.engine_poll_interval,
        background.clone(),
    ));
    bg.spawn(heartbeats(
        ctx.clone(),
        background.clone(),
        shutdown.clone(),
        routing_seen,
    ));
    bg.spawn(watch_running(ctx.clone(), background.clone()));
    bg.spawn(fast_lane(ctx.clone(), shutdown.clone()));
    bg.close();

    // Live before the first pull: a worker that holds jobs without a heartbeat looks dead, and
    // others would take its jobs over. The heartbeat also says whether an operator's drain
    // holds it (a drain outlives restarts).
    if let Err(e) = ctx.beat().await {
        tracing::warn!(error = %e, "first heartbeat failed; pulling waits for redis");
    }
    let jobs = TaskTracker::new();
    pull_loop(&ctx, &jobs, &shutdown).await;

    ctx.draining.store(true, Ordering::Relaxed);
    jobs.close();
    tracing::info!(
        inflight = jobs.len(),
        "draining: pulling stopped, finishing jobs in flight"
    );
    if tokio::time::timeout(ctx.cfg.drain_timeout, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = jobs.len(),
            "drain timeout: handing unfinished jobs back"
        );
        ctx.drain_aborted.store(true, Ordering::Relaxed);
        for r in ctx.running().values() {
            r.stop(Stop::Drain);
        }
        jobs.wait().await;
    }
    background.cancel();
    bg.wait().await;
    if let Err(e) = ctx.redis.deregister(&ctx.pool, &ctx.id).await {
        tracing::warn!(error = %e, "could not deregister; the heartbeat will expire");
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Fast-lane jobs one worker runs at once (each one short engine call).
const FAST_CONCURRENCY: usize = 16;

/// Serves the pool's fast lane (`/tokenize`, `/detokenize`) beside the generation slots: pops a
/// job whenever the engine is up, this worker is not drained and fewer than
/// [`FAST_CONCURRENCY`] are running, until shutdown.
async fn fast_lane(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(FAST_CONCURRENCY));
    let mut conn = None;
    let mut backoff = Duration::from_millis(100);
    let block = Duration::from_secs(1);
    while !shutdown.is_cancelled() {
        if !ctx.engine_state.is_up() || ctx.drain().is_some() {
            backoff_sleep(&mut Duration::from_millis(200), &shutdown).await;
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match ctx.redis.dedicated().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::debug!(error = %e, "fast lane: cannot connect");
                    backoff_sleep(&mut backoff, &shutdown).await;
                    continue;
                }
            },
        };
        let popped = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = c.fast_pop(ctx.redis.keys(), &ctx.pool, block) => p,
        };
        match popped {
            Ok(None) => {}
            Ok(Some(Ok(job))) => {
                backoff = Duration::from_millis(100);
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    job::run_fast(&ctx, job).await;
                    drop(permit);
                });
            }
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "fast lane: undecodable job dropped"),
            Err(e) => {
                tracing::debug!(error = %e, "fast lane: pop failed; reconnecting");
                conn = None;
                backoff_sleep(&mut backoff, &shutdown).await;
            }
        }
    }
}

async fn backoff_sleep(backoff: &mut Duration, shutdown: &CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(*backoff) => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
}

/// Pending entries one reclaim scan looks at; the next scan resumes after them.
const RECLAIM_SCAN: usize = 200;

/// How long an entry stays pending under this worker, not in its hands, before a reclaim scan
/// takes it back: past any reply this worker still waits for (a PULL, a claim: each given up
/// after `op_timeout`), with room for a Redis that resumes with a backlog of commands.
fn stranded_after(op_timeout: Duration) -> Duration {
    op_timeout * 3
}

async fn pull_loop(ctx: &Arc<Ctx>, jobs: &TaskTracker, shutdown: &CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let mut conn = None;
    let mut last_reclaim = tokio::time::Instant::now();
    // Jobs of a dead worker wait at most its heartbeat TTL plus this.
    let reclaim_every = ctx.cfg.heartbeat_interval;
    let mut cursor = String::from("-");
    let mut group_ready = false;
    // The last pull took fewer jobs than it could (see below).
    let mut drained = false;
    while !shutdown.is_cancelled() {
        let blocked = ctx.pull_blocked();
        // Stopped at the top of the loop: no pull is in flight, and every job pulled so far
        // counts in `inflight`.
        ctx.paused.store(blocked == Some(DRAINED), Ordering::SeqCst);
        if let Some(why) = blocked {
            tracing::trace!(why, "not pulling");
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ctx.slot_freed.notified() => {}
                _ = ctx.engine_state.changed.notified() => {}
                _ = tokio::time::sleep(ctx.cfg.engine_poll_interval) => {}
            }
            continue;
        }
        if !group_ready {
            match ctx.redis.ensure_group(&ctx.pool).await {
                Ok(()) => group_ready = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create the consumer group; retrying");
                    backoff_sleep(&mut backoff, shutdown).await;
                    continue;
                }
            }
        }
        let free = ctx.free_slots() as usize;
        let pulled = if last_reclaim.elapsed() >= reclaim_every {
            last_reclaim = tokio::time::Instant::now();
            // Taken after the pull above was handled: every entry a PULL or claim reply
            // handed this worker is in `running` by now, until its job reported its end.
            let held: Vec<String> = ctx.running().keys().cloned().collect();
            let scan = ReclaimScan {
                cursor: &cursor,
                budget: RECLAIM_SCAN,
                want: free,
                now_ms: ssw_queue::now_ms(),
                stranded_after: stranded_after(ctx.redis.op_timeout()),
                held: &held,
            };
            ctx.redis
                .reclaim(&ctx.pool, &ctx.id, scan)
                .await
                .map(|r| {
                    cursor = r.cursor;
                    if r.stranded > 0 {
                        tracing::warn!(
                            count = r.stranded,
                            "took back jobs left pending under this worker by a lost pull or claim reply"
                        );
                    }
                    if r.jobs.len() > r.stranded {
                        tracing::info!(
                            count = r.jobs.len() - r.stranded,
                            "took over jobs of a worker whose heartbeat expired"
                        );
                    }
                    (r.jobs, true)
                })
        } else {
            // An engine with requests waiting takes priority work only (see `pull_blocked`).
            let backed_up = ctx.engine_backed_up();
            let (resident, room) = ctx.adapter_view();
            let policy = PullPolicy {
                adapters: ssw_queue::consumer::Adapters {
                    resident: &resident,
                    wait: if ctx.engine_state.has_adapters() {
                        ctx.adapter_wait
                    } else {
                        Duration::ZERO
                    },
                    room,
                },
                most: free,
                below_priority: if backed_up {
                    0
                } else {
                    free.saturating_sub(ctx.reserve() as usize)
                },
                default_share: ctx.min_shares.0,
                flex_share: ctx.min_shares.1,
            };
            // After a pull that found fewer jobs than it could take, the queue was empty: every
            // job enqueued since left a wake-up token, so go straight to the wait (pipelined
            // with the next PULL) instead of a PULL that would find nothing.
            let first = if drained {
                Ok(ssw_queue::consumer::Batch::default())
            } else {
                ctx.redis.pull_batch(&ctx.pool, &ctx.id, policy).await
            };
            match first {
                Ok(batch) if !batch.jobs.is_empty() => {
                    drained = batch.jobs.len() < policy.most;
                    Ok((batch.jobs, false))
                }
                Ok(batch) => {
                    if conn.is_none() {
                        match ctx.redis.dedicated().await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot reach redis; retrying");
                                backoff_sleep(&mut backoff, shutdown).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    // Nothing this worker may take: wait for a job to arrive (or, with only
                    // reserved slots free, a priority job or a slot coming free; or, with jobs
                    // held back for want of adapter room, one of its jobs ending: new jobs'
                    // tokens are for workers that can take them).
                    let held_back = batch.held_back;
                    let narrow = policy.below_priority == 0 || held_back;
                    // Held back, its room is all taken by adapters with requests running: one
                    // of them ending is its next chance (new jobs go to workers that can take
                    // them, or wait for this one's next pull).
                    let wait = if held_back { Wait::Own } else { Wait::Any };
                    ctx.waiting_narrow.store(narrow, Ordering::SeqCst);
                    // A job that ended before the flag was set did not wake us: if a slot came
                    // free since the policy was made, pull again instead of waiting (a lost
                    // wake-up stalled such a worker for the whole 1 s wait).
                    // Likewise if the engine's waiting requests cleared (a job's end wakes the
                    // narrow wait; one that ended before the flag was set did not).
                    if narrow
                        && (ctx.free_slots() as usize > policy.most
                            || (backed_up && !ctx.engine_backed_up())
                            || (held_back && ctx.adapter_view().1 > policy.adapters.room))
                    {
                        ctx.waiting_narrow.store(false, Ordering::SeqCst);
                        continue;
                    }
                    let waited = tokio::select! {
                        _ = shutdown.cancelled() => break,
                        r = ctx.redis.wait_then_pull(c, &ctx.pool, &ctx.id, policy, wait, Duration::from_secs(1)) => r,
                    };
                    ctx.waiting_narrow.store(false, Ordering::SeqCst);
                    if let Ok(batch) = &waited {
                        // Held back: pull again with the room of now, then wait for more.
                        drained = batch.jobs.len() < policy.most && !batch.held_back;
                    }
                    waited.map(|batch| (batch.jobs, false))
                }
                Err(e) => Err(e),
            }
        };
        match pulled {
            Ok((batch, reclaimed)) => {
                backoff = Duration::from_millis(50);
                if !batch.is_empty() {
                    start_jobs(ctx, jobs, batch, reclaimed).await;
                    // Let the new jobs send their requests before the next pull is sent.
                    tokio::task::yield_now().await;
                }
            }
            Err(e) => {
                if e.is_nogroup() {
                    group_ready = false;
                } else {
                    tracing::warn!(error = %e, "pulling failed; reconnecting");
                    conn = None;
                }
                backoff_sleep(&mut backoff, shutdown).await;
            }
        }
    }
}

/// Starts a pulled batch (`reclaimed`: taken over from a dead worker). Every job gets its own
/// task at once; one claim for the whole batch runs beside them and hands each its verdict. A
/// fresh job starts its engine request while the claim is on its way (see [`job::run`]), which
/// takes the claim's round trip off the request's latency; the others wait for the verdict.
async fn start_jobs(ctx: &Arc<Ctx>, jobs: &TaskTracker, batch: Vec<Pulled>, reclaimed: bool) {
    let mut valid = Vec::with_capacity(batch.len());
    for p in batch {
        match p.job {
            Ok(job) => {
                if job.tier == Tier::Priority {
                    ctx.priority_seen();
                }
                valid.push((p.entry_id, job, p.size));
            }
            Err(e) => {
                tracing::error!(entry = %p.entry_id, error = %e, "dropping an undecodable job");
                let _ = ctx.redis.drop_entry(&ctx.pool, &p.entry_id, p.size).await;
            }
        }
    }
    if valid.is_empty() {
        return;
    }
    let now = ssw_queue::now_ms();
    let (senders, verdicts): (Vec<_>, Vec<_>) = valid.iter().map(|_| job::verdict()).unzip();
    let ids: Vec<(String, String, u64, String)> = valid
        .iter()
        .map(|(entry, j, _)| {
            (
                entry.clone(),
                j.id.clone(),
                j.deadline_ms,
                j.reply_to.clone(),
            )
        })
        .collect();
    // An enqueue the gateway gave up on (it waited `op_timeout`) may still have reached the
    // stream, marked cancelled; such a job is never fresh, so it never reaches the engine.
    let fresh_within = ctx.redis.op_timeout() / 2;
    for ((entry_id, job, size), verdict) in valid.into_iter().zip(verdicts) {
        let early = !reclaimed
            && job.crashes == 0
            && job.deadline_ms > now
            && now.saturating_sub(job.enqueued_ms) < fresh_within.as_millis() as u64;
        let cancel = CancellationToken::new();
        let stop = Arc::new(Mutex::new(None));
        ctx.inflight.fetch_add(1, Ordering::Relaxed);
        telemetry::slots(ctx);
        ctx.running().insert(
            entry_id.clone(),
            Running {
                job_id: job.id.clone(),
                reply_to: job.reply_to.clone(),
                fence: None,
                cancel: cancel.clone(),
                stop: stop.clone(),
            },
        );
        let span = tracing::info_span!(
            "job",
            request_id = %job.request_id,
            job = %job.id,
            pool = %ctx.pool,
            worker = %ctx.id,
            attempt = job.attempt,
            outcome = tracing::field::Empty,
        );
        // An adapter's job holds its adapter's slot on the engine from now until it ends: the
        // worker's view of what the engine holds, and of its room, for the very next pull.
        let adapter = (!job.adapter.is_empty()).then(|| {
            let run = ctx.adapter_runs(&job.adapter);
            if !ctx.use_adapter(&job.adapter) {
                telemetry::adapter_swap(ctx, &job.adapter);
            }
            run
        });
        let c = ctx.clone();
        let pulled = job::Pulled {
            entry_id,
            job,
            size,
            pulled_ms: now,
            reclaimed,
            early,
        };
        jobs.spawn(tracing::Instrument::instrument(
            async move {
                let entry = pulled.entry_id.clone();
                let engine_used = job::run(c.clone(), pulled, verdict, cancel, stop).await;
                drop(adapter);
                c.running().remove(&entry);
                c.inflight.fetch_sub(1, Ordering::SeqCst);
                if engine_used {
                    c.engine_state.request_finished();
                }
                telemetry::slots(&c);
                // One waiter (the pull loop); a permit is kept if it is not waiting yet.
                c.slot_freed.notify_one();
                if c.waiting_narrow.load(Ordering::SeqCst) {
                    // It waits in Redis for priority work only; now it may take any.
                    if let Err(e) = c.redis.wake_self(&c.pool, &c.id).await {
                        tracing::debug!(error = %e, "cannot wake the pull loop");
                    }
                }
            },
            span,
        ));
    }
    // Spawned after the jobs, so their engine requests leave first: the engine's answer
    // takes longer than the claim's. Beside the claim, the owning gateways' reply streams
    // are checked: a job whose gateway died has nobody to answer.
    let c = ctx.clone();
    tokio::spawn(async move {
        let claim_ids: Vec<(&str, u64)> =
            ids.iter().map(|(_, id, d, _)| (id.as_str(), *d)).collect();
        let mut streams: Vec<&str> = ids.iter().map(|(.., r)| r.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let (claims, alive) = tokio::join!(
            c.redis.claim(&c.pool, &c.id, &claim_ids, now, c.state_ttl),
            c.redis.streams_exist(&streams),
        );
        let alive: Vec<&str> = match alive {
            Ok(flags) => streams
                .iter()
                .zip(flags)
                .filter(|(_, up)| *up)
                .map(|(s, _)| *s)
                .collect(),
            // Unknown: assume alive (the watcher checks again while the job runs).
            Err(_) => streams.clone(),
        };
        let decisions: Vec<Option<Decision>> = match claims {
            Ok(claims) => claims
                .into_iter()
                .zip(&ids)
                .map(|(claim, (.., reply_to))| {
                    Some(match claim {
                        ssw_queue::consumer::Claim::Run { fence }
                            if !alive.contains(&reply_to.as_str()) =>
                        {
                            Decision::GatewayGone { fence }
                        }
                        ssw_queue::consumer::Claim::Run { fence } => Decision::Run { fence },
                        other => Decision::Refused(other),
                    })
                })
                .collect(),
            Err(e) => {
                // Left pending under this worker: its reclaim scan takes the entries back
                // once they are stranded (not in `running` any more).
                tracing::warn!(error = %e, "cannot claim pulled jobs");
                vec![None; ids.len()]
            }
        };
        {
            let mut running = c.running();
            for ((entry, ..), d) in ids.iter().zip(&decisions) {
                if let (Some(Decision::Run { fence }), Some(r)) = (d, running.get_mut(entry)) {
                    r.fence = Some(*fence);
                }
            }
        }
        for (tx, d) in senders.into_iter().zip(decisions) {
            let _ = tx.send(d);
        }
    });
}

/// Publishes heartbeats. After the first one reaches Redis, tells systemd the worker is ready
/// and feeds its watchdog while this loop keeps ticking: a hung worker gets restarted, while a
/// Redis outage (which the loop rides out by reconnecting) does not restart it.
async fn heartbeats(
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
    stopping: CancellationToken,
    mut routing_seen: u64,
) {
    let mut tick = tokio::time::interval(ctx.cfg.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let last_tick = Arc::new(std::sync::atomic::AtomicU64::new(ssw_queue::now_ms()));
    let stale_after = (ctx.cfg.heartbeat_interval * 10).as_millis() as u64;
    let mut notified = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        last_tick.store(ssw_queue::now_ms(), Ordering::Relaxed);
        telemetry::engine(&ctx);
        match ctx.beat().await {
            Ok(()) if !notified => {
                notified = true;
                let last = last_tick.clone();
                ssw_telemetry::systemd::ready_with_watchdog(
                    move || {
                        ssw_queue::now_ms().saturating_sub(last.load(Ordering::Relaxed))
                            < stale_after
                    },
                    stopping.clone(),
                );
            }
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        // After the beat, which a slow Redis must not delay.
        sync_adapters(&ctx, &mut routing_seen).await;
    }
}

/// (name, source) of each adapter.
fn routed(
    adapters: &std::collections::BTreeMap<String, ssw_config::AdapterConfig>,
) -> Vec<(String, String)> {
    adapters
        .iter()
        .map(|(name, a)| (name.clone(), a.source.clone()))
        .collect()
}

/// Reads the routing version in force and, when it is not `seen`, the pool's adapters under it
/// (the configuration file's where it names none): adapter-aware pulling follows them, and the
/// engine must hold them (`ssw adapters load` adds one without restarting this worker).
async fn sync_adapters(ctx: &Ctx, seen: &mut u64) {
    let version = match ctx.redis.routing_version().await {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the routing version");
            return;
        }
    };
    if version == *seen {
        return;
    }
    let adapters = if version == 0 {
        ctx.configured_adapters.clone()
    } else {
        let doc = match ctx.redis.routing_document(version).await {
            Ok(Some(d)) => d,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the routing document");
                return;
            }
        };
        match serde_json::from_str::<ssw_config::routing::Published>(&doc) {
            Ok(p) => p
                .routing
                .pools
                .get(&ctx.pool)
                .and_then(|p| p.adapters.clone())
                .unwrap_or_else(|| ctx.configured_adapters.clone()),
            Err(e) => {
                // Not read again until the next version.
                tracing::warn!(version, error = %e, "cannot read routing version; its adapters are not followed");
                *seen = version;
                return;
            }
        }
    };
    let routed = routed(&adapters);
    if routed != ctx.engine_state.routed() {
        tracing::info!(
            version,
            adapters = %adapters.keys().cloned().collect::<Vec<_>>().join(","),
            "the pool's routed adapters"
        );
        ctx.engine_state.set_routed(routed);
    }
    *seen = version;
}

/// Stops running jobs whose client cancelled, whose run was superseded (another worker took the
/// job over, or Redis lost it), or whose gateway is gone.
async fn watch_running(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.cfg.cancel_poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (runs, streams): (Vec<(String, String, u32)>, Vec<String>) = {
            let running = ctx.running();
            let runs = running
                .iter()
                .filter_map(|(entry, r)| Some((entry.clone(), r.job_id.clone(), r.fence?)))
                .collect();
            let mut streams: Vec<String> = running.values().map(|r| r.reply_to.clone()).collect();
            streams.sort_unstable();
            streams.dedup();
            (runs, streams)
        };
        if runs.is_empty() {
            continue;
        }
        let refs: Vec<(&str, u32)> = runs.iter().map(|(_, j, f)| (j.as_str(), *f)).collect();
        let stream_refs: Vec<&str> = streams.iter().map(String::as_str).collect();
        let (watched, alive) = tokio::join!(
            ctx.redis.watch(&ctx.pool, &ctx.id, &refs),
            ctx.redis.streams_exist(&stream_refs),
        );
        let running = ctx.running();
        match watched {
            Ok(states) => {
                for ((entry, ..), w) in runs.iter().zip(states) {
                    let why = match w {
                        ssw_queue::consumer::Watch::Mine => continue,
                        ssw_queue::consumer::Watch::Cancelled => Stop::Cancelled,
                        ssw_queue::consumer::Watch::Lost => Stop::Lost,
                    };
                    if let Some(r) = running.get(entry) {
                        r.stop(why);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check running jobs"),
        }
        if let Ok(flags) = alive {
            for (stream, up) in streams.iter().zip(flags) {
                if !up {
                    for r in running.values().filter(|r| &r.reply_to == stream) {
                        r.stop(Stop::GatewayGone);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(adapters: &[&str], max_loras: u32) -> Ctx {
        let mut cfg = ssw_test_support::test_config();
        cfg.worker.pool = Some("heavy".into());
        let heavy = cfg.pools.get_mut("heavy").expect("heavy");
        heavy.max_loras = max_loras;
        for a in adapters {
            heavy.adapters.insert(
                (*a).to_owned(),
                ssw_config::AdapterConfig {
                    source: format!("/adapters/{a}"),
                    rank: 16,
                },
            );
        }
        Ctx::new(&cfg).expect("a worker context")
    }

    #[test]
    fn the_adapter_view_holds_what_the_engine_runs_and_follows_the_routed_adapters() {
        let c = Arc::new(ctx(&["a", "b", "c"], 2));
        // A worker restarted beside a busy engine: what the engine runs is resident.
        c.engine_state.set_lora_running(vec!["c".into()]);
        assert_eq!(
            c.adapter_view(),
            ("c".into(), 2),
            "c idle here, one slot free"
        );
        assert!(c.use_adapter("c"), "no swap for what the engine runs");
        assert!(!c.use_adapter("a"), "a swapped in");
        assert!(
            !c.use_adapter("b"),
            "b swapped in, in c's place (least recently used)"
        );
        // Its own bookkeeping is full: the engine's (older) figure changes nothing.
        assert_eq!(c.adapter_view(), ("a,b".into(), 2), "both idle: room 2");
        let _running = c.adapter_runs("b");
        assert_eq!(c.adapter_view(), ("a,b".into(), 1));

        // A pool that routes no adapter pulls without a view; once routing names one (`ssw
        // adapters load`), with it.
        let plain = ctx(&[], 4);
        assert_eq!(plain.adapter_view(), (String::new(), 0));
        plain
            .engine_state
            .set_routed(vec![("wolf".into(), "/adapters/wolf".into())]);
        plain.use_adapter("wolf");
        assert_eq!(plain.adapter_view(), ("wolf".into(), 4));
    }
}
