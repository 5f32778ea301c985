//! `ssw drain`, `ssw resume` and `ssw rollout`: taking replicas out and putting them back, and
//! replacing a pool's model replica by replica while the queue holds the load.
//!
//! A drain is a Redis entry (`P:{pool}:drain`) the worker reads with each heartbeat: it stops
//! pulling, finishes its jobs, and reports `paused` with `inflight` 0 — from then on nothing of
//! the pool runs on its engine, and the engine can be restarted or reloaded. A rollout drains a
//! batch of `--max-unavailable` replicas, reloads each one's engine (`--restart-cmd` or
//! `--engine-api`), waits until the engine is healthy, serves the expected model and answers a
//! smoke request, and until the worker has read that model; then resumes them and goes on. A
//! failure stops it there: the failed replicas stay drained, the others serve.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ssw_config::Config;
use ssw_protocol::heartbeat::{Drain, WorkerStatus};
use ssw_queue::Redis;

/// Where the platform is: its configuration and Redis.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Config file (pools, Redis settings, worker timeouts).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Redis URL (`redis.url`).
    #[arg(long)]
    redis_url: Option<String>,
}

impl Target {
    /// The configuration (file, `SSW_` environment, `--redis-url`) and a Redis handle.
    pub fn open(&self) -> anyhow::Result<(Config, Redis)> {
        let mut fig = Config::figment(self.config.as_deref());
        if let Some(url) = &self.redis_url {
            fig = fig.merge(("redis.url", url.clone()));
        }
        let config = Config::from_figment(&fig)?;
        let redis = crate::routes::connect(&config)?;
        Ok((config, redis))
    }
}

/// Options of `ssw drain`.
#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The worker's id (`ssw status` lists them).
    worker: String,
    /// Its pool (default: the pool it reports in; needed for a worker that is not running).
    #[arg(long)]
    pool: Option<String>,
    /// Why (shown by `ssw status`).
    #[arg(long, default_value = "")]
    reason: String,
    /// Wait until it runs nothing, up to this long (e.g. `--wait 2m`).
    #[arg(long, num_args = 0..=1, default_missing_value = "60s", value_parser = crate::parse_duration)]
    wait: Option<Duration>,
    #[command(flatten)]
    target: Target,
}

/// Options of `ssw resume`.
#[derive(Args, Debug)]
pub struct ResumeArgs {
    /// The worker's id.
    worker: String,
    /// Its pool (default: the pool it reports in, or the pool it is drained in).
    #[arg(long)]
    pool: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// Options of `ssw rollout`.
#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// The pool whose replicas are reloaded.
    #[arg(long)]
    pool: String,
    /// The served model name each engine must report afterwards (default: whatever it reports;
    /// with `--engine-api`, required: the model to load).
    #[arg(long)]
    model: Option<String>,
    /// Replicas out at once.
    #[arg(long, default_value_t = 1)]
    max_unavailable: usize,
    /// Command run per replica to restart its engine (`sh -c`; `{worker}`, `{pool}`,
    /// `{engine_url}` and `{model}` are replaced), e.g.
    /// `systemctl restart podman-vllm-{worker}.service`.
    #[arg(
        long,
        conflicts_with = "engine_api",
        required_unless_present = "engine_api"
    )]
    restart_cmd: Option<String>,
    /// Reload through the engine's own API: with `--weights`, vLLM's in-place weight reload
    /// (sleep level 2, wake the weights, `reload_weights`, wake the KV cache, reset the prefix
    /// cache; vLLM needs `--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1`, and the same
    /// architecture); without, the stub's `/stub/load_model` (switches its served model).
    #[arg(long)]
    engine_api: bool,
    /// With `--engine-api`: the checkpoint directory each engine reloads its weights from (as
    /// the engine sees the path).
    #[arg(long, requires = "engine_api")]
    weights: Option<String>,
    /// With `--engine-api` on stubs: how long the load takes (default: the stub's `load_time`).
    #[arg(long, value_parser = crate::parse_duration)]
    load_time: Option<Duration>,
    /// Only these workers, in this order (repeatable; default: every live worker of the pool,
    /// by GPU then id).
    #[arg(long = "worker")]
    workers: Vec<String>,
    /// Where this command reaches a worker's engine, when not at the URL the worker uses
    /// (`WORKER=URL`, repeatable; e.g. compose's published ports from the host).
    #[arg(long = "engine-url", value_parser = parse_engine_url)]
    engine_urls: Vec<(String, String)>,
    /// The key the engines require (default: `worker.engine_api_key_file` of the config).
    #[arg(long)]
    engine_api_key_file: Option<PathBuf>,
    /// How long a replica may take to finish its jobs once drained (default:
    /// `worker.drain_timeout`); then the rollout stops there (with `--force`, the engine is
    /// reloaded anyway: answers it cuts short fail).
    #[arg(long, value_parser = crate::parse_duration)]
    drain_timeout: Option<Duration>,
    /// How long a reloaded engine may take to serve again (a 14B vLLM restart: 1–3 min).
    #[arg(long, default_value = "10m", value_parser = crate::parse_duration)]
    ready_timeout: Duration,
    /// Go on even when no other replica of the pool would serve meanwhile (the queue holds
    /// the pool's requests until their queue timeout), and reload an engine whose jobs did not
    /// finish within the drain timeout.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    target: Target,
}

fn parse_engine_url(s: &str) -> Result<(String, String), String> {
    let (w, url) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected WORKER=URL"))?;
    Ok((w.to_owned(), url.to_owned()))
}

/// Who runs this (`user@host`).
pub fn author() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// The statuses of `pool`'s live workers (heartbeat within `worker.heartbeat_ttl`).
pub(crate) async fn live(
    redis: &Redis,
    config: &Config,
    pool: &str,
) -> anyhow::Result<Vec<WorkerStatus>> {
    let now = ssw_queue::now_ms();
    let ttl = config.worker.heartbeat_ttl.as_millis() as u64;
    Ok(redis
        .worker_statuses(pool)
        .await?
        .into_iter()
        .filter(|w| now.saturating_sub(w.heartbeat_ms) <= ttl)
        .collect())
}

/// The pool of `worker`: `--pool`, else the configured pool it reports in, else the pool it is
/// drained in.
async fn pool_of(
    redis: &Redis,
    config: &Config,
    worker: &str,
    pool: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(p) = pool {
        return Ok(p.to_owned());
    }
    for p in config.pools.keys() {
        if redis
            .worker_statuses(p)
            .await?
            .iter()
            .any(|w| w.worker == worker)
        {
            return Ok(p.clone());
        }
        if redis.drains(p).await?.iter().any(|(w, _)| w == worker) {
            return Ok(p.clone());
        }
    }
    let pools: Vec<&str> = config.pools.keys().map(String::as_str).collect();
    bail!(
        "no worker `{worker}` in the pools {} (`ssw status` lists them; give --pool for a worker that is not running)",
        pools.join(", ")
    )
}

/// Runs `ssw drain`.
pub async fn drain(args: DrainArgs) -> anyhow::Result<()> {
    let (config, redis) = args.target.open()?;
    let pool = pool_of(&redis, &config, &args.worker, args.pool.as_deref()).await?;
    let d = Drain {
        by: author(),
        reason: args.reason,
        at_ms: ssw_queue::now_ms(),
    };
    let in_force = match redis.drain(&pool, &args.worker, &d).await? {
        None => {
            println!(
                "{}: drained; it stops pulling at its next heartbeat and finishes its jobs (`ssw resume {}` ends it)",
                args.worker, args.worker
            );
            d
        }
        Some(before) => {
            println!("{}: already drained by {}", args.worker, before.by);
            before
        }
    };
    if !live(&redis, &config, &pool)
        .await?
        .iter()
        .any(|w| w.worker == args.worker)
    {
        eprintln!(
            "warning: no live worker `{}` in pool {pool}: the drain holds when it starts (`ssw resume {}` removes it)",
            args.worker, args.worker
        );
    }
    if let Some(limit) = args.wait {
        let fleet = Fleet {
            config,
            redis,
            pool,
        };
        fleet
            .until_drained(&args.worker, &in_force, limit)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        println!("{}: drained, nothing running", args.worker);
    }
    Ok(())
}

/// Runs `ssw resume`.
pub async fn resume(args: ResumeArgs) -> anyhow::Result<()> {
    let (config, redis) = args.target.open()?;
    let pool = pool_of(&redis, &config, &args.worker, args.pool.as_deref()).await?;
    if redis.resume(&pool, &args.worker).await? {
        println!(
            "{}: resumed; it pulls again from its next heartbeat",
            args.worker
        );
    } else {
        println!("{}: was not drained", args.worker);
    }
    Ok(())
}

/// One pool's workers, seen through Redis.
struct Fleet {
    config: Config,
    redis: Redis,
    pool: String,
}

/// Who a rollout's drains are by.
const ROLLOUT: &str = "rollout";

/// How often a rollout looks at heartbeats and engines.
const POLL: Duration = Duration::from_millis(200);

impl Fleet {
    /// `worker`'s last status if it is live (`None`: no live heartbeat). A Redis error is
    /// retried until `deadline`: a blip must not read as "the worker is gone".
    async fn status(
        &self,
        worker: &str,
        deadline: Instant,
    ) -> Result<Option<WorkerStatus>, String> {
        loop {
            match live(&self.redis, &self.config, &self.pool).await {
                Ok(all) => return Ok(all.into_iter().find(|w| w.worker == worker)),
                Err(e) if Instant::now() >= deadline => return Err(format!("redis: {e}")),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Waits until `worker` reports the drain `d` in force, its pull loop stopped and nothing
    /// running (the status is the worker's own, written after it read `d`: no clock compared).
    async fn until_drained(&self, worker: &str, d: &Drain, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let deadline = start + limit;
        let mut said = None;
        loop {
            match self.status(worker, deadline).await? {
                Some(w) if w.drain.as_ref() == Some(d) && w.state() == "drained" => return Ok(()),
                Some(w) => {
                    if said != Some(w.inflight) {
                        progress(worker, &format!("draining: {} jobs in flight", w.inflight));
                        said = Some(w.inflight);
                    }
                }
                None => {
                    return Err(format!(
                        "{worker}: no heartbeat (the worker is not running)"
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{worker}: still running jobs after {limit:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@=+,".contains(&b))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn progress(worker: &str, what: &str) {
    println!("[{worker}] {what}");
}

/// An engine as the rollout talks to it: the worker's engine client, for the calls a worker
/// never makes.
struct EngineClient(ssw_worker::engine::Engine);

/// How long one engine call may take (a weight reload: `--ready-timeout`).
const CALL: Duration = Duration::from_secs(60);

impl EngineClient {
    fn new(config: &Config, base: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let cfg = ssw_config::WorkerConfig {
            engine_url: base.to_owned(),
            ..config.worker.clone()
        };
        Ok(Self(ssw_worker::engine::Engine::new(&cfg, api_key)?))
    }

    /// The engine's served model, if it is healthy and says.
    async fn model(&self) -> Result<ssw_worker::engine::ServedModel, String> {
        self.0.health(CALL).await?;
        self.0.served_model(CALL).await.map(|(m, _)| m)
    }

    /// One POST; an error names `what`, and `on_404` says what a 404 means.
    async fn call(
        &self,
        what: &str,
        path: &str,
        body: Option<serde_json::Value>,
        timeout: Duration,
        on_404: &str,
    ) -> Result<(), String> {
        let mut req = self
            .0
            .http
            .post(format!("{}{path}", self.0.base))
            .timeout(timeout);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let r = req
            .send()
            .await
            .map_err(|e| format!("{what}: {}", ssw_worker::engine::error_chain(&e)))?;
        match r.status().as_u16() {
            200..=299 => Ok(()),
            404 if !on_404.is_empty() => Err(format!("{what}: 404 ({on_404})")),
            s => Err(format!(
                "{what} answered {s}: {}",
                r.text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            )),
        }
    }

    /// A one-token chat completion; how long it took.
    async fn smoke(&self, model: &str) -> Result<Duration, String> {
        let start = Instant::now();
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": "ssw rollout smoke test"}],
            "max_tokens": 1,
        });
        self.call(
            "smoke request",
            "/v1/chat/completions",
            Some(body),
            CALL,
            "",
        )
        .await?;
        Ok(start.elapsed())
    }

    /// vLLM's in-place weight reload (docs/features/sleep_mode.md: a level-2 sleep's wake-up
    /// sequence): the weights and KV cache are dropped, the weights woken and reloaded from
    /// `weights`, the KV cache woken, and the prefix cache (the old weights' KV) reset.
    async fn reload_weights(&self, weights: &str, timeout: Duration) -> Result<(), String> {
        const DEV: &str = "vLLM serves its engine API only with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1; or use --restart-cmd";
        let rpc = serde_json::json!({
            "method": "reload_weights",
            "kwargs": { "weights_path": weights, "is_checkpoint_format": true },
        });
        for (path, body, t) in [
            ("/sleep?level=2", None, CALL),
            ("/wake_up?tags=weights", None, CALL),
            ("/collective_rpc", Some(rpc), timeout),
            ("/wake_up?tags=kv_cache", None, CALL),
            ("/reset_prefix_cache", None, CALL),
        ] {
            self.call(path, path, body, t, DEV).await?;
        }
        Ok(())
    }

    /// Asks a stub to load `model` (`/stub/load_model`).
    async fn load(&self, model: &str, load_time: Option<Duration>) -> Result<(), String> {
        let mut body = serde_json::json!({ "model": model });
        if let Some(t) = load_time {
            body["load_time_ms"] = (t.as_millis() as u64).into();
        }
        self.call(
            "load request",
            "/stub/load_model",
            Some(body),
            CALL,
            "the engine has no load endpoint: `--engine-api` reloads stubs; restart vLLM with `--restart-cmd`, or give --weights",
        )
        .await
    }
}

/// Runs `ssw rollout`.
pub async fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    let (config, redis) = args.target.open()?;
    anyhow::ensure!(
        args.max_unavailable >= 1,
        "--max-unavailable must be at least 1"
    );
    if args.engine_api && args.model.is_none() && args.weights.is_none() {
        bail!(
            "--engine-api needs --model (the stub's model to load) or --weights (vLLM's checkpoint to reload)"
        );
    }
    let api_key = match &args.engine_api_key_file {
        Some(p) => Some(ssw_config::read_secret(p).context("--engine-api-key-file")?),
        None => config
            .worker
            .engine_api_key_file
            .as_deref()
            .map(ssw_config::read_secret)
            .transpose()
            .context("worker.engine_api_key_file")?,
    };
    let drain_timeout = args.drain_timeout.unwrap_or(config.worker.drain_timeout);
    let fleet = Fleet {
        redis,
        pool: args.pool.clone(),
        config,
    };
    let mut all = live(&fleet.redis, &fleet.config, &fleet.pool).await?;
    all.sort_by(|a, b| (&a.gpus, &a.worker).cmp(&(&b.gpus, &b.worker)));
    let order: Vec<WorkerStatus> = if args.workers.is_empty() {
        all.clone()
    } else {
        let mut out = Vec::new();
        for id in &args.workers {
            let w = all.iter().find(|w| &w.worker == id).with_context(|| {
                format!(
                    "--worker {id}: no live worker of pool {} by that id",
                    fleet.pool
                )
            })?;
            out.push(w.clone());
        }
        out
    };
    anyhow::ensure!(
        !order.is_empty(),
        "pool {}: no live worker to roll (`ssw status` shows the pool)",
        fleet.pool
    );
    let target = match (&args.model, &args.weights) {
        (Some(m), _) => m.clone(),
        (None, Some(w)) => format!("the weights in {w}"),
        (None, None) => "(the model each engine reports)".to_owned(),
    };
    println!(
        "rollout of pool {} to {target}: {} replicas, {} at a time",
        fleet.pool,
        order.len(),
        args.max_unavailable
    );
    let started = Instant::now();
    let plan = Plan {
        model: args.model.clone(),
        restart_cmd: args.restart_cmd.clone(),
        load_time: args.load_time,
        weights: args.weights.clone(),
        drain_timeout,
        ready_timeout: args.ready_timeout,
        api_key,
        engine_urls: args.engine_urls.clone(),
        force: args.force,
    };
    // Interrupted, it says what it leaves behind (a second Ctrl-C kills it as usual).
    let work = batches(&fleet, &order, args.max_unavailable, args.force, &plan);
    let done = tokio::select! {
        r = work => r?,
        _ = tokio::signal::ctrl_c() => {
            let drained: Vec<String> = fleet
                .redis
                .drains(&fleet.pool)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, d)| d.by == ROLLOUT)
                .map(|(w, _)| w)
                .collect();
            bail!(
                "interrupted: {} stay drained. Run the rollout again to finish (it takes over its own drains), or put a replica back as it is with `ssw resume WORKER`",
                if drained.is_empty() { "no replica".to_owned() } else { drained.join(", ") }
            );
        }
    };
    println!(
        "rollout done: {} of pool {} serve {target} ({:.1} s)",
        done.join(", "),
        fleet.pool,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Rolls `order` in batches of `max_unavailable`; the replicas done, or why it stopped.
async fn batches(
    fleet: &Fleet,
    order: &[WorkerStatus],
    max_unavailable: usize,
    force: bool,
    plan: &Plan,
) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for batch in order.chunks(max_unavailable) {
        let ids: Vec<&str> = batch.iter().map(|w| w.worker.as_str()).collect();
        let others = live(&fleet.redis, &fleet.config, &fleet.pool)
            .await?
            .into_iter()
            .filter(|w| !ids.contains(&w.worker.as_str()) && w.serving())
            .count();
        if others == 0 && !force {
            bail!(
                "taking out {} would leave pool {} with no serving replica (its requests would wait in the queue); stopped before it. Use --force to go on anyway{}",
                ids.join(", "),
                fleet.pool,
                if done.is_empty() {
                    String::new()
                } else {
                    format!(" (done so far: {})", done.join(", "))
                }
            );
        }
        let results =
            futures::future::join_all(batch.iter().map(|w| roll_one(fleet, w, plan))).await;
        let mut failed = Vec::new();
        for (w, r) in batch.iter().zip(results) {
            match r {
                Ok(()) => done.push(w.worker.clone()),
                Err(e) => failed.push((w.worker.clone(), e)),
            }
        }
        if !failed.is_empty() {
            let serving: Vec<String> = live(&fleet.redis, &fleet.config, &fleet.pool)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(WorkerStatus::serving)
                .map(|w| w.worker)
                .collect();
            let mut msg = String::from("rollout stopped:\n");
            for (w, e) in &failed {
                msg.push_str(&format!("  {w}: {e}\n"));
            }
            let names: Vec<&str> = failed.iter().map(|(w, _)| w.as_str()).collect();
            msg.push_str(&format!(
                "{} stay drained; pool {} serves on {}.\nReplicas done: {}.\nFix the engine, then run the rollout again (done replicas pass quickly), or put a replica back as it is with `ssw resume {}`.",
                names.join(", "),
                fleet.pool,
                if serving.is_empty() { "no replica (requests wait in the queue)".to_owned() } else { serving.join(", ") },
                if done.is_empty() { "none".to_owned() } else { done.join(", ") },
                names[0],
            ));
            bail!(msg);
        }
    }
    Ok(done)
}

/// What each replica of a rollout goes through.
struct Plan {
    model: Option<String>,
    restart_cmd: Option<String>,
    load_time: Option<Duration>,
    weights: Option<String>,
    drain_timeout: Duration,
    ready_timeout: Duration,
    api_key: Option<String>,
    engine_urls: Vec<(String, String)>,
    force: bool,
}

/// Drain → wait for its jobs → reload → wait until ready → resume. An error leaves it drained.
async fn roll_one(fleet: &Fleet, w: &WorkerStatus, plan: &Plan) -> Result<(), String> {
    let id = w.worker.as_str();
    let start = Instant::now();
    let url = plan
        .engine_urls
        .iter()
        .find(|(worker, _)| worker == id)
        .map_or(w.engine_url.as_str(), |(_, u)| u.as_str());
    let engine = EngineClient::new(&fleet.config, url, plan.api_key.as_deref())
        .map_err(|e| e.to_string())?;
    let d = Drain {
        by: ROLLOUT.into(),
        reason: format!("rollout by {}", author()),
        at_ms: ssw_queue::now_ms(),
    };
    // A drain a rollout left (a run that failed or was interrupted) is this rollout's to end;
    // an operator's is not.
    let (ours, d) = match fleet
        .redis
        .drain(&fleet.pool, id, &d)
        .await
        .map_err(|e| format!("cannot drain: {e}"))?
    {
        None => (true, d),
        Some(before) => (before.by == ROLLOUT, before),
    };
    if !ours {
        progress(
            id,
            &format!("already drained by {}: rolled, and left drained", d.by),
        );
    }
    progress(id, "drained: stops pulling, finishes its jobs");
    match fleet.until_drained(id, &d, plan.drain_timeout).await {
        Ok(()) => progress(
            id,
            &format!(
                "nothing running after {:.1} s",
                start.elapsed().as_secs_f64()
            ),
        ),
        Err(e) if plan.force => progress(
            id,
            &format!(
                "{e}: reloading anyway (--force; answers cut short fail, jobs without output run again)"
            ),
        ),
        Err(e) => {
            return Err(format!(
                "{e}: not reloading an engine with answers in flight (wait and run the rollout again, give a longer --drain-timeout, or --force)"
            ));
        }
    }
    let reload_at = Instant::now();
    if let Some(cmd) = &plan.restart_cmd {
        // Values come from Redis and the command line: quoted for the shell.
        let cmd = cmd
            .replace("{worker}", &sh_quote(id))
            .replace("{pool}", &sh_quote(&fleet.pool))
            .replace("{engine_url}", &sh_quote(url))
            .replace("{model}", &sh_quote(plan.model.as_deref().unwrap_or("")));
        progress(id, &format!("restarting the engine: {cmd}"));
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .status()
            .await
            .map_err(|e| format!("cannot run the restart command: {e}"))?;
        if !out.success() {
            return Err(format!("the restart command failed ({out})"));
        }
    } else if let Some(weights) = &plan.weights {
        progress(
            id,
            &format!("reloading the weights from {weights} through the engine's API"),
        );
        engine.reload_weights(weights, plan.ready_timeout).await?;
    } else if let Some(model) = &plan.model {
        progress(id, &format!("loading {model} through the engine's API"));
        engine.load(model, plan.load_time).await?;
    }
    // Ready: the engine is healthy, serves the expected model and answers; then the worker has
    // read that model (it sends requests with the engine's name).
    let mut last = String::new();
    let served = loop {
        let why = match engine.model().await {
            Ok(m) if plan.model.as_ref().is_some_and(|want| *want != m.name) => {
                format!(
                    "serves {}, waiting for {}",
                    m.name,
                    plan.model.as_deref().unwrap_or("")
                )
            }
            Ok(m) => match engine.smoke(&m.name).await {
                Ok(took) => {
                    progress(
                        id,
                        &format!(
                            "engine serves {} (revision {}); smoke request answered in {} ms",
                            m.name,
                            m.revision,
                            took.as_millis()
                        ),
                    );
                    break m;
                }
                Err(e) => e,
            },
            Err(e) => format!("engine not ready: {e}"),
        };
        if why != last {
            progress(id, &why);
            last = why;
        }
        if reload_at.elapsed() >= plan.ready_timeout {
            return Err(format!(
                "the engine did not serve{} within {:?} ({last})",
                plan.model
                    .as_deref()
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default(),
                plan.ready_timeout
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    let ready_by = reload_at + plan.ready_timeout;
    loop {
        match fleet.status(id, ready_by).await? {
            Some(s) if s.engine_up && s.served_model.as_deref() == Some(&served.name) => break,
            Some(_) => {}
            None => return Err("the worker stopped sending heartbeats".into()),
        }
        if reload_at.elapsed() >= plan.ready_timeout {
            return Err(format!(
                "the worker did not see its engine serve {} within {:?}",
                served.name, plan.ready_timeout
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    if ours {
        fleet
            .redis
            .resume(&fleet.pool, id)
            .await
            .map_err(|e| format!("cannot resume: {e}"))?;
        // Serving again (its heartbeat has seen the resume: it reports no drain, and it reported
        // this one before) before the next batch goes out.
        loop {
            match fleet.status(id, ready_by).await? {
                Some(s) if s.drain.is_none() && s.serving() => break,
                Some(_) => {}
                None => return Err("the worker stopped sending heartbeats".into()),
            }
            if reload_at.elapsed() >= plan.ready_timeout {
                return Err("the worker did not resume pulling".into());
            }
            tokio::time::sleep(POLL).await;
        }
        progress(
            id,
            &format!(
                "resumed, {:.1} s after its drain",
                start.elapsed().as_secs_f64()
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted_for_the_shell() {
        assert_eq!(sh_quote("heavy-0"), "heavy-0");
        assert_eq!(sh_quote("Qwen/Qwen2.5-14B"), "Qwen/Qwen2.5-14B");
        assert_eq!(sh_quote("http://127.0.0.1:8001"), "http://127.0.0.1:8001");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("x; rm -rf /"), "'x; rm -rf /'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
