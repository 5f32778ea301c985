//! `ssw stub`: a vLLM stand-in for tests, demos and VM tests.
//!
//! It speaks vLLM's OpenAI server dialect (`/v1/chat/completions` streaming and not,
//! `/v1/models`, `/health`, `/metrics` with vLLM's metric names) and answers deterministically:
//! token 0 names the served model, token 1 the request id, so a test can prove which engine
//! answered what. Requests beyond `max_num_seqs` wait and show in `vllm:num_requests_waiting`.
//! A request whose client disconnects before the answer is complete counts in
//! `ssw_stub_aborted_requests_total`, which is how tests prove cancellation.
//!
//! # Layout
//! - [`answer`]: what to answer (tokens, tool calls, chunk shapes).
//! - this file: the server, the admission semaphore, metrics, the request log.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use ssw_config::StubConfig;
use ssw_config::pool::SchedulingPolicy;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

pub mod answer;
pub mod lora;
mod sleep;
pub mod timing;
mod tokens;

use answer::{Plan, error_body};

/// How many recent request bodies `/stub/requests` keeps.
const LOG_LEN: usize = 512;

#[derive(Default)]
struct Counters {
    running: AtomicU64,
    waiting: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    success: AtomicU64,
    errors: AtomicU64,
    aborted: AtomicU64,
}

struct Stub {
    cfg: StubConfig,
    /// The model served now, and the one being loaded (`/stub/load_model`), if any.
    model: Mutex<Served>,
    /// The continuous-batching model, when configured; else fixed ttft/tpot.
    engine: Option<timing::Engine>,
    seqs: Arc<Semaphore>,
    counters: Counters,
    log: Mutex<VecDeque<(String, Value)>>,
    /// The key `/v1` requests must carry, as `vllm serve --api-key` requires.
    api_key: Option<String>,
    /// LoRA adapters and their GPU slots.
    lora: Arc<lora::Lora>,
}

/// The stub's model: what it answers with, a load in progress, and vLLM's sleep mode state.
#[derive(Clone, Debug)]
struct Served {
    name: String,
    loading: Option<String>,
    /// The weights loaded (the served name until a `reload_weights`).
    weights: String,
    /// False after a level-2 sleep until weights are reloaded (vLLM then answers garbage).
    weights_valid: bool,
    sleep: sleep::Sleep,
    /// Engine API calls received (`/sleep`, `/wake_up`, …), in order.
    admin: Vec<String>,
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    cfg: StubConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, model = %cfg.served_model, "stub engine listening");
    let model = match &cfg.preset {
        Some(name) => timing::preset(name),
        None if cfg.batching => Some(timing::Model {
            step_base: cfg.step_base,
            step_per_seq: cfg.step_per_seq,
            prefill_per_token: cfg.prefill_per_token,
            max_num_seqs: cfg.max_num_seqs,
            kv_tokens: cfg.kv_tokens,
            priority: false,
            lora_step_overhead: 0.0,
        }),
        None => None,
    };
    let model = model.map(|m| timing::Model {
        priority: cfg.scheduling_policy == SchedulingPolicy::Priority,
        lora_step_overhead: cfg.lora_step_overhead,
        ..m
    });
    if let Some(m) = &model {
        tracing::info!(
            ?m,
            capacity_tokens_per_s = m.capacity_tokens_per_s(),
            "timing model on"
        );
    }
    let api_key = match &cfg.api_key_file {
        Some(p) => Some(ssw_config::read_secret(p)?),
        None => None,
    };
    let stub = Arc::new(Stub {
        api_key,
        lora: Arc::new(lora::Lora::new(
            cfg.lora_modules.clone(),
            cfg.max_loras,
            cfg.lora_swap_time,
        )),
        engine: model.map(timing::Engine::start),
        seqs: Arc::new(Semaphore::new(cfg.max_num_seqs as usize)),
        model: Mutex::new(Served {
            name: cfg.served_model.clone(),
            loading: None,
            weights: cfg.served_model.clone(),
            weights_valid: true,
            sleep: sleep::Sleep::default(),
            admin: Vec::new(),
        }),
        cfg,
        counters: Counters::default(),
        log: Mutex::new(VecDeque::new()),
    });
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models))
        .route("/v1/load_lora_adapter", post(load_lora_adapter))
        .route("/v1/unload_lora_adapter", post(unload_lora_adapter))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .layer(axum::middleware::from_fn_with_state(
            stub.clone(),
            check_api_key,
        ));
    let app = Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/stub/requests", get(requests))
        .route("/stub/load_model", post(load_model))
        .route("/stub/state", get(sleep::state))
        .route("/sleep", post(sleep::sleep))
        .route("/wake_up", post(sleep::wake_up))
        .route("/is_sleeping", get(sleep::is_sleeping))
        .route("/collective_rpc", post(sleep::collective_rpc))
        .route("/reset_prefix_cache", post(sleep::reset_prefix_cache))
        // vLLM (uvicorn) sets no body limit; an over-long prompt gets its 400, not a reset.
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(stub);
    axum::serve(nodelay(listener), app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// 200 when serving; 503 while a model loads (a vLLM that restarts does not answer at all).
async fn health(State(stub): State<Arc<Stub>>) -> StatusCode {
    if stub.served().loading.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

impl Stub {
    fn served(&self) -> Served {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `POST /stub/load_model {"model": NAME, "load_time_ms": 5000}` (stub only; `ssw rollout
/// --engine-api`): switches the served model as a restart of vLLM with another model would,
/// in place. From the call until `load_time` (default `stub.load_time`) has passed, `/health`,
/// `/v1/models` and new requests answer 503; then the stub serves NAME. Requests running at
/// the call finish with the old model. 202 when the load started; 409 while another load runs.
async fn load_model(State(stub): State<Arc<Stub>>, body: Bytes) -> Response {
    let parsed: Result<(String, Option<u64>), String> = serde_json::from_slice::<Value>(&body)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            let model = v.get("model").and_then(Value::as_str).unwrap_or_default();
            if model.is_empty() {
                return Err("`model` must be a non-empty string".into());
            }
            let ms = match v.get("load_time_ms") {
                None | Some(Value::Null) => None,
                Some(t) => Some(t.as_u64().ok_or("`load_time_ms` must be an integer")?),
            };
            Ok((model.to_owned(), ms))
        });
    let (model, load_time_ms) = match parsed {
        Ok(p) => p,
        Err(e) => {
            return json_resp(
                400,
                &error_body(400, "BadRequestError", &format!("load_model: {e}")),
            );
        }
    };
    let wait = load_time_ms.map_or(stub.cfg.load_time, Duration::from_millis);
    {
        let mut m = stub.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(other) = &m.loading {
            return json_resp(
                409,
                &error_body(409, "Conflict", &format!("already loading `{other}`")),
            );
        }
        m.loading = Some(model.clone());
    }
    tracing::info!(%model, ?wait, "stub: loading a model");
    let s = stub.clone();
    tokio::spawn(async move {
        sleep(wait).await;
        let mut m = s.model.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = m.loading.take() {
            tracing::info!(model = %name, "stub: model loaded");
            m.name = name;
        }
    });
    json_resp(
        202,
        &json!({"loading": model, "load_time_ms": wait.as_millis() as u64}),
    )
}

fn loading(model: &str) -> Response {
    json_resp(
        503,
        &error_body(
            503,
            "ServiceUnavailable",
            &format!("loading the model `{model}`"),
        ),
    )
}

/// vLLM's `--api-key` check: `/v1` requests without `Authorization: Bearer <key>` get 401
/// `{"error": "Unauthorized"}` (vllm/entrypoints/openai/api_server.py, AuthenticationMiddleware).
async fn check_api_key(
    State(stub): State<Arc<Stub>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(key) = &stub.api_key {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(&format!("Bearer {key}")) {
            return json_resp(401, &json!({"error": "Unauthorized"}));
        }
    }
    next.run(req).await
}

fn json_resp(status: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// How output tokens are paced.
enum Pace {
    /// Fixed delays, one of `max_num_seqs` slots held.
    Fixed {
        ttft: Duration,
        tpot: Duration,
        _permit: OwnedSemaphorePermit,
    },
    /// One tick per engine step of the timing model; dropping it aborts the sequence.
    Engine(tokio::sync::mpsc::UnboundedReceiver<()>),
}

impl Pace {
    async fn step(&mut self, first: bool) {
        match self {
            Pace::Fixed { ttft, tpot, .. } => sleep(if first { *ttft } else { *tpot }).await,
            Pace::Engine(rx) => {
                let _ = rx.recv().await;
            }
        }
    }
}

/// Counts a request as aborted unless it completed: dropped with the handler future or the
/// response body when the client goes away.
///
/// Generated tokens are counted as they are produced, one per step, as vLLM counts
/// `vllm:generation_tokens_total` per iteration: a rate over a window then shows what the engine
/// generated in that window, not the answers that happened to finish in it.
struct InFlight {
    stub: Arc<Stub>,
    done: bool,
    generated: u32,
    /// The request's LoRA slot, while it runs.
    _lora: Option<lora::Held>,
}

impl InFlight {
    fn token(&mut self, plan: &Plan) {
        if self.generated >= plan.completion_tokens() {
            return;
        }
        self.generated += 1;
        self.stub
            .counters
            .generation_tokens
            .fetch_add(1, Ordering::Relaxed);
    }

    fn complete(&mut self, plan: &Plan) {
        self.done = true;
        let c = &self.stub.counters;
        c.success.fetch_add(1, Ordering::Relaxed);
        c.prompt_tokens
            .fetch_add(u64::from(plan.prompt_tokens), Ordering::Relaxed);
        let rest = plan.completion_tokens().saturating_sub(self.generated);
        c.generation_tokens
            .fetch_add(u64::from(rest), Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.stub.counters;
        c.running.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            c.aborted.fetch_add(1, Ordering::Relaxed);
            tracing::info!("request aborted: client disconnected");
        }
    }
}

/// Decrements the waiting gauge even if the request is dropped while waiting.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A message containing this makes the stub break the connection before any output (a
/// request that crashes its engine), for the fault tests.
pub const CRASH_MARKER: &str = "ssw-stub:crash";

async fn chat(State(stub): State<Arc<Stub>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(stub, headers, body, answer::Kind::Chat).await
}

/// `/v1/completions`, as vLLM answers it.
async fn completions(State(stub): State<Arc<Stub>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(stub, headers, body, answer::Kind::Text).await
}

/// `/v1/load_lora_adapter` (vLLM with `VLLM_ALLOW_RUNTIME_LORA_UPDATING`): `{"lora_name",
/// "lora_path"}`; answers as vLLM's `OpenAIServingModels.load_lora_adapter` does.
async fn load_lora_adapter(State(stub): State<Arc<Stub>>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let (Some(name), Some(path)) = (
        v.get("lora_name").and_then(Value::as_str),
        v.get("lora_path").and_then(Value::as_str),
    ) else {
        return json_resp(
            400,
            &error_body(
                400,
                "BadRequestError",
                "Both 'lora_name' and 'lora_path' must be provided.",
            ),
        );
    };
    if !stub.lora.load(name, path) {
        return json_resp(
            400,
            &error_body(
                400,
                "InvalidUserInput",
                &format!("The lora adapter '{name}' has already been loaded."),
            ),
        );
    }
    (
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' added successfully."),
    )
        .into_response()
}

/// `/v1/unload_lora_adapter`: `{"lora_name"}`.
async fn unload_lora_adapter(State(stub): State<Arc<Stub>>, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let name = v
        .get("lora_name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !stub.lora.unload(name) {
        return json_resp(
            404,
            &error_body(
                404,
                "NotFoundError",
                &format!("The lora adapter '{name}' cannot be found."),
            ),
        );
    }
    (
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' removed successfully."),
    )
        .into_response()
}

/// `/v1/responses`, as vLLM answers it (without its store: VLLM_ENABLE_RESPONSES_API_STORE is
/// off by default, and the platform keeps the responses).
async fn responses(State(stub): State<Arc<Stub>>, headers: HeaderMap, body: Bytes) -> Response {
    generate(stub, headers, body, answer::Kind::Responses).await
}

async fn generate(
    stub: Arc<Stub>,
    headers: HeaderMap,
    body: Bytes,
    kind: answer::Kind,
) -> Response {
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return json_resp(
                400,
                &error_body(400, "BadRequestError", "body must be a JSON object"),
            );
        }
    };
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", fastrand::u64(..)));
    {
        let mut log = stub.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == LOG_LEN {
            log.pop_front();
        }
        log.push_back((request_id.clone(), body.clone()));
    }
    let cfg = &stub.cfg;
    let served = stub.served();
    if let Some(next) = &served.loading {
        stub.counters.errors.fetch_add(1, Ordering::Relaxed);
        return loading(next);
    }
    if served.sleep.asleep() {
        // vLLM parks a request to a sleeping engine until wake_up (vllm#45326 proposes to
        // abort it); a worker never sends one (it is drained first).
        stub.counters.errors.fetch_add(1, Ordering::Relaxed);
        return json_resp(
            503,
            &error_body(503, "ServiceUnavailable", "the engine is sleeping"),
        );
    }
    // A request for a known adapter names it as its model (vLLM answers with that name).
    let adapter = body
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| *m != served.name && stub.lora.knows(m))
        .map(str::to_owned);
    let plan = match Plan::of(
        kind,
        &body,
        request_id,
        adapter.as_deref().unwrap_or(&served.name),
        cfg.output_tokens,
        cfg.max_model_len,
    ) {
        Ok(p) => p,
        Err((status, err)) => {
            stub.counters.errors.fetch_add(1, Ordering::Relaxed);
            return json_resp(status, &err);
        }
    };
    // vLLM (v1/engine/processor.py) refuses a non-zero `priority` unless the server runs
    // `--scheduling-policy priority`: "Got priority {p} but Priority scheduling is not enabled."
    let priority = body.get("priority").and_then(Value::as_i64).unwrap_or(0);
    if priority != 0 && cfg.scheduling_policy != SchedulingPolicy::Priority {
        stub.counters.errors.fetch_add(1, Ordering::Relaxed);
        return json_resp(
            400,
            &error_body(
                400,
                "BadRequestError",
                &format!("Got priority {priority} but Priority scheduling is not enabled."),
            ),
        );
    }
    if cfg.error_rate > 0.0 && fastrand::f64() < cfg.error_rate {
        stub.counters.errors.fetch_add(1, Ordering::Relaxed);
        return json_resp(
            500,
            &error_body(500, "InternalServerError", "stub: injected engine failure"),
        );
    }
    if body
        .get("messages")
        .or_else(|| body.get("input"))
        .is_some_and(|m| m.to_string().contains(CRASH_MARKER))
    {
        // A poison request: the engine dies under it. The response starts, then the
        // connection breaks before any output, as when vLLM's engine process crashes.
        stub.counters.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("stub: crashing on a poison request");
        let broken = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("stub: engine crashed"))
        });
        let mut resp = Response::new(axum::body::Body::from_stream(broken));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    // The adapter's slot first: a request whose adapter cannot join the batch waits.
    let held = match &adapter {
        Some(a) => Some(stub.lora.acquire(a).await),
        None => None,
    };
    let mut pace = match &stub.engine {
        Some(engine) => Pace::Engine(engine.submit(
            plan.prompt_tokens,
            plan.completion_tokens(),
            priority,
            adapter.is_some(),
        )),
        None => {
            stub.counters.waiting.fetch_add(1, Ordering::Relaxed);
            let _waiting = Waiting(&stub.counters.waiting);
            match stub.seqs.clone().acquire_owned().await {
                Ok(p) => Pace::Fixed {
                    ttft: cfg.ttft,
                    tpot: cfg.tpot,
                    _permit: p,
                },
                Err(_) => {
                    return json_resp(503, &error_body(503, "ServiceUnavailable", "shutting down"));
                }
            }
        }
    };
    stub.counters.running.fetch_add(1, Ordering::Relaxed);
    let mut flight = InFlight {
        stub: stub.clone(),
        done: false,
        generated: 0,
        _lora: held,
    };
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    if !stream {
        for i in 0..plan.completion_tokens() {
            pace.step(i == 0).await;
            flight.token(&plan);
        }
        flight.complete(&plan);
        return json_resp(200, &plan.completion());
    }
    let events = plan.stream_events();
    let body = futures::stream::unfold(
        (events.into_iter(), flight, plan, true, pace),
        move |(mut events, mut flight, plan, first_step, mut pace)| async move {
            let Some((step, chunk)) = events.next() else {
                flight.complete(&plan);
                return None;
            };
            let mut first = first_step;
            if step {
                pace.step(first).await;
                flight.token(&plan);
                first = false;
            }
            let mut out = Vec::with_capacity(256);
            // The Responses API names each event; it ends without `[DONE]`.
            let typed = plan.kind == answer::Kind::Responses;
            if typed && let Some(t) = chunk.get("type").and_then(Value::as_str) {
                out.extend_from_slice(format!("event: {t}\n").as_bytes());
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(chunk.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
            if events.len() == 0 && !typed {
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            Some((
                Ok::<_, std::convert::Infallible>(Bytes::from(out)),
                (events, flight, plan, first, pace),
            ))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn sleep(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn models(State(stub): State<Arc<Stub>>) -> Response {
    let served = stub.served();
    if let Some(next) = &served.loading {
        return loading(next);
    }
    let m = &served.name;
    let mut data = vec![json!({
        "id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m,
        "parent": null, "max_model_len": stub.cfg.max_model_len, "permission": []
    })];
    // Adapters follow their base, `parent` naming it (vLLM's `show_available_models`).
    for (name, path) in stub.lora.adapters() {
        data.push(json!({
            "id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": path,
            "parent": m, "max_model_len": stub.cfg.max_model_len, "permission": []
        }));
    }
    json_resp(200, &json!({"object": "list", "data": data}))
}

async fn metrics(State(stub): State<Arc<Stub>>) -> Response {
    let c = &stub.counters;
    let (lora_running, lora_waiting) = stub.lora.info();
    let l = format!("model_name=\"{}\",engine=\"0\"", stub.served().name);
    let (running, waiting, kv) = match &stub.engine {
        Some(e) => {
            let load = &e.load;
            let kv = load.kv_used.load(Ordering::Relaxed) as f64 / f64::from(e.model().kv_tokens);
            (
                load.running.load(Ordering::Relaxed),
                load.waiting.load(Ordering::Relaxed),
                kv,
            )
        }
        None => {
            let running = c.running.load(Ordering::Relaxed);
            let kv = running as f64 / f64::from(stub.cfg.max_num_seqs);
            (running, c.waiting.load(Ordering::Relaxed), kv)
        }
    };
    let text = format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{l}}} {running}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{l}}} {}\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{l}}} {kv}\n\
         # HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{{{l}}} {}\n\
         # HELP vllm:generation_tokens_total Number of generation tokens processed.\n\
         # TYPE vllm:generation_tokens_total counter\nvllm:generation_tokens_total{{{l}}} {}\n\
         # HELP vllm:request_success_total Count of successfully processed requests.\n\
         # TYPE vllm:request_success_total counter\nvllm:request_success_total{{{l}}} {}\n\
         # HELP ssw_stub_request_errors_total Requests the stub refused or failed on purpose.\n\
         # TYPE ssw_stub_request_errors_total counter\nssw_stub_request_errors_total {}\n\
         # HELP ssw_stub_aborted_requests_total Requests whose client disconnected before the answer was complete.\n\
         # TYPE ssw_stub_aborted_requests_total counter\nssw_stub_aborted_requests_total {}\n\
         # HELP vllm:lora_requests_info Running stats on lora requests.\n\
         # TYPE vllm:lora_requests_info gauge\n\
         vllm:lora_requests_info{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {}\n\
         # HELP ssw_stub_lora_swap_ins_total Adapters swapped into a GPU slot.\n\
         # TYPE ssw_stub_lora_swap_ins_total counter\nssw_stub_lora_swap_ins_total {}\n",
        waiting + stub.lora.waiting(),
        c.prompt_tokens.load(Ordering::Relaxed),
        c.generation_tokens.load(Ordering::Relaxed),
        c.success.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.aborted.load(Ordering::Relaxed),
        stub.lora.max_loras(),
        lora_running,
        lora_waiting,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        stub.lora.swap_ins(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The recent request bodies as received, by request id (newest last).
async fn requests(State(stub): State<Arc<Stub>>) -> Response {
    let log = stub.log.lock().unwrap_or_else(|p| p.into_inner());
    let items: Vec<Value> = log
        .iter()
        .map(|(id, body)| json!({"request_id": id, "body": body}))
        .collect();
    json_resp(200, &Value::Array(items))
}

/// Token-sized SSE writes must leave at once (no Nagle delay).
fn nodelay(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    })
}
