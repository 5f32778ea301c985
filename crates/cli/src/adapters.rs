//! `ssw adapters list|load|unload --pool P`: a pool's LoRA adapters at runtime. `load` loads
//! the adapter on every live engine of the pool (vLLM's `/v1/load_lora_adapter`, which needs
//! `VLLM_ALLOW_RUNTIME_LORA_UPDATING`), then publishes a routing version that names it, so
//! gateways route it only once every engine holds it; `unload` publishes the version without it
//! first, then unloads it from the engines. Nothing restarts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ssw_config::routing::{Published, Routing};
use ssw_config::{AdapterConfig, Config};

/// `ssw adapters`.
#[derive(Args, Debug)]
pub struct AdaptersArgs {
    /// Configuration file (the gateway's: its pools and Redis).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Redis URL (over the configuration's).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// The key the engines require (default: `worker.engine_api_key_file` of the config).
    #[arg(long, global = true)]
    engine_api_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: AdaptersCommand,
}

#[derive(Subcommand, Debug)]
enum AdaptersCommand {
    /// The pool's adapters as routed, and as each engine holds them.
    List {
        /// The pool.
        #[arg(long)]
        pool: String,
    },
    /// Load an adapter on every engine of the pool, then route it.
    Load {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// The adapter's name (what clients send as `model`).
        name: String,
        /// Where the engines load it from (a path on the GPU hosts, or a Hugging Face repo).
        #[arg(long)]
        source: String,
        /// Its LoRA rank (at most the engines' `--max-lora-rank`).
        #[arg(long, default_value_t = 16)]
        rank: u32,
        /// How long to wait for every gateway to route it.
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        wait: Duration,
    },
    /// Stop routing an adapter, then unload it from every engine of the pool.
    Unload {
        /// The pool.
        #[arg(long)]
        pool: String,
        /// The adapter's name.
        name: String,
        /// How long to wait for every gateway to stop routing it.
        #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
        wait: Duration,
    },
}

/// Runs `ssw adapters`.
pub async fn run(args: AdaptersArgs) -> anyhow::Result<()> {
    let mut fig = Config::figment(args.config.as_deref());
    if let Some(url) = &args.redis_url {
        fig = fig.merge(("redis.url", url.clone()));
    }
    let config = Config::from_figment(&fig)?;
    let key = match args
        .engine_api_key_file
        .as_ref()
        .or(config.worker.engine_api_key_file.as_ref())
    {
        Some(p) => Some(ssw_config::read_secret(p).context("engine API key file")?),
        None => None,
    };
    let redis = crate::routes::connect(&config)?;
    let (in_force, mut routing) = match redis.routing_version().await? {
        0 => (0, config.routing()),
        v => {
            let doc = redis
                .routing_document(v)
                .await?
                .with_context(|| format!("Redis no longer keeps routing version {v}"))?;
            (v, serde_json::from_str::<Published>(&doc)?.routing)
        }
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let post = |url: String, body: serde_json::Value| {
        let mut r = http
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(k) = &key {
            r = r.bearer_auth(k);
        }
        async move {
            let r = r.send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.text().await.unwrap_or_default()))
        }
    };
    match args.command {
        AdaptersCommand::List { pool } => {
            let routed = adapters_of(&routing, &config, &pool)?;
            println!("routed in pool {pool} (routing version {in_force}):");
            for (name, a) in &routed {
                println!("  {name}  rank {}  {}", a.rank, a.source);
            }
            for w in crate::rollout::live(&redis, &config, &pool).await? {
                let mut r = http.get(format!("{}/v1/models", w.engine_url));
                if let Some(k) = &key {
                    r = r.bearer_auth(k);
                }
                let held: Vec<String> = match r.send().await {
                    Ok(resp) => {
                        ssw_worker::engine::parse_adapters(&resp.bytes().await.unwrap_or_default())
                    }
                    Err(e) => vec![format!("(unreachable: {e})")],
                };
                println!("engine of {}: {}", w.worker, held.join(", "));
            }
            Ok(())
        }
        AdaptersCommand::Load {
            pool,
            name,
            source,
            rank,
            wait,
        } => {
            let mut adapters = adapters_of(&routing, &config, &pool)?;
            adapters.insert(
                name.clone(),
                AdapterConfig {
                    source: source.clone(),
                    rank,
                },
            );
            routing.pools.entry(pool.clone()).or_default().adapters = Some(adapters);
            config
                .with_routing(&routing)
                .context("the adapter is not valid against the configuration")?;
            let workers = crate::rollout::live(&redis, &config, &pool).await?;
            anyhow::ensure!(!workers.is_empty(), "pool {pool} has no live worker");
            for w in &workers {
                let body = serde_json::json!({"lora_name": name, "lora_path": source});
                let (status, text) = post(format!("{}/v1/load_lora_adapter", w.engine_url), body)
                    .await
                    .with_context(|| format!("engine of {}", w.worker))?;
                // vLLM answers 400 for a name it holds already: loaded, as asked.
                if status != 200 && !text.contains("already been loaded") {
                    anyhow::bail!(
                        "engine of {} refused to load {name}: {status} {text}",
                        w.worker
                    );
                }
                println!("engine of {}: {name} loaded", w.worker);
            }
            let v = crate::routes::publish(
                &redis,
                in_force,
                routing,
                format!("adapter {name} loaded on {} engines", workers.len()),
            )
            .await?;
            crate::routes::wait_for(&redis, v, wait).await
        }
        AdaptersCommand::Unload { pool, name, wait } => {
            let mut adapters = adapters_of(&routing, &config, &pool)?;
            anyhow::ensure!(
                adapters.remove(&name).is_some(),
                "pool {pool} routes no adapter {name}"
            );
            routing.pools.entry(pool.clone()).or_default().adapters = Some(adapters);
            config.with_routing(&routing)?;
            let v = crate::routes::publish(
                &redis,
                in_force,
                routing,
                format!("adapter {name} unloaded"),
            )
            .await?;
            crate::routes::wait_for(&redis, v, wait).await?;
            for w in crate::rollout::live(&redis, &config, &pool).await? {
                let body = serde_json::json!({"lora_name": name});
                let (status, text) = post(format!("{}/v1/unload_lora_adapter", w.engine_url), body)
                    .await
                    .with_context(|| format!("engine of {}", w.worker))?;
                if status != 200 && status != 404 {
                    anyhow::bail!(
                        "engine of {} refused to unload {name}: {status} {text}",
                        w.worker
                    );
                }
                println!("engine of {}: {name} unloaded", w.worker);
            }
            Ok(())
        }
    }
}

/// The pool's adapters under `routing` (the configuration's where it says none).
fn adapters_of(
    routing: &Routing,
    config: &Config,
    pool: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, AdapterConfig>> {
    let configured = config
        .pools
        .get(pool)
        .with_context(|| format!("no pool {pool} in the configuration"))?;
    Ok(routing
        .pools
        .get(pool)
        .and_then(|p| p.adapters.clone())
        .unwrap_or_else(|| configured.adapters.clone()))
}
