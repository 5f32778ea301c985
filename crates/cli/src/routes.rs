//! `ssw routes apply|show|history|rollback`: routing settings changed without a restart.
//!
//! `apply` validates a routing document against the configuration with the same code as
//! `ssw check-config` (`Config::with_routing`), publishes it in Redis as the next version,
//! compare-and-swap on the version it was based on, and waits until every live gateway has it
//! in force or says why it refused it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ssw_config::routing::{GatewayStatus, Published};
use ssw_config::{Config, Routing};
use ssw_queue::Redis;
use ssw_queue::routing::Publish;

/// Options of `ssw routes`.
#[derive(Args, Debug)]
pub struct RoutesArgs {
    /// Config file (the gateways'; a document is validated against it).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Redis URL (`redis.url`).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    #[command(subcommand)]
    command: RoutesCommand,
}

#[derive(Subcommand, Debug)]
enum RoutesCommand {
    /// Validate a routing document (TOML: `[routes.*]`, `[pools.<p>]` served model, aliases and defaults,
    /// `[tenants.<t>]` tiers and limits) and publish it as the next version.
    Apply {
        /// The document.
        file: PathBuf,
        /// Why (kept in the history).
        #[arg(long, default_value = "")]
        reason: String,
        /// Publish only if this version is still in force (default: the one in force now).
        #[arg(long)]
        based_on: Option<u64>,
        /// Validate only.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for every live gateway to take it (0: do not wait).
        #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
        wait: Duration,
    },
    /// The version in force, its settings, and each gateway's version.
    Show,
    /// Versions Redis keeps, newest last.
    History,
    /// Publish an earlier version's settings again, as the next version.
    Rollback {
        /// The version whose settings come back.
        version: u64,
        /// Why (kept in the history).
        #[arg(long, default_value = "")]
        reason: String,
        /// How long to wait for every live gateway to take it (0: do not wait).
        #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
        wait: Duration,
    },
}

/// A gateway whose status is older than this is taken as gone.
const LIVE: Duration = Duration::from_secs(30);

/// Runs `ssw routes …`.
pub async fn run(args: RoutesArgs) -> anyhow::Result<()> {
    let mut fig = Config::figment(args.config.as_deref());
    if let Some(url) = &args.redis_url {
        fig = fig.merge(("redis.url", url.clone()));
    }
    let config = Config::from_figment(&fig)?;
    match args.command {
        RoutesCommand::Apply {
            file,
            reason,
            based_on,
            dry_run,
            wait,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            let routing = Routing::parse(&text).with_context(|| file.display().to_string())?;
            config.with_routing(&routing).with_context(|| {
                format!("{}: not valid against the configuration", file.display())
            })?;
            if dry_run {
                println!("{}: ok", file.display());
                return Ok(());
            }
            let redis = connect(&config)?;
            let based_on = match based_on {
                Some(v) => v,
                None => redis.routing_version().await?,
            };
            let version = publish(&redis, based_on, routing, reason).await?;
            wait_for(&redis, version, wait).await
        }
        RoutesCommand::Show => {
            let redis = connect(&config)?;
            print!("{}", show(&redis).await?);
            Ok(())
        }
        RoutesCommand::History => {
            let redis = connect(&config)?;
            let in_force = redis.routing_version().await?;
            println!(
                "{:>7}  {:>7}  {:<24} {:<20} REASON",
                "VERSION", "BASED", "PUBLISHED", "AUTHOR"
            );
            for (v, doc) in redis.routing_documents().await? {
                let mark = if v == in_force { "*" } else { " " };
                match serde_json::from_str::<Published>(&doc) {
                    Ok(p) => println!(
                        "{v:>6}{mark}  {:>7}  {:<24} {:<20} {}",
                        p.based_on,
                        when(p.created_ms),
                        p.author,
                        p.reason
                    ),
                    Err(e) => println!("{v:>6}{mark}  (unreadable: {e})"),
                }
            }
            Ok(())
        }
        RoutesCommand::Rollback {
            version,
            reason,
            wait,
        } => {
            let redis = connect(&config)?;
            let doc = redis
                .routing_document(version)
                .await?
                .with_context(|| format!("Redis no longer keeps routing version {version}"))?;
            let old: Published = serde_json::from_str(&doc)
                .with_context(|| format!("routing version {version} is unreadable"))?;
            config.with_routing(&old.routing).with_context(|| {
                format!("version {version} is not valid against the configuration")
            })?;
            let reason = format!(
                "rollback to {version}{}{reason}",
                if reason.is_empty() { "" } else { ": " }
            );
            let in_force = redis.routing_version().await?;
            let published = publish(&redis, in_force, old.routing, reason).await?;
            wait_for(&redis, published, wait).await
        }
    }
}

/// A Redis handle from a configuration's `[redis]` (its password file read).
pub fn connect(config: &Config) -> anyhow::Result<Redis> {
    let password = config
        .redis
        .password_file
        .as_deref()
        .map(ssw_config::read_secret)
        .transpose()?;
    Ok(Redis::new(&config.redis, password)?)
}

pub(crate) async fn publish(
    redis: &Redis,
    based_on: u64,
    routing: Routing,
    reason: String,
) -> anyhow::Result<u64> {
    let published = Published {
        based_on,
        author: crate::rollout::author(),
        reason,
        created_ms: ssw_queue::now_ms(),
        routing,
    };
    let doc = serde_json::to_string(&published)?;
    match redis.publish_routing(based_on, &doc).await? {
        Publish::Published(v) => {
            println!("published routing version {v} (based on {based_on})");
            Ok(v)
        }
        Publish::Conflict { in_force } => anyhow::bail!(
            "version {in_force} is in force, not {based_on}: someone published meanwhile; see `ssw routes show` and apply again"
        ),
    }
}

/// `$USER@host`.
/// Live gateways' statuses.
async fn gateways(redis: &Redis) -> anyhow::Result<Vec<(String, GatewayStatus)>> {
    let now = ssw_queue::now_ms();
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for (instance, json) in redis.routing_statuses().await? {
        match serde_json::from_str::<GatewayStatus>(&json) {
            Ok(s) if now.saturating_sub(s.at_ms) <= LIVE.as_millis() as u64 => {
                out.push((instance, s))
            }
            // Gone for ten times as long: forgotten.
            Ok(s) if now.saturating_sub(s.at_ms) > 10 * LIVE.as_millis() as u64 => {
                gone.push(instance)
            }
            _ => {}
        }
    }
    redis.forget_routing_statuses(&gone).await?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Waits until every live gateway has `version` in force (or refused it).
pub(crate) async fn wait_for(redis: &Redis, version: u64, wait: Duration) -> anyhow::Result<()> {
    if wait.is_zero() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let gws = gateways(redis).await?;
        let refused: Vec<_> = gws
            .iter()
            .filter_map(|(g, s)| {
                s.refused
                    .as_ref()
                    .filter(|r| r.0 == version)
                    .map(|r| (g, &r.1))
            })
            .collect();
        if !refused.is_empty() {
            let mut msg = String::new();
            for (g, why) in refused {
                let _ = writeln!(msg, "  {g}: {why}");
            }
            anyhow::bail!("gateways refused version {version} and keep their current one:\n{msg}");
        }
        let behind: Vec<&String> = gws
            .iter()
            .filter(|(_, s)| s.version < version)
            .map(|(g, _)| g)
            .collect();
        if behind.is_empty() {
            println!("{} gateway(s) have version {version} in force", gws.len());
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "after {wait:?}, gateways still without version {version}: {}",
                behind
                    .iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn show(redis: &Redis) -> anyhow::Result<String> {
    let mut out = String::new();
    let in_force = redis.routing_version().await?;
    if in_force == 0 {
        let _ = writeln!(
            out,
            "no routing version published: gateways use their config files' settings"
        );
    } else {
        let doc = redis.routing_document(in_force).await?.unwrap_or_default();
        match serde_json::from_str::<Published>(&doc) {
            Ok(p) => {
                let _ = writeln!(
                    out,
                    "routing version {in_force} (based on {}), published {} by {}{}",
                    p.based_on,
                    when(p.created_ms),
                    p.author,
                    if p.reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", p.reason)
                    }
                );
                let _ = writeln!(out, "\n{}", toml::to_string(&p.routing).unwrap_or_default());
            }
            Err(e) => {
                let _ = writeln!(out, "routing version {in_force}: unreadable ({e})");
            }
        }
    }
    let _ = writeln!(out, "{:<40} {:>8}  NOTE", "GATEWAY", "VERSION");
    for (g, s) in gateways(redis).await? {
        let note = match &s.refused {
            Some((v, why)) => format!("refused version {v}: {why}"),
            None if s.version != in_force => "behind".to_owned(),
            None => String::new(),
        };
        let _ = writeln!(out, "{g:<40} {:>8}  {note}", s.version);
    }
    Ok(out)
}

/// A Unix ms time as UTC `YYYY-MM-DD HH:MM:SS`.
fn when(ms: u64) -> String {
    let s = ms / 1000;
    let (days, rest) = (s / 86_400, s % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn when_prints_utc() {
        assert_eq!(super::when(0), "1970-01-01 00:00:00");
        assert_eq!(super::when(1_796_300_000_000), "2026-12-03 12:13:20");
    }
}
