//! Queue depth and queue wait from the gateway's `/metrics`, sampled during a run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Samples `ssw_queue_backlog` (summed over pools) every 250 ms.
pub struct Sampler {
    client: reqwest::Client,
    url: String,
    depth: Arc<Mutex<Vec<(f64, f64)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Sum of a metric's series (optionally only `_bucket` series, grouped by `le`) in Prometheus text.
fn sum_of(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.split('{').next() == Some(name)
            && let Ok(v) = value.parse::<f64>()
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

/// Cumulative buckets `(le, count)` of a histogram, summed over its other labels.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&bucket)) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(le) = series
            .split("le=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        else {
            continue;
        };
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        match by_le.iter_mut().find(|(l, _)| *l == le) {
            Some(e) => e.1 += v,
            None => by_le.push((le, v)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// `after − before`, bucket by bucket.
pub fn delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, a)| {
            (
                *le,
                a - before.iter().find(|(l, _)| l == le).map_or(0.0, |b| b.1),
            )
        })
        .collect()
}

impl Sampler {
    /// Starts sampling.
    pub fn start(client: reqwest::Client, url: String) -> Self {
        let depth = Arc::new(Mutex::new(Vec::new()));
        let (c, u, d) = (client.clone(), url.clone(), depth.clone());
        let task = tokio::spawn(async move {
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                if let Ok(r) = c.get(&u).timeout(Duration::from_secs(2)).send().await
                    && let Ok(text) = r.text().await
                    && let Some(v) = sum_of(&text, "ssw_queue_backlog")
                {
                    d.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((t0.elapsed().as_secs_f64(), v));
                }
            }
        });
        Self {
            client,
            url,
            depth,
            task,
        }
    }

    /// The queue-wait histogram now.
    pub async fn queue_wait_buckets(&self) -> Option<Vec<(f64, f64)>> {
        let text = self
            .client
            .get(&self.url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(buckets(&text, "ssw_gateway_queue_wait_seconds"))
    }

    /// Stops sampling; returns `(seconds, depth)` samples.
    pub async fn stop(&self) -> Vec<(f64, f64)> {
        self.task.abort();
        self.depth.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_summed_over_pools_and_differenced() {
        let text = "# TYPE x histogram\n\
            ssw_gateway_queue_wait_seconds_bucket{pool=\"heavy\",le=\"0.1\"} 2\n\
            ssw_gateway_queue_wait_seconds_bucket{pool=\"light\",le=\"0.1\"} 3\n\
            ssw_gateway_queue_wait_seconds_bucket{pool=\"heavy\",le=\"+Inf\"} 4\n\
            ssw_gateway_queue_wait_seconds_bucket{pool=\"light\",le=\"+Inf\"} 6\n\
            ssw_queue_backlog{pool=\"heavy\"} 7\nssw_queue_backlog{pool=\"light\"} 5\n";
        let b = buckets(text, "ssw_gateway_queue_wait_seconds");
        assert_eq!(b, vec![(0.1, 5.0), (f64::INFINITY, 10.0)]);
        assert_eq!(
            delta(&[(0.1, 1.0), (f64::INFINITY, 4.0)], &b),
            vec![(0.1, 4.0), (f64::INFINITY, 6.0)]
        );
        assert_eq!(sum_of(text, "ssw_queue_backlog"), Some(12.0));
        assert_eq!(sum_of(text, "nope"), None);
    }
}
