//! `ssw bench`: a load generator for any OpenAI-compatible chat-completions endpoint (the
//! gateway, a stub engine, a real vLLM).
//!
//! # Layout
//! - this file: [`Options`], [`run`], one request's measurement.
//! - [`stats`]: percentiles of samples and of Prometheus histograms.
//! - [`report`]: the [`report::Report`], its table, JSON and SVG plot.
//! - [`scrape`]: queue depth and queue wait from the gateway's `/metrics` during the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

pub mod hold;
pub mod report;
pub mod scrape;
pub mod stats;

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed number of clients, each sending its next request when the last one ends.
    Closed {
        /// Clients.
        concurrency: usize,
    },
    /// Requests arrive at `rate` per second regardless of answers (fixed spacing or Poisson).
    Open {
        /// Requests per second.
        rate: f64,
        /// Exponential inter-arrival times instead of fixed spacing.
        poisson: bool,
    },
    /// Every request released at once.
    Burst,
}

/// A length: fixed, uniform in a range, or a weighted mix of those (e.g. mostly short answers
/// and a few very long ones).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum Length {
    /// Always this.
    Fixed(u32),
    /// Uniform in `lo..=hi`.
    Uniform(u32, u32),
    /// `(lo, hi, weight)`: a range picked with probability `weight / Σ weights`.
    Mix(Vec<(u32, u32, f64)>),
}

impl Length {
    fn sample(&self) -> u32 {
        match self {
            Length::Fixed(n) => *n,
            Length::Uniform(lo, hi) => fastrand::u32(*lo..=*hi),
            Length::Mix(parts) => {
                let total: f64 = parts.iter().map(|p| p.2).sum();
                let mut x = fastrand::f64() * total;
                for &(lo, hi, w) in parts {
                    if x < w {
                        return fastrand::u32(lo..=hi);
                    }
                    x -= w;
                }
                let &(lo, hi, _) = parts.last().expect("a mix has parts");
                fastrand::u32(lo..=hi)
            }
        }
    }

    /// The expected value.
    pub fn mean(&self) -> f64 {
        match self {
            Length::Fixed(n) => f64::from(*n),
            Length::Uniform(lo, hi) => (f64::from(*lo) + f64::from(*hi)) / 2.0,
            Length::Mix(parts) => {
                let total: f64 = parts.iter().map(|p| p.2).sum();
                parts
                    .iter()
                    .map(|&(lo, hi, w)| w * (f64::from(lo) + f64::from(hi)) / 2.0)
                    .sum::<f64>()
                    / total
            }
        }
    }
}

impl std::str::FromStr for Length {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("`{s}`: {why} (expected N, LO-HI, or a mix like 16:9,1000:1)");
        let num = |x: &str| x.trim().parse::<u32>().map_err(|_| bad("not a count"));
        let range = |x: &str| match x.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (num(lo)?, num(hi)?);
                if lo > hi {
                    return Err(bad("LO must not exceed HI"));
                }
                Ok((lo, hi))
            }
            None => num(x).map(|n| (n, n)),
        };
        if !s.contains([',', ':']) {
            let (lo, hi) = range(s)?;
            return Ok(if lo == hi && !s.contains('-') {
                Length::Fixed(lo)
            } else {
                Length::Uniform(lo, hi)
            });
        }
        let parts = s
            .split(',')
            .map(|part| {
                let (r, w) = part.split_once(':').unwrap_or((part, "1"));
                let w: f64 = w
                    .trim()
                    .parse()
                    .map_err(|_| bad("weight is not a number"))?;
                if !(w.is_finite() && w > 0.0) {
                    return Err(bad("weights must be positive"));
                }
                let (lo, hi) = range(r)?;
                Ok((lo, hi, w))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Length::Mix(parts))
    }
}

/// What to run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Options {
    /// Base URL including `/v1`.
    pub url: String,
    /// Load shape.
    pub mode: Mode,
    /// Requests to measure (after warm-up).
    pub requests: Option<usize>,
    /// Or: measure for this long.
    pub duration: Option<Duration>,
    /// Requests sent first and not counted.
    pub warmup: usize,
    /// Stream answers (with usage).
    pub stream: bool,
    /// Models and their weights (e.g. light 0.7, heavy 0.3).
    pub mix: Vec<(String, f64)>,
    /// Service tiers and their weights, sent as `service_tier` (empty: none sent).
    pub tiers: Vec<(String, f64)>,
    /// Distinct users: each request carries `user = "player-<k>"`, k drawn from 0..users (0:
    /// no `user`), so a route assigns each user one variant.
    pub users: usize,
    /// Bearer token sent with every request (a tenant's key).
    #[serde(skip)]
    pub api_key: Option<String>,
    /// Prompt length in words.
    pub prompt_words: Length,
    /// `max_tokens` of each request.
    pub max_tokens: Length,
    /// Gateway `/metrics` to sample queue depth from (none: skip).
    pub metrics_url: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Progress on stderr.
    pub progress: bool,
    /// Pad each request body to about this many bytes (one long word in the message, so the
    /// prompt's token count stays as asked); 0: no padding.
    pub body_bytes: usize,
    /// Connections and streams held open during the run ([`hold::Hold`]).
    pub hold: hold::Hold,
    /// The model of the unread streams (default: the first of the mix).
    pub hold_model: Option<String>,
}

/// One request's measurement.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Sample {
    /// Start, seconds since the measured run began.
    pub start_s: f64,
    /// Time to the first answer chunk (streams) or the whole answer.
    pub ttft_s: f64,
    /// End to end.
    pub e2e_s: f64,
    /// Mean gap between streamed events.
    pub itl_s: Option<f64>,
    /// Output tokens (from usage, else counted events).
    pub output_tokens: u64,
    /// HTTP status (0: no response).
    pub status: u16,
    /// Error code from an OpenAI error body, or the transport error.
    pub error: Option<String>,
    /// The model asked for.
    pub model: String,
    /// The `service_tier` asked for, if any.
    pub tier: Option<String>,
    /// `x-ssw-worker`, when present.
    pub worker: Option<String>,
    /// `x-ssw-queue-ms` (how long the request waited for a worker), when present.
    pub queue_ms: Option<f64>,
    /// `x-ssw-variant` (the route's variant that served), when present.
    pub variant: Option<String>,
}

fn pick_model(mix: &[(String, f64)]) -> String {
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    let mut x = fastrand::f64() * total;
    for (m, w) in mix {
        if x < *w {
            return m.clone();
        }
        x -= w;
    }
    mix.last().map(|(m, _)| m.clone()).unwrap_or_default()
}

fn body(opts: &Options, model: &str, tier: Option<&str>) -> String {
    let words = opts.prompt_words.sample().max(1) as usize;
    let prompt = "npc dialogue word ".repeat(words.div_ceil(3));
    let mut content = prompt.trim_end().to_owned();
    if opts.body_bytes > content.len() + 128 {
        content.push(' ');
        content.push_str(&"p".repeat(opts.body_bytes - content.len() - 128));
    }
    let mut b = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": opts.max_tokens.sample().max(1),
        "stream": opts.stream,
    });
    if opts.stream {
        b["stream_options"] = serde_json::json!({"include_usage": true});
    }
    if let Some(t) = tier {
        b["service_tier"] = serde_json::json!(t);
    }
    if opts.users > 0 {
        b["user"] = serde_json::json!(format!("player-{}", fastrand::usize(..opts.users)));
    }
    b.to_string()
}

fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/code").and_then(|c| {
        c.as_str()
            .map(str::to_owned)
            .or_else(|| Some(c.to_string()))
    })
}

fn count_events(chunk: &[u8]) -> usize {
    chunk.windows(6).filter(|w| *w == b"data: ").count()
}

/// Sends one request and measures it.
pub async fn one(client: &reqwest::Client, opts: &Options, t0: Instant) -> Sample {
    let model = pick_model(&opts.mix);
    let tier = (!opts.tiers.is_empty()).then(|| pick_model(&opts.tiers));
    let started = Instant::now();
    let mut s = Sample {
        start_s: (started - t0).as_secs_f64(),
        model: model.clone(),
        tier: tier.clone(),
        ..Sample::default()
    };
    let mut req = client
        .post(format!("{}/chat/completions", opts.url))
        .header("content-type", "application/json")
        .body(body(opts, &model, tier.as_deref()))
        .timeout(opts.timeout);
    if let Some(k) = &opts.api_key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            s.error = Some(if e.is_timeout() {
                "timeout".into()
            } else {
                "connect".into()
            });
            s.e2e_s = started.elapsed().as_secs_f64();
            return s;
        }
    };
    s.status = resp.status().as_u16();
    s.worker = resp
        .headers()
        .get("x-ssw-worker")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    s.queue_ms = resp
        .headers()
        .get("x-ssw-queue-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    s.variant = resp
        .headers()
        .get("x-ssw-variant")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ok = resp.status().is_success();
    let mut body = resp.bytes_stream();
    let mut all = Vec::new();
    let mut first: Option<Instant> = None;
    let mut last: Option<Instant> = None;
    let mut gaps = 0.0;
    let mut gap_events = 0usize;
    let mut events = 0usize;
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            s.error = Some("body".into());
            break;
        };
        let now = Instant::now();
        let n = count_events(&chunk);
        if opts.stream && ok {
            if let Some(l) = last {
                gaps += (now - l).as_secs_f64();
                gap_events += n.max(1);
            }
            first.get_or_insert(now);
            last = Some(now);
            events += n;
        }
        all.extend_from_slice(&chunk);
    }
    let end = Instant::now();
    s.e2e_s = (end - started).as_secs_f64();
    s.ttft_s = first.map_or(s.e2e_s, |f| (f - started).as_secs_f64());
    s.itl_s = (gap_events > 0).then(|| gaps / gap_events as f64);
    if !ok {
        s.error = error_code(&all).or_else(|| Some(format!("http_{}", s.status)));
        return s;
    }
    // A stream that ends with an error event (a failure after the head) is an error too.
    if opts.stream {
        let text = String::from_utf8_lossy(&all);
        if let Some(err) = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .find(|d| d.starts_with("{\"error\""))
        {
            s.error = error_code(err.as_bytes()).or(Some("stream_error".into()));
        }
        s.output_tokens = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .find_map(|v| {
                v.pointer("/usage/completion_tokens")
                    .and_then(|c| c.as_u64())
            })
            .unwrap_or(events.saturating_sub(2) as u64);
    } else {
        s.output_tokens = serde_json::from_slice::<serde_json::Value>(&all)
            .ok()
            .and_then(|v| {
                v.pointer("/usage/completion_tokens")
                    .and_then(|c| c.as_u64())
            })
            .unwrap_or(0);
    }
    s
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
pub fn cpu_seconds() -> f64 {
    proc_cpu_seconds("self").unwrap_or(0.0)
}

/// CPU seconds (user + system) of process `pid` (`"self"` for this one).
pub fn proc_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / if hz > 0.0 { hz } else { 100.0 })
}

async fn offer(
    client: &reqwest::Client,
    opts: &Options,
    count: Option<usize>,
    until: Option<Instant>,
    t0: Instant,
    done: Arc<AtomicUsize>,
) -> Vec<Sample> {
    let more =
        |sent: usize| count.is_none_or(|c| sent < c) && until.is_none_or(|u| Instant::now() < u);
    match opts.mode {
        Mode::Closed { concurrency } => {
            let sent = Arc::new(AtomicUsize::new(0));
            let tasks = (0..concurrency.max(1)).map(|_| {
                let (client, opts, sent, done) =
                    (client.clone(), opts.clone(), sent.clone(), done.clone());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    loop {
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        if !(count.is_none_or(|c| n < c)
                            && until.is_none_or(|u| Instant::now() < u))
                        {
                            return out;
                        }
                        out.push(one(&client, &opts, t0).await);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
            let mut all = Vec::new();
            for t in futures::future::join_all(tasks).await {
                all.extend(t.unwrap_or_default());
            }
            all
        }
        Mode::Open { rate, poisson } => {
            let mut tasks = Vec::new();
            let mut next = Instant::now();
            let mut sent = 0;
            while more(sent) {
                tokio::time::sleep_until(next).await;
                let (client, opts, done) = (client.clone(), opts.clone(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let s = one(&client, &opts, t0).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    s
                }));
                sent += 1;
                let gap = if poisson {
                    -(1.0 - fastrand::f64()).ln() / rate
                } else {
                    1.0 / rate
                };
                next += Duration::from_secs_f64(gap.max(0.0));
            }
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect()
        }
        Mode::Burst => {
            let n = count.unwrap_or(1000);
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (client, opts, done) = (client.clone(), opts.clone(), done.clone());
                    tokio::spawn(async move {
                        let s = one(&client, &opts, t0).await;
                        done.fetch_add(1, Ordering::Relaxed);
                        s
                    })
                })
                .collect();
            futures::future::join_all(tasks)
                .await
                .into_iter()
                .filter_map(Result::ok)
                .collect()
        }
    }
}

/// Runs the warm-up, then the measured load, and reports.
pub async fn run(opts: Options) -> Result<report::Report, String> {
    if opts.mix.is_empty() {
        return Err("--mix: at least one model".into());
    }
    if opts.requests.is_none() && opts.duration.is_none() && opts.mode != Mode::Burst {
        return Err("give --requests or --duration".into());
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    if opts.warmup > 0 {
        let mut w = opts.clone();
        w.mode = match opts.mode {
            Mode::Closed { concurrency } => Mode::Closed { concurrency },
            _ => Mode::Closed { concurrency: 8 },
        };
        offer(
            &client,
            &w,
            Some(opts.warmup),
            None,
            Instant::now(),
            Arc::new(AtomicUsize::new(0)),
        )
        .await;
    }
    let held = if opts.hold.any() {
        let addr = hold::addr_of(&opts.url)?;
        let model = opts
            .hold_model
            .clone()
            .unwrap_or_else(|| opts.mix[0].0.clone());
        let h = hold::open(addr, opts.hold, &model).await;
        if opts.progress {
            eprintln!(
                "holding {} connections open ({} could not be opened)",
                h.conns.len(),
                h.failed
            );
        }
        Some(h)
    } else {
        None
    };
    let sampler = opts
        .metrics_url
        .clone()
        .map(|u| scrape::Sampler::start(client.clone(), u));
    let before = match &sampler {
        Some(s) => s.queue_wait_buckets().await,
        None => None,
    };
    let done = Arc::new(AtomicUsize::new(0));
    let progress = opts
        .progress
        .then(|| report::progress(done.clone(), opts.requests, opts.duration));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let until = opts.duration.map(|d| t0 + d);
    let samples = offer(&client, &opts, opts.requests, until, t0, done).await;
    let wall = t0.elapsed();
    let cpu = cpu_seconds() - cpu0;
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let (depth, after) = match &sampler {
        Some(s) => (s.stop().await, s.queue_wait_buckets().await),
        None => (Vec::new(), None),
    };
    let queue_wait = match (before, after) {
        (Some(b), Some(a)) => Some(scrape::delta(&b, &a)),
        _ => None,
    };
    let held_open = held.as_ref().map_or(0, |h| h.conns.len());
    drop(held);
    let mut errors = BTreeMap::new();
    for s in samples.iter().filter(|s| s.error.is_some()) {
        let key = format!("{} {}", s.status, s.error.as_deref().unwrap_or(""));
        *errors.entry(key).or_insert(0usize) += 1;
    }
    let mut report = report::Report::new(opts, samples, wall, cpu, errors, depth, queue_wait);
    report.held_open = held_open;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::Length;

    #[test]
    fn lengths_parse_fixed_uniform_and_weighted_mixes() {
        assert_eq!("16".parse(), Ok(Length::Fixed(16)));
        assert_eq!("8-400".parse(), Ok(Length::Uniform(8, 400)));
        assert_eq!(
            "16:9,1000-1200:1".parse(),
            Ok(Length::Mix(vec![(16, 16, 9.0), (1000, 1200, 1.0)]))
        );
        assert_eq!(
            "4,8".parse(),
            Ok(Length::Mix(vec![(4, 4, 1.0), (8, 8, 1.0)]))
        );
        for bad in ["", "x", "9-3", "16:0", "16:-1", "16:w", "16:9,"] {
            let err = bad.parse::<Length>().expect_err(bad);
            assert!(err.contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn a_mix_is_sampled_in_proportion_to_its_weights() {
        fastrand::seed(7);
        let mix: Length = "16:9,1000:1".parse().unwrap();
        let n = 20_000;
        let long = (0..n).filter(|_| mix.sample() == 1000).count();
        // 10 % expected; the binomial standard deviation is about 0.2 % here.
        assert!((1_800..2_200).contains(&long), "{long} long of {n}");
        assert!((mix.mean() - 114.4).abs() < 1e-9, "{}", mix.mean());
        let uniform: Length = "10-20".parse().unwrap();
        assert!(
            (0..1000)
                .map(|_| uniform.sample())
                .all(|x| (10..=20).contains(&x))
        );
    }
}
