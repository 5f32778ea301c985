//! `ssw`: one binary, one subcommand per role. Parses arguments and configuration, sets up
//! logging and signals, and hands over to the role's library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use figment::Figment;
use ssw_config::{Config, Role};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc's malloc: the relay's many short-lived buffers cost glibc's
/// allocator (`_int_malloc`, `malloc_consolidate`) about a quarter of a worker's CPU time;
/// `scripts/bench.py` measured the platform's CPU per request about 9 % lower with it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod adapters;
mod bench;
mod limits;
mod listen;
mod rollout;
mod routes;
mod status;
mod telemetry;
mod up;

#[derive(Parser, Debug)]
#[command(
    name = "ssw",
    version,
    about = "SSW inference platform: OpenAI gateway → Redis queues → workers → vLLM"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = telemetry::LogFormat::Auto)]
    log_format: telemetry::LogFormat,
    /// Log level when RUST_LOG is not set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the OpenAI-compatible gateway.
    Gateway {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address (`gateway.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Redis URL (`redis.url`).
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Run a worker in front of one engine.
    Worker {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Pool to serve (`worker.pool`).
        #[arg(long)]
        pool: Option<String>,
        /// Worker id (`worker.id`).
        #[arg(long)]
        id: Option<String>,
        /// Engine base URL (`worker.engine_url`).
        #[arg(long)]
        engine_url: Option<String>,
        /// Redis URL (`redis.url`).
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Run the stub engine (a vLLM stand-in).
    Stub {
        /// Config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address (`stub.listen`).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Served model name (`stub.served_model`).
        #[arg(long)]
        served_model: Option<String>,
    },
    /// Run the whole platform locally: Redis, two stub engines per pool, workers, gateway.
    Up(up::UpArgs),
    /// Load-test an OpenAI-compatible endpoint (gateway, stub or vLLM).
    Bench(Box<bench::BenchArgs>),
    /// Show pools (backlog, pending, oldest job) and workers (engine, slots, GPU) from Redis.
    Status(status::StatusArgs),
    /// Change routes, aliases, request defaults and tenants' limits without a restart.
    Routes(routes::RoutesArgs),
    /// List, load or unload a pool's LoRA adapters without a restart.
    Adapters(adapters::AdaptersArgs),
    /// Stop a worker pulling jobs (it finishes what it runs; kept across its restarts).
    Drain(rollout::DrainArgs),
    /// Let a drained worker pull jobs again.
    Resume(rollout::ResumeArgs),
    /// Reload a pool's engines one batch of replicas at a time, the queue holding the load.
    Rollout(Box<rollout::RolloutArgs>),
    /// Validate a config file for a role; names the bad field.
    CheckConfig {
        /// The file.
        file: PathBuf,
        /// Role to check for (default: every role the file configures).
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum RoleArg {
    Gateway,
    Worker,
    Stub,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Gateway => Role::Gateway,
            RoleArg::Worker => Role::Worker,
            RoleArg::Stub => Role::Stub,
        }
    }
}

/// Loads the configuration: defaults → file → `SSW_` env → CLI overrides; then validates.
fn load(
    file: Option<&PathBuf>,
    overrides: &[(&str, Option<String>)],
    role: Role,
) -> anyhow::Result<Config> {
    let mut fig: Figment = Config::figment(file.map(PathBuf::as_path));
    for (key, value) in overrides {
        if let Some(v) = value {
            fig = fig.merge((*key, v.clone()));
        }
    }
    let config = Config::from_figment(&fig)?;
    config.validate(role)?;
    Ok(config)
}

/// Cancelled on the first SIGTERM or SIGINT.
fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        t.cancel();
    });
    Ok(token)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, &cli.log_level);
    if matches!(
        cli.command,
        Command::Gateway { .. } | Command::Worker { .. } | Command::Stub { .. } | Command::Up(_)
    ) {
        match limits::raise_nofile_limit() {
            Ok((before, after)) if before != after => {
                tracing::debug!(
                    before,
                    after,
                    "raised the open-files soft limit to the hard limit"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot raise the open-files limit: {e}"),
        }
    }
    // The gateway's configuration decides its runtime, so it is read first.
    let gateway = match &cli.command {
        Command::Gateway {
            config,
            listen,
            redis_url,
        } => {
            let (file, listen, redis_url) = (config.clone(), *listen, redis_url.clone());
            let reload = move || gateway_config(file.as_ref(), listen, redis_url.clone());
            match reload() {
                Ok(cfg) => Some((cfg, reload)),
                Err(e) => return fail(&e),
            }
        }
        _ => None,
    };
    // A worker relays at most `max_inflight` jobs between Redis and one engine: one thread does
    // that with no cross-thread wake-ups (measured: less CPU per request than two threads). The
    // gateway takes `gateway.threads`; everything else scales over the host's cores.
    let threads = match (&cli.command, &gateway) {
        (Command::Worker { .. }, _) => Some(1),
        (_, Some((cfg, _))) => Some(cfg.gateway.threads).filter(|n| *n > 0),
        _ => None,
    };
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match gateway {
        Some((cfg, reload)) => runtime.block_on(run_gateway(cfg, reload)),
        None => runtime.block_on(run(cli.command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    tracing::error!("{e:#}");
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

fn gateway_config(
    config: Option<&PathBuf>,
    listen: Option<SocketAddr>,
    redis_url: Option<String>,
) -> anyhow::Result<Config> {
    load(
        config,
        &[
            ("gateway.listen", listen.map(|a| a.to_string())),
            ("redis.url", redis_url),
        ],
        Role::Gateway,
    )
}

async fn run_gateway(
    cfg: Config,
    reload: impl Fn() -> anyhow::Result<Config> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signals()?;
    let listener = listen::listener(cfg.gateway.listen, "gateway.listen", "gateway").await?;
    let ops = match cfg.gateway.ops_listen {
        Some(addr) => Some(listen::listener(addr, "gateway.ops_listen", "ops").await?),
        None => None,
    };
    let grace = cfg.gateway.shutdown_timeout;
    let state = ssw_gateway::AppState::new(cfg)?;
    reload_on_sighup(state.clone(), reload)?;
    let serve = ssw_gateway::serve(listener, ops, state, shutdown.clone());
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => r.context("gateway"),
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            anyhow::bail!("responses still in flight after gateway.shutdown_timeout ({grace:?})");
        }
    }
}

/// On SIGHUP, reads the gateway's configuration again and puts its reloadable settings in
/// force; names the changed settings that need a restart.
fn reload_on_sighup(
    state: ssw_gateway::AppState,
    reload: impl Fn() -> anyhow::Result<Config> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the configuration again");
            let _ = state.reload_file(reload().map_err(|e| format!("{e:#}")));
        }
    });
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Gateway { .. } => unreachable!("the gateway runs through run_gateway"),
        Command::Worker {
            config,
            pool,
            id,
            engine_url,
            redis_url,
        } => {
            let cfg = load(
                config.as_ref(),
                &[
                    ("worker.pool", pool),
                    ("worker.id", id),
                    ("worker.engine_url", engine_url),
                    ("redis.url", redis_url),
                ],
                Role::Worker,
            )?;
            let shutdown = shutdown_on_signals()?;
            let metrics = match cfg.worker.listen {
                Some(addr) => Some(listen::listener(addr, "worker.listen", "worker").await?),
                None => listen::inherited("worker")?,
            };
            ssw_worker::run(cfg, metrics, shutdown).await?;
            Ok(())
        }
        Command::Stub {
            config,
            listen,
            served_model,
        } => {
            let cfg = load(
                config.as_ref(),
                &[
                    ("stub.listen", listen.map(|a| a.to_string())),
                    ("stub.served_model", served_model),
                ],
                Role::Stub,
            )?;
            let shutdown = shutdown_on_signals()?;
            let listener = listen::listener(cfg.stub.listen, "stub.listen", "stub").await?;
            ssw_stub::serve(listener, cfg.stub, shutdown).await?;
            Ok(())
        }
        Command::Up(args) => up::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Routes(args) => routes::run(args).await,
        Command::Adapters(args) => adapters::run(args).await,
        Command::Drain(args) => rollout::drain(args).await,
        Command::Resume(args) => rollout::resume(args).await,
        Command::Rollout(args) => rollout::rollout(*args).await,
        Command::Bench(args) => bench::run(*args).await,
        Command::CheckConfig { file, role } => check_config(&file, role),
    }
}

fn check_config(file: &std::path::Path, role: Option<RoleArg>) -> anyhow::Result<()> {
    anyhow::ensure!(file.is_file(), "{}: no such file", file.display());
    let fig = Config::file_figment(Some(file));
    let config = Config::from_figment(&fig).with_context(|| format!("{}", file.display()))?;
    let roles: Vec<Role> = match role {
        Some(r) => vec![r.into()],
        None if config.worker.pool.is_some() => vec![Role::Gateway, Role::Worker, Role::Stub],
        None => vec![Role::Gateway, Role::Stub],
    };
    for role in roles {
        config
            .validate(role)
            .with_context(|| format!("{} (as {role:?} config)", file.display()))?;
    }
    println!("{}: ok", file.display());
    Ok(())
}

/// Parses `1s`, `250ms`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}
