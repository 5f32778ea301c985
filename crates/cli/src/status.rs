//! `ssw status`: pools and workers at a glance, from Redis.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use ssw_protocol::tier::Tier;
use ssw_queue::producer::PoolStats;

/// Options of `ssw status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    target: crate::rollout::Target,
    /// Refresh every interval until interrupted (e.g. `--watch` or `--watch 500ms`).
    #[arg(long, num_args = 0..=1, default_missing_value = "2s", value_parser = crate::parse_duration)]
    watch: Option<Duration>,
}

fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{:.0}m{:02.0}s", (s / 60.0).floor(), s % 60.0)
    }
}

fn opt(v: Option<f64>, fmt: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_owned(), fmt)
}

/// Renders the tables for these pools' statistics.
pub fn render(pools: &[(String, Result<PoolStats, String>)], now_ms: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>8} {:>10} {:>6} {:>8} {:>10}",
        "POOL", "BACKLOG", "PENDING", "OLDEST", "LIVE", "SERVING", "QUEUED MB"
    );
    for (name, stats) in pools {
        match stats {
            Ok(s) => {
                let oldest = s
                    .oldest_waiting_ms
                    .map_or_else(|| "-".to_owned(), |t| age(now_ms, t));
                let _ = writeln!(
                    out,
                    "{name:<12} {:>8} {:>8} {oldest:>10} {:>6} {:>8} {:>10.1}",
                    s.backlog,
                    s.pending,
                    s.workers.len(),
                    s.serving(),
                    s.queued_bytes as f64 / 1e6
                );
            }
            Err(e) => {
                let _ = writeln!(out, "{name:<12} unavailable: {e}");
            }
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:>8} {:>10}   TENANTS WAITING",
        "POOL", "TIER", "WAITING", "OLDEST"
    );
    for (name, stats) in pools {
        let Ok(s) = stats else { continue };
        for (tier, t) in Tier::ALL.into_iter().zip(&s.tiers) {
            let oldest = t
                .oldest_waiting_ms
                .map_or_else(|| "-".to_owned(), |ms| age(now_ms, ms));
            let tenants = if tier == Tier::Priority {
                let mut ts: Vec<_> = s.tenants.iter().filter(|(_, n)| *n > 0).collect();
                ts.sort();
                ts.iter()
                    .map(|(t, n)| format!("{t}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{name:<12} {:<9} {:>8} {oldest:>10}   {tenants}",
                tier.as_str(),
                t.waiting,
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<10} {:>9} {:>7} {:>7} {:>5} {:<6} {:>8} {:<8} MODEL (REVISION)",
        "WORKER",
        "POOL",
        "STATE",
        "INFLIGHT",
        "RUNNING",
        "WAITING",
        "KV",
        "GPUS",
        "BEAT",
        "VERSION"
    );
    for (_, stats) in pools {
        let Ok(s) = stats else { continue };
        let mut workers = s.workers.clone();
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        for w in workers {
            let state = match w.state() {
                "down" => "DOWN",
                s => s,
            };
            let model = match (&w.served_model, &w.revision) {
                (Some(m), Some(r)) => format!("{m} ({r})"),
                (Some(m), None) => m.clone(),
                _ => "-".to_owned(),
            };
            let gpus = if w.gpus.is_empty() {
                "-".to_owned()
            } else {
                w.gpus
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:<10} {:>9} {:>7} {:>7} {:>5} {:<6} {:>8} {:<8} {}",
                w.worker,
                w.pool,
                state,
                format!("{}/{}", w.inflight, w.max_inflight),
                opt(w.engine_running, |v| format!("{v:.0}")),
                opt(w.engine_waiting, |v| format!("{v:.0}")),
                opt(w.kv_cache_usage, |v| format!("{:.0}%", v * 100.0)),
                gpus,
                age(now_ms, w.heartbeat_ms),
                w.version,
                model,
            );
            if let (false, Some(d)) = (w.engine_up, &w.engine_detail) {
                let _ = writeln!(out, "    └ {d}");
            }
            if let Some(d) = &w.drain {
                let why = if d.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", d.reason)
                };
                let _ = writeln!(
                    out,
                    "    └ drained by {} {} ago{why} (`ssw resume {}`)",
                    d.by,
                    age(now_ms, d.at_ms),
                    w.worker
                );
            }
        }
    }
    out
}

/// Prints the tables once, or every `--watch` interval.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let (config, redis) = args.target.open()?;
    loop {
        let now = ssw_queue::now_ms();
        let mut pools = Vec::new();
        for name in config.pools.keys() {
            pools.push((
                name.clone(),
                redis.pool_stats(name, now).await.map_err(|e| e.to_string()),
            ));
        }
        let table = render(&pools, now);
        match args.watch {
            None => {
                print!("{table}");
                anyhow::ensure!(pools.iter().all(|(_, s)| s.is_ok()), "redis unavailable");
                return Ok(());
            }
            Some(every) => {
                // Clear the screen and home the cursor, like `watch`.
                print!("\x1b[2J\x1b[H{table}");
                tokio::time::sleep(every).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssw_protocol::heartbeat::WorkerStatus;
    use ssw_queue::producer::TierStats;

    fn worker(id: &str, up: bool) -> WorkerStatus {
        WorkerStatus {
            worker: id.into(),
            pool: "heavy".into(),
            engine_url: "http://x".into(),
            engine_up: up,
            engine_detail: (!up).then(|| "connection refused".into()),
            inflight: 3,
            max_inflight: 64,
            engine_running: Some(3.0),
            engine_waiting: Some(0.0),
            kv_cache_usage: Some(0.42),
            draining: false,
            drain: None,
            paused: false,
            served_model: Some("Qwen/Q".into()),
            revision: Some("0123456789ab".into()),
            gpus: vec![0],
            started_ms: 0,
            heartbeat_ms: 9_000,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn table_shows_queues_workers_and_why_an_engine_is_down() {
        let stats = PoolStats {
            backlog: 12,
            pending: 3,
            oldest_waiting_ms: Some(5_000),
            workers: vec![
                worker("heavy-1", false),
                worker("heavy-0", true),
                WorkerStatus {
                    drain: Some(ssw_protocol::heartbeat::Drain {
                        by: "ops@host".into(),
                        reason: "GPU swap".into(),
                        at_ms: 4_000,
                    }),
                    paused: true,
                    inflight: 0,
                    ..worker("heavy-2", true)
                },
            ],
            queued_bytes: 2_500_000,
            tiers: [
                TierStats {
                    waiting: 2,
                    oldest_waiting_ms: Some(9_000),
                },
                TierStats::default(),
                TierStats {
                    waiting: 10,
                    oldest_waiting_ms: Some(5_000),
                },
            ],
            tenants: vec![("studio-b".into(), 10), ("studio-a".into(), 2)],
        };
        let out = render(
            &[
                ("heavy".into(), Ok(stats)),
                ("light".into(), Err("down".into())),
            ],
            10_000,
        );
        assert!(
            out.contains("heavy              12        3       5.0s      3        1        2.5"),
            "{out}"
        );
        assert!(out.contains("light        unavailable: down"), "{out}");
        assert!(
            out.contains("heavy        priority         2       1.0s   studio-a=2 studio-b=10"),
            "{out}"
        );
        assert!(
            out.contains("heavy        flex            10       5.0s"),
            "{out}"
        );
        let h0 = out.find("heavy-0").unwrap();
        let h1 = out.find("heavy-1").unwrap();
        assert!(h0 < h1, "workers sorted");
        assert!(out.contains("3/64"), "{out}");
        assert!(out.contains("42%"), "{out}");
        assert!(out.contains("DOWN"), "{out}");
        assert!(out.contains("└ connection refused"), "{out}");
        assert!(out.contains("Qwen/Q (0123456789ab)"), "{out}");
        assert!(out.contains("heavy-2          heavy    drained"), "{out}");
        assert!(
            out.contains("└ drained by ops@host 6.0s ago: GPU swap (`ssw resume heavy-2`)"),
            "{out}"
        );
    }
}
