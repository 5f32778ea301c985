//! The Grafana dashboard and the Prometheus alert rules may only refer to metrics that exist:
//! every `ssw_*` name must be exported by this code, every `vllm:*` name by vLLM.

use ssw_telemetry::names;

const DASHBOARD: &str = include_str!("../../../modules/observability/dashboard.json");
const ALERTS: &str = include_str!("../../../modules/observability/alerts.yml");

/// vLLM metrics the dashboard or alerts may use (all emitted by vLLM's V1 engine and by the stub).
const VLLM: &[&str] = &[
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
];

/// Prometheus' own series.
const BUILTIN: &[&str] = &["up"];

/// Metric names in a PromQL expression: identifiers that are not functions, aggregation
/// operators, keywords, label names (inside `{}` or a `by (…)` clause) or string literals.
fn metric_names(expr: &str) -> Vec<String> {
    const AGGREGATIONS: &[&str] = &[
        "sum", "max", "min", "avg", "count", "topk", "bottomk", "quantile", "stddev", "stdvar",
        "group",
    ];
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut braces = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'{' => braces += 1,
            b'}' => braces -= 1,
            b'[' => {
                // A range or subquery selector (`[5m]`): durations, not names.
                i += expr[i..].find(']').unwrap_or(expr.len() - i);
            }
            b'"' | b'\'' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += 1;
                }
            }
            _ if (c.is_ascii_alphabetic() || c == b'_') && braces == 0 => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &expr[start..i];
                if ["by", "without", "on", "ignoring"].contains(&word) {
                    // Skip the label list that follows.
                    i += expr[i..].find(')').map_or(expr.len() - i, |p| p + 1);
                    continue;
                }
                let is_call = expr[i..].trim_start().starts_with('(');
                if !is_call && !AGGREGATIONS.contains(&word) && !KEYWORDS.contains(&word) {
                    out.push(word.to_owned());
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn check(source: &str, expr: &str) {
    for name in metric_names(expr) {
        let known = names::exported(&name)
            || VLLM.contains(&name.as_str())
            || BUILTIN.contains(&name.as_str());
        assert!(
            known,
            "{source}: `{name}` in `{expr}` is not an exported metric"
        );
    }
}

#[test]
fn the_name_extractor_finds_metrics_and_skips_the_rest() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (pool, le) (rate(ssw_gateway_ttft_bucket{pool="x"}[5m]))) / max by (gpu) (a_b + vllm:kv_cache_usage_perc)"#,
    );
    assert_eq!(
        names,
        ["ssw_gateway_ttft_bucket", "a_b", "vllm:kv_cache_usage_perc"]
    );
}

#[test]
fn dashboard_and_alerts_use_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = 0;
    for p in panels {
        // A row (a section heading) has no queries.
        let Some(targets) = p["targets"].as_array() else {
            assert_eq!(p["type"], "row", "a panel without targets: {}", p["title"]);
            continue;
        };
        for t in targets {
            check(
                p["title"].as_str().unwrap_or("?"),
                t["expr"].as_str().expect("expr"),
            );
            exprs += 1;
        }
    }
    assert!(exprs >= 20);
    let mut rules = 0;
    for line in ALERTS.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            check("alerts.yml", expr.trim());
            rules += 1;
        }
    }
    assert!(rules >= 8);
}

#[test]
fn dashboard_has_the_panels_operators_need() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let titles: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| p["title"].as_str().unwrap_or_default().to_lowercase())
        .collect();
    for needed in [
        "request rate",
        "errors",
        "queue depth",
        "oldest waiting",
        "queue wait",
        "time to first token",
        "request latency",
        "tokens per second",
        "slots in use",
        "gpu utilisation",
        "gpu memory",
        "kv-cache",
        "queue memory",
        "job outcomes",
        "lora adapters: requests",
        "lora adapters: queue wait",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(needed)),
            "no panel for {needed}: {titles:?}"
        );
    }
}
