//! The worker's engine: an HTTP client for it, and the probe of its health and load.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
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
}

impl Default for EngineState {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(false),
            detail: Mutex::new(Some("not probed yet".into())),
            load: Mutex::new(EngineLoad::default()),
            model: Mutex::new(None),
            changed: Notify::new(),
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
}

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

    /// Reads the engine's `/v1/models`.
    pub async fn served_model(&self, timeout: Duration) -> Result<ServedModel, String> {
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
        parse_models(&body).ok_or_else(|| "/v1/models: no model card in the answer".to_owned())
    }

    /// One probe: `/health`, `/v1/models` when it is due (the engine is up only once its
    /// model is known: requests are sent with its name), then `/metrics` for the load.
    async fn probe(&self, state: &EngineState, timeout: Duration) {
        match self.health(timeout).await {
            Ok(()) => {
                if state.model_stale() {
                    match self.served_model(timeout).await {
                        Ok(m) => state.set_model(Some(m)),
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
                Ok(text) => state.set_load(parse_load(&text)),
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
