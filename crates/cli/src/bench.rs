//! `ssw bench`: load for any OpenAI-compatible endpoint.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use ssw_bench::{Length, Mode, Options};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Closed,
    Open,
    Burst,
}

/// Options of `ssw bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Base URL of an OpenAI-compatible API (the gateway, a stub, a vLLM), including `/v1`.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1")]
    url: String,
    /// closed: fixed concurrency; open: fixed or Poisson arrival rate; burst: all at once.
    #[arg(long, value_enum, default_value_t = ModeArg::Closed)]
    mode: ModeArg,
    /// Clients in closed mode.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Arrivals per second in open mode.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Poisson arrivals in open mode (else evenly spaced).
    #[arg(long)]
    poisson: bool,
    /// Requests to measure (burst: the burst size).
    #[arg(long, short = 'n')]
    requests: Option<usize>,
    /// Measure for this long instead (e.g. `30s`).
    #[arg(long, value_parser = crate::parse_duration)]
    duration: Option<Duration>,
    /// Requests sent before measuring, not counted.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Stream answers (with `stream_options.include_usage`).
    #[arg(long)]
    stream: bool,
    /// Models and weights, e.g. `light=0.7,heavy=0.3` (or one model name).
    #[arg(long, default_value = "heavy")]
    mix: String,
    /// Service tiers and weights, sent as `service_tier`, e.g. `priority=0.2,default=0.3,flex=0.5`
    /// (none: no `service_tier`); the report summarises each tier.
    #[arg(long)]
    tier_mix: Option<String>,
    /// Distinct users: each request carries `user = "player-<k>"` (k random below N), so a
    /// route keeps each user on one variant; the report summarises each variant that served.
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Bearer token to send (a tenant's API key).
    #[arg(long)]
    api_key: Option<String>,
    /// Prompt length in words: N, LO-HI (uniform), or a weighted mix `16:9,1000-1200:1`.
    #[arg(long, default_value = "32")]
    prompt_words: Length,
    /// `max_tokens` per request: N, LO-HI (uniform), or a weighted mix `16:9,1000-1200:1`.
    #[arg(long, default_value = "16")]
    max_tokens: Length,
    /// Gateway metrics to sample queue depth and queue wait from (default: derived from
    /// --url; `none` to skip, e.g. against an engine).
    #[arg(long)]
    metrics_url: Option<String>,
    /// Per-request timeout.
    #[arg(long, value_parser = crate::parse_duration, default_value = "300s")]
    timeout: Duration,
    /// Write the full report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write latency and queue depth over time as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
    /// Pad each request body to about this many bytes (e.g. `2000000`).
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Hold this many connections open, idle, during the run.
    #[arg(long, default_value_t = 0)]
    hold_idle: usize,
    /// Of the held connections, this many send half a request head first.
    #[arg(long, default_value_t = 0)]
    hold_slow: usize,
    /// Hold this many streaming requests whose responses are never read.
    #[arg(long, default_value_t = 0)]
    hold_unread: usize,
    /// `max_tokens` of each unread stream.
    #[arg(long, default_value_t = 2000)]
    hold_unread_tokens: u32,
    /// Model of the unread streams (default: the first of --mix).
    #[arg(long)]
    hold_model: Option<String>,
}

fn parse_mix(s: &str) -> anyhow::Result<Vec<(String, f64)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| match part.split_once('=') {
            Some((m, w)) => Ok((
                m.trim().to_owned(),
                w.trim()
                    .parse::<f64>()
                    .with_context(|| format!("--mix: weight of `{m}`"))?,
            )),
            None => Ok((part.trim().to_owned(), 1.0)),
        })
        .collect()
}

/// Runs the benchmark and prints the table.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let url = a.url.trim_end_matches('/').to_owned();
    let metrics_url = match a.metrics_url.as_deref() {
        Some("none") => None,
        Some(u) => Some(u.to_owned()),
        None => Some(format!("{}/metrics", url.trim_end_matches("/v1"))),
    };
    let opts = Options {
        mode: match a.mode {
            ModeArg::Closed => Mode::Closed {
                concurrency: a.concurrency,
            },
            ModeArg::Open => Mode::Open {
                rate: a.rate,
                poisson: a.poisson,
            },
            ModeArg::Burst => Mode::Burst,
        },
        url,
        requests: a.requests,
        duration: a.duration,
        warmup: a.warmup,
        stream: a.stream,
        mix: parse_mix(&a.mix)?,
        tiers: a
            .tier_mix
            .as_deref()
            .map(parse_mix)
            .transpose()?
            .unwrap_or_default(),
        users: a.users,
        api_key: a.api_key,
        prompt_words: a.prompt_words,
        max_tokens: a.max_tokens,
        metrics_url,
        timeout: a.timeout,
        progress: !a.quiet,
        body_bytes: a.body_bytes,
        hold: ssw_bench::hold::Hold {
            idle: a.hold_idle,
            slow: a.hold_slow,
            unread: a.hold_unread,
            unread_tokens: a.hold_unread_tokens,
        },
        hold_model: a.hold_model,
    };
    let report = ssw_bench::run(opts).await.map_err(anyhow::Error::msg)?;
    print!("{}", report.table());
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = a.plot {
        std::fs::write(&path, report.svg())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
