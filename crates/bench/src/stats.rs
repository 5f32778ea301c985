//! Percentiles of samples and of Prometheus histograms.

use serde::Serialize;

/// p50/p90/p95/p99/max/mean of a set of samples (in the samples' unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile (what a route's guard compares).
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentile (`q` in 0–1) of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Summarises samples.
    pub fn of(samples: &[f64]) -> Self {
        let mut s: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if s.is_empty() {
            return Self::default();
        }
        s.sort_by(f64::total_cmp);
        Self {
            count: s.len(),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            p50: percentile(&s, 0.50),
            p90: percentile(&s, 0.90),
            p95: percentile(&s, 0.95),
            p99: percentile(&s, 0.99),
            max: s[s.len() - 1],
        }
    }
}

/// Quantile `q` of a cumulative histogram (`(upper bound, cumulative count)`, sorted by bound,
/// `+Inf` last), interpolating linearly inside the bucket, as Prometheus' `histogram_quantile`.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_input() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let s = Summary::of(&samples);
        assert_eq!(
            (s.count, s.p50, s.p90, s.p99, s.max),
            (100, 50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(s.mean, 50.5);
        let s = Summary::of(&[7.0]);
        assert_eq!((s.p50, s.p99, s.max), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of(&[]), Summary::default());
        assert_eq!(Summary::of(&[1.0, f64::NAN, 3.0]).count, 2);
    }

    #[test]
    fn histogram_quantiles_interpolate_like_prometheus() {
        // 10 observations ≤ 0.1, 30 more ≤ 0.5, 60 more ≤ 1.0.
        let b = [
            (0.1, 10.0),
            (0.5, 40.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((histogram_quantile(0.1, &b).unwrap() - 0.1).abs() < 1e-9);
        assert!((histogram_quantile(0.25, &b).unwrap() - 0.3).abs() < 1e-9);
        assert!((histogram_quantile(0.7, &b).unwrap() - 0.75).abs() < 1e-9);
        assert_eq!(
            histogram_quantile(0.5, &[(1.0, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(
            histogram_quantile(0.99, &[(1.0, 1.0), (f64::INFINITY, 5.0)]),
            Some(1.0)
        );
    }
}
