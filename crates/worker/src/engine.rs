//! The worker's engine: an HTTP client for it, and the probe of its health and load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ssw_config::WorkerConfig;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Load figures read from the engine's `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EngineLoad {
    /// `vllm:num_requests_running`.
    pub running: Option<f64>,
    /// `vllm:num_requests_waiting`.
    pub waiting: Option<f64>,
    /// `vllm:kv_cache_usage_perc`, or the older `vllm:gpu_cache_usage_perc`.
    pub kv_cache_usage: Option<f64>,
}

/// Parses the vLLM gauges the worker uses from Prometheus text; sums over label sets.
pub fn parse_load(text: &str) -> EngineLoad {
    let mut load = EngineLoad::default();
    let mut legacy_kv = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or_default().trim();
        let slot = match name {
            "vllm:num_requests_running" => &mut load.running,
            "vllm:num_requests_waiting" => &mut load.waiting,
            "vllm:kv_cache_usage_perc" => &mut load.kv_cache_usage,
            "vllm:gpu_cache_usage_perc" => &mut legacy_kv,
            _ => continue,
        };
        *slot = Some(slot.unwrap_or(0.0) + value);
    }
    if load.kv_cache_usage.is_none() {
        load.kv_cache_usage = legacy_kv;
    }
    load
}

/// The model an engine serves, from its `/v1/models`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServedModel {
    /// Its id: the name requests must carry (`--served-model-name`).
    pub name: String,
    /// A hash of its model card without the per-call fields (`created`, `permission`): name,
    /// `root` (what was loaded), `max_model_len`, `parent`. 12 hex digits.
    pub revision: String,
}

/// Reads the first model card of a `/v1/models` answer (vLLM serves one model per process).
pub fn parse_models(body: &[u8]) -> Option<ServedModel> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    // The base model: adapters are listed too, each with its base as `parent`.
    let mut card = v
        .get("data")?
        .as_array()?
        .iter()
        .find(|c| c.get("parent").is_none_or(serde_json::Value::is_null))?
        .as_object()?
        .clone();
    let name = card.get("id")?.as_str()?.to_owned();
    card.remove("created");
    card.remove("permission");
    // A map serialises its keys sorted: the hash does not depend on the engine's key order.
    let canonical = serde_json::to_string(&card).ok()?;
    let hash = canonical.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    Some(ServedModel {
        name,
        revision: format!("{:012x}", hash & 0xffff_ffff_ffff),
    })
}

/// The LoRA adapters an engine's `/v1/models` lists: the cards with a `parent` (vLLM lists
/// every adapter it can serve, those of `--lora-modules` and those loaded at runtime, with the
/// base model as parent: vllm/entrypoints/openai/serving_models.py, `show_available_models`).
pub fn parse_adapters(body: &[u8]) -> Vec<String> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    v["data"]
        .as_array()
        .map(|cards| {
            cards
                .iter()
                .filter(|c| c.get("parent").is_some_and(|p| !p.is_null()))
                .filter_map(|c| c["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The adapters with requests running on the engine, from `vllm:lora_requests_info`: a gauge
/// vLLM sets to the current time under labels naming them (`running_lora_adapters`,
/// comma-separated; vllm/v1/metrics/loggers.py). Each new label set is a new series and old
/// ones stay, so the newest (largest value) is the current one. `None`: no such metric (LoRA
/// is off, or the engine is not vLLM).
pub fn parse_lora_running(text: &str) -> Option<Vec<String>> {
    let mut newest: Option<(f64, &str)> = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("vllm:lora_requests_info{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let running = labels
            .split_once("running_lora_adapters=\"")
            .and_then(|(_, v)| v.split_once('"'))
            .map_or("", |(v, _)| v);
        if newest.is_none_or(|(at, _)| value > at) {
            newest = Some((value, running));
        }
    }
    newest.map(|(_, running)| {
        running
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// How often the worker reads its engine's `/v1/models` while the engine stays up (it also
/// reads it whenever the engine comes up).
pub const MODEL_REFRESH: Duration = Duration::from_secs(10);

/// What the worker knows of its engine.
#[derive(Debug)]
pub struct EngineState {
    up: AtomicBool,
    detail: Mutex<Option<String>>,
    load: Mutex<EngineLoad>,
    /// The model it serves, and when it was read.
    model: Mutex<Option<(ServedModel, std::time::Instant)>>,
    /// Signalled when the engine comes up or its load drops, so the pull loop (its one waiter;
    /// a permit is kept if it is busy) resumes at once.
    pub changed: Notify,
    /// The pool's routed LoRA adapters (name, source): the engine must hold each before it
    /// counts as up (one it lost in a restart is loaded again).
    routed: Mutex<Vec<(String, String)>>,
    /// `routed` is not empty: adapter-aware pulling is on.
    has_adapters: AtomicBool,
    /// The adapters running on the engine at the last probe (`vllm:lora_requests_info`).
    lora_running: Mutex<Vec<String>>,
    /// Adapters this worker loaded on its engine because it lacked them: loaded, failed.
    pub adapter_loads: [AtomicU64; 2],
    /// The routed adapters last made sure of on the engine since it came up.
    reconciled: Mutex<Option<Vec<(String, String)>>>,
}

impl Default for EngineState {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(false),
            detail: Mutex::new(Some("not probed yet".into())),
            load: Mutex::new(EngineLoad::default()),
            model: Mutex::new(None),
            changed: Notify::new(),
            routed: Mutex::new(Vec::new()),
            has_adapters: AtomicBool::new(false),
            lora_running: Mutex::new(Vec::new()),
            adapter_loads: [AtomicU64::new(0), AtomicU64::new(0)],
            reconciled: Mutex::new(None),
        }
    }
}

impl EngineState {
    /// Whether the last probe found it healthy.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why it is down.
    pub fn detail(&self) -> Option<String> {
        self.detail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets the pool's routed adapters (name, source).
    pub fn set_routed(&self, adapters: Vec<(String, String)>) {
        self.has_adapters
            .store(!adapters.is_empty(), Ordering::Relaxed);
        *self.routed.lock().unwrap_or_else(|p| p.into_inner()) = adapters;
    }

    /// The pool's routed adapters (name, source).
    pub fn routed(&self) -> Vec<(String, String)> {
        self.routed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the engine came up or the routed adapters changed since they were last made
    /// sure of.
    fn reconcile_due(&self) -> bool {
        self.reconciled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            != Some(&self.routed())
    }

    /// Whether the pool routes any adapter.
    pub fn has_adapters(&self) -> bool {
        self.has_adapters.load(Ordering::Relaxed)
    }

    /// Records the adapters the engine says run on it.
    pub fn set_lora_running(&self, adapters: Vec<String>) {
        *self.lora_running.lock().unwrap_or_else(|p| p.into_inner()) = adapters;
    }

    /// The adapters running on the engine at the last probe.
    pub fn lora_running(&self) -> Vec<String> {
        self.lora_running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last load reading.
    pub fn load(&self) -> EngineLoad {
        *self.load.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model it serves, once read.
    pub fn model(&self) -> Option<ServedModel> {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(m, _)| m.clone())
    }

    /// Whether the model should be read (again): unknown, or read over [`MODEL_REFRESH`] ago.
    fn model_stale(&self) -> bool {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|(_, at)| at.elapsed() >= MODEL_REFRESH)
    }

    /// Records the model it serves (`None`: unknown).
    pub fn set_model(&self, model: Option<ServedModel>) {
        let mut slot = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let before = slot.as_ref().map(|(m, _)| m);
        if let Some(m) = &model
            && before != Some(m)
        {
            tracing::info!(model = %m.name, revision = %m.revision, "engine serves this model");
        }
        *slot = model.map(|m| (m, std::time::Instant::now()));
    }

    /// Records a probe or request outcome. An engine that goes down forgets its model: the
    /// one that comes back may serve another (a restart or reload in a rollout).
    pub fn set_up(&self, up: bool, detail: Option<String>) {
        if !up {
            self.set_model(None);
            *self.reconciled.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        let was = self.up.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("engine is up; pulling jobs");
            } else {
                tracing::warn!(
                    detail = detail.as_deref().unwrap_or(""),
                    "engine is down; stopped pulling"
                );
            }
        }
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = detail;
        if up {
            self.changed.notify_one();
        }
    }

    /// One of this worker's engine requests ended. It either held a running slot, which a
    /// waiting request now takes, or was waiting itself: either way the engine has one fewer
    /// waiting request than the last reading said. Keeps the estimate current between polls, so
    /// the worker refills as soon as the engine can admit work instead of at the next poll.
    pub fn request_finished(&self) {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = load.waiting.as_mut().filter(|w| **w > 0.0) {
            *w = (*w - 1.0).max(0.0);
            if *w == 0.0 {
                drop(load);
                self.changed.notify_one();
            }
        }
    }

    fn set_load(&self, load: EngineLoad) {
        let before = std::mem::replace(
            &mut *self.load.lock().unwrap_or_else(|p| p.into_inner()),
            load,
        );
        if before.waiting.unwrap_or(0.0) > 0.0 && load.waiting.unwrap_or(0.0) == 0.0 {
            self.changed.notify_one();
        }
    }
}

/// HTTP client for one engine.
#[derive(Clone, Debug)]
pub struct Engine {
    /// Base URL without a trailing slash.
    pub base: String,
    /// Shared client (connection pool to the engine).
    pub http: reqwest::Client,
    /// Held while an adapter loads (the probe and a job's 404 may both want one).
    loading: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// How long loading an adapter may take (a download from Hugging Face included).
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);

impl Engine {
    /// A client for the configured engine.
    pub fn new(cfg: &WorkerConfig, api_key: Option<&str>) -> Result<Self, reqwest::Error> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key
            && let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
        {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.engine_connect_timeout)
            .pool_max_idle_per_host(cfg.max_inflight as usize)
            .tcp_nodelay(true)
            .http1_only()
            // The engine is a fixed address: a redirect (which would replay the prompt
            // elsewhere) is an error, and proxy variables of the environment do not apply.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .default_headers(headers)
            .build()?;
        Ok(Self {
            base: cfg.engine_url.trim_end_matches('/').to_owned(),
            http,
            loading: Default::default(),
        })
    }

    /// Whether `/health` answers 200; else why not.
    pub async fn health(&self, timeout: Duration) -> Result<(), String> {
        let r = self
            .http
            .get(format!("{}/health", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("/health: {}", error_chain(&e)))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("/health answered {}", r.status()))
        }
    }

    /// Reads the engine's `/v1/models`: its model, and the adapters it can serve.
    pub async fn served_model(
        &self,
        timeout: Duration,
    ) -> Result<(ServedModel, Vec<String>), String> {
        let r = self
            .http
            .get(format!("{}/v1/models", self.base))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("/v1/models: {}", error_chain(&e)))?;
        if !r.status().is_success() {
            return Err(format!("/v1/models answered {}", r.status()));
        }
        let body = r
            .bytes()
            .await
            .map_err(|e| format!("/v1/models: {}", error_chain(&e)))?;
        let model = parse_models(&body)
            .ok_or_else(|| "/v1/models: no model card in the answer".to_owned())?;
        Ok((model, parse_adapters(&body)))
    }

    /// Loads adapter `name` from `source` with vLLM's `/v1/load_lora_adapter` (which needs
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`); one load at a time per engine. `Ok(true)`: loaded
    /// now; `Ok(false)`: the engine held it already (vLLM answers 400 "has already been
    /// loaded", vllm/entrypoints/openai/serving_models.py, `load_lora_adapter`). Counted in
    /// `state.adapter_loads` and logged.
    pub async fn load_adapter(
        &self,
        state: &EngineState,
        name: &str,
        source: &str,
    ) -> Result<bool, String> {
        let _one = self.loading.lock().await;
        let body = serde_json::json!({"lora_name": name, "lora_path": source});
        let r = self
            .http
            .post(format!("{}/v1/load_lora_adapter", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(LOAD_TIMEOUT)
            .send()
            .await;
        let outcome = match r {
            Ok(r) if r.status().is_success() => Ok(true),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if text.contains("already been loaded") {
                    Ok(false)
                } else {
                    Err(format!("{status} {}", ssw_protocol::chat::quote(&text)))
                }
            }
            Err(e) => Err(error_chain(&e)),
        };
        match &outcome {
            Ok(true) => {
                tracing::info!(adapter = %name, %source, "loaded a routed adapter the engine lacked");
                state.adapter_loads[0].fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(adapter = %name, %source, error = %e, "cannot load a routed adapter the engine lacks; its requests fail on this engine");
                state.adapter_loads[1].fetch_add(1, Ordering::Relaxed);
            }
        }
        outcome
    }

    /// Loads each routed adapter the engine does not list (`held`): an engine restarted after
    /// `ssw adapters load` has lost what was loaded live. Done when the engine comes up and
    /// when the routed adapters change, not on every read of its models (a source that cannot
    /// be loaded is tried again with the next change, the engine's next start, or a job's 404).
    async fn load_missing(&self, state: &EngineState, held: &[String]) {
        let routed = state.routed();
        for (name, source) in &routed {
            if !held.contains(name) {
                let _ = self.load_adapter(state, name, source).await;
            }
        }
        *state.reconciled.lock().unwrap_or_else(|p| p.into_inner()) = Some(routed);
    }

    /// One probe: `/health`, `/v1/models` when it is due (the engine is up only once its
    /// model is known: requests are sent with its name), then `/metrics` for the load.
    async fn probe(&self, state: &EngineState, timeout: Duration) {
        match self.health(timeout).await {
            Ok(()) => {
                if state.model_stale() {
                    match self.served_model(timeout).await {
                        Ok((m, held)) => {
                            // Before the engine counts as up: no job for an adapter it lost
                            // is sent to it meanwhile.
                            if state.has_adapters() && state.reconcile_due() {
                                self.load_missing(state, &held).await;
                            }
                            state.set_model(Some(m));
                        }
                        // Known already: keep it until the engine goes down.
                        Err(e) if state.model().is_some() => {
                            tracing::debug!(error = %e, "cannot read the engine's model again");
                        }
                        Err(e) => {
                            state.set_up(false, Some(e));
                            return;
                        }
                    }
                }
                state.set_up(true, None);
            }
            Err(detail) => {
                state.set_up(false, Some(detail));
                return;
            }
        }
        let metrics = self
            .http
            .get(format!("{}/metrics", self.base))
            .timeout(timeout)
            .send()
            .await;
        match metrics {
            Ok(r) if r.status().is_success() => match r.text().await {
                Ok(text) => {
                    state.set_load(parse_load(&text));
                    if state.has_adapters() {
                        state.set_lora_running(parse_lora_running(&text).unwrap_or_default());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot read engine metrics"),
            },
            Ok(r) => tracing::debug!(status = %r.status(), "engine /metrics not available"),
            Err(e) => tracing::debug!(error = %e, "engine /metrics not available"),
        }
    }

    /// Probes every `interval` until `shutdown`.
    pub async fn monitor(
        self,
        state: std::sync::Arc<EngineState>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = interval.max(Duration::from_secs(2));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.probe(&state, timeout).await,
            }
        }
    }
}

/// An error with its causes, for logs (reqwest hides "connection refused" in the source chain).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_and_legacy_vllm_gauges() {
        let text = "# HELP x\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3\n\
            vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2\n\
            vllm:num_requests_waiting{model_name=\"m\"} 0.0\n\
            vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n\
            vllm:num_requests_waiting_total 99\n";
        let l = parse_load(text);
        assert_eq!(l.running, Some(5.0));
        assert_eq!(l.waiting, Some(0.0));
        assert_eq!(l.kv_cache_usage, Some(0.25));
        let old = parse_load("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
        assert_eq!(old.kv_cache_usage, Some(0.5));
        assert_eq!(old.waiting, None);
    }

    #[test]
    fn the_model_card_gives_the_name_and_a_revision_that_ignores_per_call_fields() {
        let card = |created: u64, root: &str| {
            format!(
                r#"{{"object":"list","data":[{{"id":"Qwen/Q","object":"model","created":{created},"owned_by":"vllm","root":"{root}","parent":null,"max_model_len":32768,"permission":[{{"id":"modelperm-{created}"}}]}}]}}"#
            )
        };
        let a = parse_models(card(1, "/models/a").as_bytes()).unwrap();
        assert_eq!(a.name, "Qwen/Q");
        assert_eq!(a.revision.len(), 12);
        let again = parse_models(card(2, "/models/a").as_bytes()).unwrap();
        assert_eq!(a, again, "created and permission change on every call");
        let b = parse_models(card(1, "/models/b").as_bytes()).unwrap();
        assert_eq!(a.name, b.name);
        assert_ne!(
            a.revision, b.revision,
            "another checkpoint under the same name"
        );
        assert_eq!(parse_models(br#"{"object":"list","data":[]}"#), None);
    }

    #[test]
    fn adapters_are_the_cards_with_a_parent_and_the_newest_lora_series_says_what_runs() {
        let models = br#"{"object":"list","data":[
            {"id":"Qwen/Q","root":"/m","parent":null},
            {"id":"vampire","root":"/adapters/v","parent":"Qwen/Q"},
            {"id":"zombie","root":"org/z","parent":"Qwen/Q"}]}"#;
        assert_eq!(parse_adapters(models), ["vampire", "zombie"]);
        assert_eq!(parse_adapters(b"not json"), Vec::<String>::new());
        // As vLLM exports it: one series per label set ever seen, each set to the time it was
        // last current.
        let text = "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
            # TYPE vllm:lora_requests_info gauge\n\
            vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"zombie\",waiting_lora_adapters=\"\"} 1.7649e+09\n\
            vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"vampire,zombie\",waiting_lora_adapters=\"wolf\"} 1.76491e+09\n\
            vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 1.76489e+09\n";
        assert_eq!(
            parse_lora_running(text),
            Some(vec!["vampire".to_owned(), "zombie".to_owned()])
        );
        let idle = "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 5\n";
        assert_eq!(parse_lora_running(idle), Some(Vec::new()));
        assert_eq!(parse_lora_running("vllm:num_requests_running 3\n"), None);
    }

    #[tokio::test]
    async fn finished_requests_count_down_the_waiting_estimate_and_wake_the_puller() {
        let state = EngineState::default();
        state.set_load(EngineLoad {
            running: Some(64.0),
            waiting: Some(2.0),
            kv_cache_usage: None,
        });
        state.request_finished();
        assert_eq!(state.load().waiting, Some(1.0));
        let woken = tokio::time::timeout(Duration::from_millis(20), state.changed.notified());
        assert!(
            woken.await.is_err(),
            "woken while the engine still has a waiting request"
        );
        // The wake-up is kept for a puller that is not waiting at this instant.
        state.request_finished();
        assert_eq!(state.load().waiting, Some(0.0));
        let woken = tokio::time::timeout(Duration::from_millis(20), state.changed.notified());
        assert!(
            woken.await.is_ok(),
            "not woken when the engine can admit again"
        );
        // Without a reading there is nothing to count down.
        state.set_load(EngineLoad::default());
        state.request_finished();
        assert_eq!(state.load().waiting, None);
    }
}
