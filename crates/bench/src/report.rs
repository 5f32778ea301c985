//! The benchmark report: a table for people, JSON for machines, an SVG plot of latency and
//! queue depth over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::stats::{Summary, histogram_quantile};
use crate::{Options, Sample};

/// Queue figures scraped from the gateway.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Queue {
    /// Largest backlog seen (summed over pools).
    pub max_depth: f64,
    /// Queue wait percentiles of this run, seconds.
    pub wait_p50_s: Option<f64>,
    /// p90.
    pub wait_p90_s: Option<f64>,
    /// p99.
    pub wait_p99_s: Option<f64>,
}

/// The bench's own CPU use.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cpu {
    /// CPU seconds used by `ssw bench` during the run.
    pub seconds: f64,
    /// CPU seconds per wall second (1.0 = one core busy).
    pub cores: f64,
    /// CPU milliseconds per request.
    pub per_request_ms: f64,
}

/// The figures of one group of requests (a tier asked for, a route's variant that served).
#[derive(Clone, Debug, Serialize)]
pub struct TierReport {
    /// Requests sent.
    pub requests: usize,
    /// Answered without error.
    pub ok: usize,
    /// Output tokens of its answers.
    pub output_tokens: u64,
    /// Time to first token, ms.
    pub ttft_ms: Summary,
    /// Inter-token latency, ms (streams).
    pub itl_ms: Summary,
    /// End-to-end latency, ms.
    pub e2e_ms: Summary,
}

impl TierReport {
    /// The figures of `samples`.
    fn of(samples: &[&Sample]) -> Self {
        let good: Vec<&&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
        let ms = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
            good.iter()
                .filter_map(|s| f(s))
                .map(|v| v * 1000.0)
                .collect()
        };
        Self {
            requests: samples.len(),
            ok: good.len(),
            output_tokens: good.iter().map(|s| s.output_tokens).sum(),
            ttft_ms: Summary::of(&ms(&|s| Some(s.ttft_s))),
            itl_ms: Summary::of(&ms(&|s| s.itl_s)),
            e2e_ms: Summary::of(&ms(&|s| Some(s.e2e_s))),
        }
    }

    /// `samples` grouped by `key` (those without one left out).
    fn by(samples: &[Sample], key: impl Fn(&Sample) -> Option<&String>) -> BTreeMap<String, Self> {
        let mut groups: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
        for s in samples {
            if let Some(k) = key(s) {
                groups.entry(k.clone()).or_default().push(s);
            }
        }
        groups.into_iter().map(|(k, v)| (k, Self::of(&v))).collect()
    }
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was run.
    pub options: Options,
    /// Measured wall time, seconds.
    pub duration_s: f64,
    /// Requests measured.
    pub requests: usize,
    /// Requests answered without error.
    pub ok: usize,
    /// Errors by `"<status> <code>"`.
    pub errors: BTreeMap<String, usize>,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Time to first token, ms.
    pub ttft_ms: Summary,
    /// Inter-token latency, ms (streams).
    pub itl_ms: Summary,
    /// End-to-end latency, ms.
    pub e2e_ms: Summary,
    /// Time each request waited for a worker, ms (`x-ssw-queue-ms`; empty against an engine).
    pub queue_ms: Summary,
    /// Queue figures from the gateway (absent against an engine).
    pub queue: Option<Queue>,
    /// The bench's own CPU use.
    pub bench_cpu: Cpu,
    /// Requests by the worker that answered (`x-ssw-worker`).
    pub by_worker: BTreeMap<String, usize>,
    /// Per `service_tier` asked for (with `--tier-mix`).
    pub by_tier: BTreeMap<String, TierReport>,
    /// Per route variant that served (`x-ssw-variant`; errors before routing have none).
    pub by_variant: BTreeMap<String, TierReport>,
    /// Every request (for the plot).
    pub samples: Vec<Sample>,
    /// Queue depth over time `(s, depth)`.
    pub depth: Vec<(f64, f64)>,
    /// Connections held open during the run (`--hold-*`).
    pub held_open: usize,
}

impl Report {
    /// Computes the report.
    pub fn new(
        options: Options,
        samples: Vec<Sample>,
        wall: Duration,
        cpu: f64,
        errors: BTreeMap<String, usize>,
        depth: Vec<(f64, f64)>,
        queue_wait: Option<Vec<(f64, f64)>>,
    ) -> Self {
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.error.is_none()).collect();
        let ms = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
            ok.iter().filter_map(|s| f(s)).map(|v| v * 1000.0).collect()
        };
        let secs = wall.as_secs_f64().max(1e-9);
        let tokens: u64 = ok.iter().map(|s| s.output_tokens).sum();
        let mut by_worker = BTreeMap::new();
        for s in &ok {
            if let Some(w) = &s.worker {
                *by_worker.entry(w.clone()).or_insert(0) += 1;
            }
        }
        let by_tier = TierReport::by(&samples, |s| s.tier.as_ref());
        let by_variant = TierReport::by(&samples, |s| s.variant.as_ref());
        let queue = options.metrics_url.as_ref().map(|_| Queue {
            max_depth: depth.iter().map(|d| d.1).fold(0.0, f64::max),
            wait_p50_s: queue_wait
                .as_deref()
                .and_then(|b| histogram_quantile(0.5, b)),
            wait_p90_s: queue_wait
                .as_deref()
                .and_then(|b| histogram_quantile(0.9, b)),
            wait_p99_s: queue_wait
                .as_deref()
                .and_then(|b| histogram_quantile(0.99, b)),
        });
        Self {
            duration_s: secs,
            requests: samples.len(),
            ok: ok.len(),
            errors,
            requests_per_s: samples.len() as f64 / secs,
            output_tokens_per_s: tokens as f64 / secs,
            ttft_ms: Summary::of(&ms(&|s| Some(s.ttft_s))),
            itl_ms: Summary::of(&ms(&|s| s.itl_s)),
            e2e_ms: Summary::of(&ms(&|s| Some(s.e2e_s))),
            queue_ms: Summary::of(&ok.iter().filter_map(|s| s.queue_ms).collect::<Vec<_>>()),
            queue,
            bench_cpu: Cpu {
                seconds: cpu,
                cores: cpu / secs,
                per_request_ms: if samples.is_empty() {
                    0.0
                } else {
                    cpu * 1000.0 / samples.len() as f64
                },
            },
            by_worker,
            by_tier,
            by_variant,
            options,
            samples,
            depth,
            held_open: 0,
        }
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "target      {}  ({:?}, stream={})",
            self.options.url, self.options.mode, self.options.stream
        );
        let _ = writeln!(
            o,
            "requests    {} in {:.2}s, {} ok, {} errors",
            self.requests,
            self.duration_s,
            self.ok,
            self.requests - self.ok
        );
        let _ = writeln!(
            o,
            "throughput  {:.1} req/s, {:.0} output tokens/s",
            self.requests_per_s, self.output_tokens_per_s
        );
        let _ = writeln!(
            o,
            "{:<12}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency ms", "p50", "p90", "p99", "max", "mean"
        );
        for (name, s) in [
            ("ttft", &self.ttft_ms),
            ("itl", &self.itl_ms),
            ("e2e", &self.e2e_ms),
        ] {
            if s.count > 0 {
                let _ = writeln!(
                    o,
                    "{name:<12}{:>10.2}{:>10.2}{:>10.2}{:>10.2}{:>10.2}",
                    s.p50, s.p90, s.p99, s.max, s.mean
                );
            }
        }
        if let Some(q) = &self.queue {
            let f =
                |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{:.1}ms", v * 1000.0));
            let _ = writeln!(
                o,
                "queue       max depth {:.0}, wait p50 {} p90 {} p99 {}",
                q.max_depth,
                f(q.wait_p50_s),
                f(q.wait_p90_s),
                f(q.wait_p99_s)
            );
        }
        for (k, n) in &self.errors {
            let _ = writeln!(o, "error       {k}: {n}");
        }
        if !self.by_worker.is_empty() {
            let parts: Vec<String> = self
                .by_worker
                .iter()
                .map(|(w, n)| format!("{w} {n}"))
                .collect();
            let _ = writeln!(o, "workers     {}", parts.join(", "));
        }
        let _ = writeln!(
            o,
            "bench cpu   {:.2}s ({:.2} cores, {:.3} ms/request)",
            self.bench_cpu.seconds, self.bench_cpu.cores, self.bench_cpu.per_request_ms
        );
        o
    }

    /// SVG: end-to-end latency of every request over time (errors in red), and queue depth
    /// over time.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (900.0, 260.0, 50.0);
        // Streams: time to first token (what a player waits for); else the whole answer.
        let stream = self.options.stream;
        let lat = |s: &Sample| if stream { s.ttft_s } else { s.e2e_s };
        let t_max = self
            .samples
            .iter()
            .map(|s| s.start_s + lat(s))
            .chain(self.depth.iter().map(|d| d.0))
            .fold(0.001f64, f64::max);
        let lat_max = self
            .samples
            .iter()
            .map(|s| lat(s) * 1000.0)
            .fold(1.0f64, f64::max);
        let depth_max = self.depth.iter().map(|d| d.1).fold(1.0f64, f64::max);
        let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
        let mut o = String::new();
        let _ = write!(
            o,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"#,
            2.0 * h + 20.0
        );
        let _ = write!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let lat_title = if stream {
            "time to first token (ms) over time (s)"
        } else {
            "end-to-end latency (ms) over time (s)"
        };
        for (i, (title, unit_max)) in [
            (lat_title, lat_max),
            ("queue depth over time (s)", depth_max),
        ]
        .iter()
        .enumerate()
        {
            let top = i as f64 * (h + 20.0);
            let y0 = top + h - pad / 2.0;
            let _ = write!(
                o,
                r#"<text x="{pad}" y="{}" font-weight="bold">{title}</text>"#,
                top + 16.0
            );
            let _ = write!(
                o,
                r##"<line x1="{pad}" y1="{y0}" x2="{}" y2="{y0}" stroke="#444"/><line x1="{pad}" y1="{}" x2="{pad}" y2="{y0}" stroke="#444"/>"##,
                w - pad,
                top + 24.0
            );
            let _ = write!(
                o,
                r#"<text x="{}" y="{}" text-anchor="end">{:.0}</text><text x="{}" y="{}" text-anchor="end">0</text>"#,
                pad - 4.0,
                top + 30.0,
                unit_max,
                pad - 4.0,
                y0
            );
            let _ = write!(
                o,
                r#"<text x="{}" y="{}" text-anchor="end">{:.1}s</text>"#,
                w - pad,
                y0 + 14.0,
                t_max
            );
        }
        let y_lat = |v: f64| (h - pad / 2.0) - (h - pad / 2.0 - 24.0) * v / lat_max;
        for s in &self.samples {
            let color = if s.error.is_some() {
                "#d62728"
            } else {
                "#1f77b4"
            };
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}" fill-opacity="0.6"/>"#,
                x(s.start_s + lat(s)),
                y_lat(lat(s) * 1000.0)
            );
        }
        if !self.depth.is_empty() {
            let top = h + 20.0;
            let y_d = |v: f64| top + (h - pad / 2.0) - (h - pad / 2.0 - 24.0) * v / depth_max;
            let pts: Vec<String> = self
                .depth
                .iter()
                .map(|(t, d)| format!("{:.1},{:.1}", x(*t), y_d(*d)))
                .collect();
            let _ = write!(
                o,
                r##"<polyline fill="none" stroke="#2ca02c" stroke-width="1.5" points="{}"/>"##,
                pts.join(" ")
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

/// Prints progress on stderr every 250 ms until aborted.
pub fn progress(
    done: Arc<AtomicUsize>,
    total: Option<usize>,
    duration: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let t0 = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let n = done.load(Ordering::Relaxed);
            let frac = match (total, duration) {
                (Some(t), _) if t > 0 => n as f64 / t as f64,
                (_, Some(d)) => t0.elapsed().as_secs_f64() / d.as_secs_f64(),
                _ => 0.0,
            }
            .min(1.0);
            let bar = "#".repeat((frac * 30.0) as usize);
            eprint!(
                "\r[{bar:<30}] {n} done, {:.0} req/s   ",
                n as f64 / t0.elapsed().as_secs_f64().max(1e-3)
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Length, Mode};

    fn opts() -> Options {
        Options {
            url: "http://x/v1".into(),
            mode: Mode::Closed { concurrency: 2 },
            requests: Some(4),
            duration: None,
            warmup: 0,
            stream: true,
            mix: vec![("heavy".into(), 1.0)],
            tiers: Vec::new(),
            users: 0,
            api_key: None,
            prompt_words: Length::Fixed(10),
            max_tokens: Length::Fixed(16),
            metrics_url: Some("http://x/metrics".into()),
            timeout: Duration::from_secs(1),
            progress: false,
            body_bytes: 0,
            hold: crate::hold::Hold::default(),
            hold_model: None,
        }
    }

    fn sample(start: f64, e2e: f64, err: bool) -> Sample {
        Sample {
            start_s: start,
            ttft_s: e2e / 4.0,
            e2e_s: e2e,
            itl_s: Some(0.01),
            output_tokens: 16,
            status: if err { 429 } else { 200 },
            error: err.then(|| "queue_full".into()),
            model: "heavy".into(),
            tier: Some(if err { "flex" } else { "priority" }.into()),
            worker: (!err).then(|| "heavy-0".into()),
            queue_ms: (!err).then_some(start * 10.0),
            variant: (!err).then(|| "heavy".into()),
        }
    }

    #[test]
    fn report_figures_follow_from_the_samples() {
        let samples = vec![
            sample(0.0, 0.1, false),
            sample(0.1, 0.2, false),
            sample(0.2, 0.3, false),
            sample(0.3, 0.0, true),
        ];
        let mut errors = BTreeMap::new();
        errors.insert("429 queue_full".into(), 1);
        let r = Report::new(
            opts(),
            samples,
            Duration::from_secs(2),
            0.5,
            errors,
            vec![(0.0, 3.0), (0.5, 7.0)],
            Some(vec![(0.1, 1.0), (f64::INFINITY, 3.0)]),
        );
        assert_eq!((r.requests, r.ok), (4, 3));
        assert_eq!(r.requests_per_s, 2.0);
        assert_eq!(r.output_tokens_per_s, 24.0);
        assert_eq!(r.e2e_ms.p50, 200.0);
        assert_eq!(r.e2e_ms.max, 300.0);
        assert_eq!(r.by_worker["heavy-0"], 3);
        assert_eq!((r.queue_ms.count, r.queue_ms.max), (3, 2.0));
        let (p, f) = (&r.by_tier["priority"], &r.by_tier["flex"]);
        assert_eq!((p.requests, p.ok, p.output_tokens), (3, 3, 48));
        assert_eq!(p.e2e_ms.max, 300.0);
        assert_eq!((f.requests, f.ok), (1, 0));
        let q = r.queue.clone().unwrap();
        assert_eq!(q.max_depth, 7.0);
        assert_eq!(q.wait_p99_s, Some(0.1));
        assert_eq!(r.bench_cpu.per_request_ms, 125.0);
        let t = r.table();
        assert!(
            t.contains("4 in 2.00s, 3 ok, 1 errors") && t.contains("error       429 queue_full: 1"),
            "{t}"
        );
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 4);
        assert_eq!(svg.matches("#d62728").count(), 1, "one error dot");
        assert!(svg.contains("<polyline"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["errors"]["429 queue_full"], 1);
    }
}
