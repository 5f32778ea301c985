//! `ssw up`: the whole platform on this machine, in one command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ssw_config::{Config, Role, StubConfig};
use ssw_up::platform::{EngineSpec, Platform, PlatformSpec};

/// Options of `ssw up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Config file (pools, timeouts); its `gateway.listen` applies unless --listen is given.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Gateway address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Use this Redis instead of starting a redis-server.
    #[arg(long)]
    redis_url: Option<String>,
    /// Point a pool's replicas at a real engine instead of stubs: `POOL=URL` (repeatable; one
    /// worker per occurrence).
    #[arg(long = "engine", value_parser = parse_engine)]
    engines: Vec<(String, String)>,
    /// Stub time to first token.
    #[arg(long, value_parser = crate::parse_duration, default_value = "20ms")]
    stub_ttft: Duration,
    /// Stub time per output token.
    #[arg(long, value_parser = crate::parse_duration, default_value = "5ms")]
    stub_tpot: Duration,
    /// Stub answer length in tokens.
    #[arg(long, default_value_t = 16)]
    stub_output_tokens: u32,
}

fn parse_engine(s: &str) -> Result<(String, String), String> {
    let (pool, url) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected POOL=URL"))?;
    Ok((pool.to_owned(), url.to_owned()))
}

/// Runs the platform until SIGINT/SIGTERM, restarting processes that die.
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut config = Config::from_figment(&Config::figment(args.config.as_deref()))?;
    if let Some(l) = args.listen {
        config.gateway.listen = l;
    }
    config.validate(Role::Gateway)?;
    let stub = StubConfig {
        ttft: args.stub_ttft,
        tpot: args.stub_tpot,
        output_tokens: args.stub_output_tokens,
        ..StubConfig::default()
    };
    let ssw = std::env::current_exe().context("locating the ssw binary")?;
    let mut spec = PlatformSpec::a40_stubs(ssw, config, stub);
    spec.redis_url = args.redis_url;
    for (pool, _) in &args.engines {
        anyhow::ensure!(
            spec.config.pools.contains_key(pool),
            "--engine {pool}=…: no pool `{pool}`"
        );
    }
    if !args.engines.is_empty() {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        spec.replicas
            .retain(|r| !args.engines.iter().any(|(p, _)| *p == r.pool));
        for (pool, url) in args.engines {
            let n = counts.entry(pool.clone()).or_default();
            spec.replicas.push(ssw_up::platform::ReplicaSpec {
                id: format!("{pool}-{n}"),
                pool,
                engine: EngineSpec::External(url),
                gpus: Vec::new(),
            });
            *n += 1;
        }
    }
    let shutdown = crate::shutdown_on_signals()?;
    let mut platform = Platform::start(spec).await?;
    tokio::select! {
        r = platform.wait_ready(Duration::from_secs(60)) => r?,
        _ = shutdown.cancelled() => {
            platform.shutdown(Duration::from_secs(10)).await;
            return Ok(());
        }
    }
    println!("ready: {}/v1", platform.gateway_url);
    println!(
        "redis: {}   (ssw status --redis-url {} --watch)",
        platform.redis_url, platform.redis_url
    );
    // A process that dies is started again with back-off, as systemd does on the appliance;
    // the others keep serving.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                for line in platform.supervise().await {
                    eprintln!("{line}");
                }
            }
        }
    }
    eprintln!("stopping…");
    platform.shutdown(Duration::from_secs(30)).await;
    Ok(())
}
