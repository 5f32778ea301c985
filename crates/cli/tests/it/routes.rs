//! Routes on the real stack: weighted variants with sticky users, a canary ramp, routing
//! versions published with `ssw routes apply` under load, a version a gateway refuses, and
//! SIGHUP.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use ssw_config::RouteConfig;
use ssw_config::route::{VariantConfig, default_sticky};
use ssw_test_support::TestPlatform;

use crate::ssw;

const ROUTE: &str = "npc-dialogue";

fn route(heavy: u32, light: u32) -> RouteConfig {
    let variant = |pool: &str, weight| VariantConfig {
        pool: pool.into(),
        weight,
        adapter: None,
        name: None,
    };
    RouteConfig {
        variants: vec![variant("heavy", heavy), variant("light", light)],
        sticky: default_sticky(),
        salt: None,
        shadow: None,
        guard: None,
    }
}

async fn with_route(heavy: u32, light: u32) -> TestPlatform {
    TestPlatform::start_with(ssw(), |s| {
        s.config.routes.insert(ROUTE.into(), route(heavy, light));
    })
    .await
}

/// What one routed answer says.
#[derive(Debug)]
struct Routed {
    status: u16,
    variant: String,
    pool: String,
    version: u64,
    model: String,
}

async fn ask(p: &TestPlatform, user: Option<&str>) -> Routed {
    let mut body =
        json!({"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    if let Some(u) = user {
        body["user"] = json!(u);
    }
    let resp = p.chat(&body).await;
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (variant, pool) = (header("x-ssw-variant"), header("x-ssw-pool"));
    let version = header("x-ssw-routing-version").parse().unwrap_or(u64::MAX);
    assert_eq!(header("x-ssw-route"), ROUTE);
    let status = resp.status().as_u16();
    let body: Value =
        serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default();
    Routed {
        status,
        variant,
        pool,
        version,
        model: body["model"].as_str().unwrap_or_default().to_owned(),
    }
}

/// Each user's variant over `rounds` requests each, `concurrency` at a time.
async fn assign(p: &TestPlatform, users: &[String], rounds: usize) -> HashMap<String, Vec<Routed>> {
    let jobs = (0..rounds).flat_map(|_| users.iter());
    let answers: Vec<(String, Routed)> = futures::stream::iter(jobs)
        .map(|u| async move { (u.clone(), ask(p, Some(u)).await) })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut by_user: HashMap<String, Vec<Routed>> = HashMap::new();
    for (u, r) in answers {
        by_user.entry(u).or_default().push(r);
    }
    by_user
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("player-{i}")).collect()
}

/// The variant a user got, asserting every one of its answers agrees.
fn sticky_variant(user: &str, answers: &[Routed]) -> String {
    let first = &answers[0].variant;
    for a in answers {
        assert_eq!(a.status, 200, "{user}: {a:?}");
        assert_eq!(&a.variant, first, "{user} saw two variants");
        assert_eq!(a.pool, a.variant, "variants are named after their pools");
    }
    first.clone()
}

#[tokio::test]
async fn a_route_splits_ten_thousand_requests_of_a_thousand_users_90_10_and_every_user_sticks() {
    let p = with_route(90, 10).await;
    let users = users(1000);
    let by_user = assign(&p, &users, 10).await;
    let mut light_requests = 0;
    for (u, answers) in &by_user {
        assert_eq!(answers.len(), 10);
        if sticky_variant(u, answers) == "light" {
            light_requests += answers.len();
            assert!(
                answers.iter().all(|a| a.model == "Qwen/Qwen3-8B-AWQ"),
                "{u}"
            );
        }
    }
    let share = light_requests as f64 / 10_000.0;
    eprintln!(
        "light share over 10 000 requests of 1 000 users: {:.2} %",
        share * 100.0
    );
    assert!((share - 0.10).abs() <= 0.02, "light share {share}");
    // Requests without a sticky key are assigned one by one.
    let mut light = 0;
    for _ in 0..200 {
        if ask(&p, None).await.variant == "light" {
            light += 1;
        }
    }
    assert!(
        (5..=40).contains(&light),
        "{light} of 200 keyless requests on light"
    );
    // The route is a model.
    let models: Value = serde_json::from_str(&p.get_text(&p.url("/v1/models")).await).unwrap();
    let card = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == ROUTE)
        .expect("the route is listed")
        .clone();
    assert_eq!(
        card["variants"][1],
        json!({"name": "light", "pool": "light", "weight": 10})
    );
    // Metrics by route and variant.
    let text = p.get_text(&p.url("/metrics")).await;
    let light_ok = ssw_test_support::metric(
        &text,
        "ssw_gateway_requests_total",
        &[("route", ROUTE), ("variant", "light"), ("code", "ok")],
    );
    assert!(
        light_ok.unwrap_or(0.0) >= light_requests as f64,
        "{light_ok:?}"
    );
}

/// Writes a routing document to the platform's directory.
fn document(p: &TestPlatform, name: &str, text: &str) -> std::path::PathBuf {
    let path = p.platform.dir().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn doc(heavy: u32, light: u32) -> String {
    format!(
        "[routes.{ROUTE}]\nvariants = [{{ pool = \"heavy\", weight = {heavy} }}, {{ pool = \"light\", weight = {light} }}]\n"
    )
}

async fn routes_cli(p: &TestPlatform, args: &[&str]) -> std::process::Output {
    let config = p.platform.dir().join("gateway.toml");
    tokio::process::Command::new(ssw())
        .arg("routes")
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn apply(p: &TestPlatform, name: &str, text: &str) -> String {
    let path = document(p, name, text);
    let out = routes_cli(p, &["apply", path.to_str().unwrap(), "--reason", name]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_canary_ramp_from_10_to_20_percent_moves_only_users_onto_the_canary() {
    let p = with_route(90, 10).await;
    let users = users(1000);
    let before: HashMap<String, String> = assign(&p, &users, 1)
        .await
        .iter()
        .map(|(u, a)| (u.clone(), sticky_variant(u, a)))
        .collect();
    let said = apply(&p, "ramp.toml", &doc(80, 20)).await;
    assert!(said.contains("published routing version 1"), "{said}");
    assert!(said.contains("have version 1 in force"), "{said}");
    let after = assign(&p, &users, 1).await;
    let (mut stayed, mut moved) = (0, 0);
    let mut at20 = HashMap::new();
    for (u, answers) in &after {
        assert_eq!(answers[0].version, 1, "{u}: routed by the new version");
        let now = sticky_variant(u, answers);
        at20.insert(u.clone(), now.clone());
        match (before[u].as_str(), now.as_str()) {
            ("light", "light") => stayed += 1,
            ("light", _) => panic!("{u} left the canary when it grew"),
            ("heavy", "light") => moved += 1,
            _ => {}
        }
    }
    eprintln!("ramp 10 → 20 %: {stayed} users stayed on the canary, {moved} joined it");
    assert!(stayed > 50 && moved > 50, "stayed {stayed}, moved {moved}");
    // A gateway that starts now routes by the published version from its first request.
    let (_late, late_url) = p.add_gateway("late").await;
    let r = p
        .http
        .post(format!("{late_url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(json!({"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "user": "player-1"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ssw-routing-version"], "1");
    assert_eq!(r.headers()["x-ssw-variant"], at20["player-1"].as_str());
    // History and show name the version.
    let history = String::from_utf8_lossy(&routes_cli(&p, &["history"]).await.stdout).into_owned();
    assert!(history.contains("ramp.toml"), "{history}");
    // Everyone to the control, then a rollback to version 1: the 20 % split again, as
    // version 3, each user on the variant they had at 20 %.
    apply(&p, "all-heavy.toml", &doc(1, 0)).await;
    let canary = at20.iter().find(|(_, v)| *v == "light").unwrap().0.clone();
    assert_eq!(ask(&p, Some(&canary)).await.variant, "heavy");
    let out = routes_cli(&p, &["rollback", "1"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for u in users.iter().take(100) {
        let r = ask(&p, Some(u)).await;
        assert_eq!((r.version, &r.variant), (3, &at20[u]), "{u}");
    }
}

#[tokio::test]
async fn routes_apply_under_load_fails_nothing_and_routes_each_request_by_one_version() {
    let p = with_route(1, 0).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut load = Vec::new();
    for c in 0..16 {
        let (p, stop) = (&p, stop.clone());
        load.push(async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                seen.push(ask(p, Some(&format!("user-{c}-{i}"))).await);
                i += 1;
            }
            seen
        });
    }
    let flips = async {
        // Odd versions send everyone to light, even ones to heavy: the variant tells which
        // version routed a request.
        for v in 1..=6u32 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let text = if v % 2 == 1 { doc(0, 1) } else { doc(1, 0) };
            apply(&p, &format!("v{v}.toml"), &text).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
    };
    let (seen, ()) = tokio::join!(futures::future::join_all(load), flips);
    let seen: Vec<Routed> = seen.into_iter().flatten().collect();
    let mut by_version: HashMap<u64, usize> = HashMap::new();
    for r in &seen {
        assert_eq!(r.status, 200, "{r:?}");
        let expected = match r.version {
            0 => "heavy",
            v if v % 2 == 1 => "light",
            v if v <= 6 => "heavy",
            v => panic!("version {v}"),
        };
        assert_eq!(r.variant, expected, "{r:?}");
        *by_version.entry(r.version).or_default() += 1;
    }
    eprintln!(
        "{} requests, zero failed; by routing version: {by_version:?}",
        seen.len()
    );
    assert_eq!(
        by_version.len(),
        7,
        "every version served requests: {by_version:?}"
    );
}

#[tokio::test]
async fn a_version_a_gateway_cannot_use_is_refused_there_and_reported() {
    let p = with_route(1, 0).await;
    // A configuration with a third pool lets the CLI accept a route to it; the gateway, whose
    // file has no such pool, refuses it and keeps version 0.
    let text = std::fs::read_to_string(p.platform.dir().join("gateway.toml")).unwrap();
    let wider = format!("{text}\n[pools.medium]\nserved_model = \"m\"\n");
    let wider_path = document(&p, "wider.toml", &wider);
    let doc_path = document(
        &p,
        "medium.toml",
        &format!("[routes.{ROUTE}]\nvariants = [{{ pool = \"medium\", weight = 1 }}]\n"),
    );
    let out = tokio::process::Command::new(ssw())
        .args([
            "routes",
            "--config",
            wider_path.to_str().unwrap(),
            "apply",
            doc_path.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("refused version 1") && stderr.contains("no pool `medium`"),
        "{stderr}"
    );
    assert_eq!(ask(&p, Some("u")).await.version, 0);
    let show = String::from_utf8_lossy(&routes_cli(&p, &["show"]).await.stdout).into_owned();
    assert!(show.contains("refused version 1"), "{show}");
    let text = p.get_text(&p.url("/metrics")).await;
    let refused = ssw_test_support::metric(
        &text,
        "ssw_gateway_routing_reloads_total",
        &[("result", "invalid")],
    );
    assert_eq!(refused, Some(1.0));
    // The CLI validates against its own file first: a mistake is named before anything is
    // published.
    let bad = document(
        &p,
        "bad.toml",
        &format!("[routes.{ROUTE}]\nvariants = []\n"),
    );
    let out = routes_cli(&p, &["apply", bad.to_str().unwrap()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("routes.npc-dialogue.variants"),
        "{stderr}"
    );
    let out = routes_cli(&p, &["history"]).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "only version 1"
    );
}

#[tokio::test]
async fn sighup_reloads_routes_and_names_settings_that_need_a_restart() {
    let p = with_route(1, 0).await;
    assert_eq!(ask(&p, Some("u")).await.variant, "heavy");
    let path = p.platform.dir().join("gateway.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let fig = ssw_config::Config::file_figment(Some(&path));
    let mut cfg = ssw_config::Config::from_figment(&fig).unwrap();
    cfg.routes.insert(ROUTE.into(), route(0, 1));
    cfg.pools.get_mut("heavy").unwrap().max_queue = 7;
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    let pid = p.platform.gateway.as_ref().unwrap().pid().unwrap();
    ssw_test_support::signal(pid, libc::SIGHUP);
    TestPlatform::eventually(
        Duration::from_secs(5),
        "the reloaded route in force",
        || async { ask(&p, Some("u")).await.variant == "light" },
    )
    .await;
    let metrics = p.get_text(&p.url("/metrics")).await;
    let file = ssw_test_support::metric(
        &metrics,
        "ssw_gateway_routing_reloads_total",
        &[("result", "file")],
    );
    assert_eq!(file, Some(1.0));
    // A broken file changes nothing.
    std::fs::write(&path, format!("{text}\n[routes.x]\nvariants = 3\n")).unwrap();
    ssw_test_support::signal(pid, libc::SIGHUP);
    TestPlatform::eventually(
        Duration::from_secs(5),
        "the broken file counted",
        || async {
            let m = p.get_text(&p.url("/metrics")).await;
            ssw_test_support::metric(
                &m,
                "ssw_gateway_routing_reloads_total",
                &[("result", "file_invalid")],
            ) == Some(1.0)
        },
    )
    .await;
    assert_eq!(ask(&p, Some("u")).await.variant, "light");
}

#[tokio::test]
async fn shadow_copies_run_on_the_shadow_pool_and_never_reach_the_client() {
    let p = TestPlatform::start_with(ssw(), |s| {
        let mut r = route(1, 0);
        r.shadow = Some(ssw_config::route::ShadowConfig {
            pool: "light".into(),
            share: 1.0,
        });
        s.config.routes.insert(ROUTE.into(), r);
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = format!("shadowed-{i}");
        let mut body = json!({"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "user": "u"});
        body["stream"] = json!(i % 2 == 0);
        let resp = p.chat_with_id(&id, &body).await;
        assert_eq!(resp.status(), 200);
        let h = |n: &str| resp.headers().get(n).unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            (h("x-ssw-variant"), h("x-ssw-pool")),
            ("heavy".into(), "heavy".into())
        );
        let text = resp.text().await.unwrap();
        assert!(
            text.contains("Qwen2.5-14B"),
            "the client's answer is heavy's: {text}"
        );
        assert!(
            !text.contains("Qwen3-8B"),
            "no shadow answer reaches the client: {text}"
        );
        ids.push(id);
    }
    // Each request's copy ran on a light engine, under the client's id with `.shadow`.
    TestPlatform::eventually(Duration::from_secs(10), "every copy run", || async {
        let mut seen = p.stub_request_ids("light-0").await;
        seen.extend(p.stub_request_ids("light-1").await);
        ids.iter().all(|id| seen.contains(&format!("{id}.shadow")))
    })
    .await;
    TestPlatform::eventually(
        Duration::from_secs(5),
        "copies counted as variant shadow",
        || async {
            let m = p.get_text(&p.url("/metrics")).await;
            ssw_test_support::metric(
                &m,
                "ssw_gateway_requests_total",
                &[("route", ROUTE), ("variant", "shadow"), ("code", "ok")],
            ) == Some(20.0)
        },
    )
    .await;
    p.assert_no_jobs_left(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_failing_variant_is_taken_out_by_the_guard_on_every_gateway() {
    let p = TestPlatform::start_with(ssw(), |s| {
        let mut r = route(50, 50);
        r.guard = Some(ssw_config::route::GuardConfig {
            max_error_rate: Some(0.05),
            max_ttft_p95_ratio: None,
            window: Duration::from_secs(10),
            min_requests: 20,
        });
        s.config.routes.insert(ROUTE.into(), r);
        // Light's engines answer every request 500: after its attempts, 502.
        for replica in s.replicas.iter_mut().filter(|r| r.pool == "light") {
            if let ssw_test_support::ssw_up::platform::EngineSpec::Stub(stub) = &mut replica.engine
            {
                stub.error_rate = 1.0;
            }
        }
    })
    .await;
    let (_second, second_url) = p.add_gateway("second").await;
    let t0 = std::time::Instant::now();
    let mut failed_light = 0;
    let mut i = 0;
    // Requests until the guard has acted: light's answers fail, heavy's succeed.
    let decided = loop {
        let r = ask(&p, Some(&format!("player-{i}"))).await;
        i += 1;
        if r.version >= 1 {
            break t0.elapsed();
        }
        if r.variant == "light" {
            assert_eq!(r.status, 502);
            failed_light += 1;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no fallback after {i} requests"
        );
    };
    eprintln!(
        "the guard took light out {decided:?} after the first request ({i} requests, {failed_light} failed on light)"
    );
    // Everyone on the control now, on both gateways, and the decision is a published version.
    for u in 0..50 {
        let r = ask(&p, Some(&format!("player-{u}"))).await;
        assert_eq!((r.status, r.variant.as_str()), (200, "heavy"));
    }
    let body = json!({"model": ROUTE, "messages": [{"role": "user", "content": "hi"}], "user": "player-7"});
    let r = p
        .http
        .post(format!("{second_url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-ssw-variant"], "heavy");
    let history = String::from_utf8_lossy(&routes_cli(&p, &["history"]).await.stdout).into_owned();
    assert!(
        history.contains("guard") && history.contains("back to its control"),
        "{history}"
    );
    let m = p.get_text(&p.url("/metrics")).await;
    let mut rollbacks = ssw_test_support::metric(
        &m,
        "ssw_gateway_route_rollbacks_total",
        &[
            ("route", ROUTE),
            ("variant", "light"),
            ("reason", "error_rate"),
        ],
    );
    if rollbacks.is_none() {
        let m = p.get_text(&format!("{second_url}/metrics")).await;
        rollbacks = ssw_test_support::metric(
            &m,
            "ssw_gateway_route_rollbacks_total",
            &[
                ("route", ROUTE),
                ("variant", "light"),
                ("reason", "error_rate"),
            ],
        );
    }
    assert_eq!(rollbacks, Some(1.0), "one gateway decided, once");
}

#[tokio::test]
async fn a_slow_variant_is_taken_out_by_the_guard() {
    let p = TestPlatform::start_with(ssw(), |s| {
        let mut r = route(50, 50);
        r.guard = Some(ssw_config::route::GuardConfig {
            max_error_rate: None,
            max_ttft_p95_ratio: Some(2.0),
            window: Duration::from_secs(10),
            min_requests: 20,
        });
        s.config.routes.insert(ROUTE.into(), r);
        // Light's first tokens take 300 ms, heavy's 5 ms.
        for replica in s.replicas.iter_mut().filter(|r| r.pool == "light") {
            if let ssw_test_support::ssw_up::platform::EngineSpec::Stub(stub) = &mut replica.engine
            {
                stub.ttft = Duration::from_millis(300);
            }
        }
    })
    .await;
    let t0 = std::time::Instant::now();
    let users: Vec<String> = (0..200).map(|i| format!("player-{i}")).collect();
    loop {
        let answers = assign(&p, &users, 1).await;
        if answers.values().flatten().any(|r| r.version >= 1) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no fallback for a slow variant"
        );
    }
    eprintln!(
        "the guard took the slow variant out after {:?}",
        t0.elapsed()
    );
    let answers = assign(&p, &users, 1).await;
    assert!(
        answers
            .values()
            .flatten()
            .all(|r| r.status == 200 && r.variant == "heavy")
    );
    let m = p.get_text(&p.url("/metrics")).await;
    let rollbacks = ssw_test_support::metric(
        &m,
        "ssw_gateway_route_rollbacks_total",
        &[
            ("route", ROUTE),
            ("variant", "light"),
            ("reason", "ttft_p95_ratio"),
        ],
    );
    assert_eq!(rollbacks, Some(1.0));
}

#[tokio::test]
async fn a_tenants_new_quota_applied_without_a_restart_is_enforced_at_once() {
    let p = TestPlatform::start_with(ssw(), |s| {
        crate::tiers::tenant(
            s,
            "npc",
            "npc-key",
            ssw_config::TenantConfig {
                requests_per_minute: Some(1000),
                ..ssw_config::TenantConfig::default()
            },
        );
    })
    .await;
    let send = || async {
        let r = p
            .http
            .post(p.url("/v1/chat/completions"))
            .bearer_auth("npc-key")
            .header("content-type", "application/json")
            .body(ssw_test_support::chat_body("light").to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        (status, v)
    };
    // The gateway has met the tenant (and its limits) before the change.
    assert_eq!(send().await.0, 200);
    let said = apply(
        &p,
        "quota.toml",
        "[tenants.npc]\nrequests_per_minute = 1000\nrequests_per_day = 1\n",
    )
    .await;
    assert!(said.contains("have version 1 in force"), "{said}");
    assert_eq!(send().await.0, 200, "the first request of the day's quota");
    let (status, v) = send().await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("insufficient_quota")),
        "{v}"
    );
}
