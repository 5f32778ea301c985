//! `[stub]`: the stub engine, a vLLM stand-in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{ConfigError, invalid};

/// Stub engine settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StubConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The model name it serves and answers with.
    pub served_model: String,
    /// Context length; prompt words + `max_tokens` beyond it get a vLLM-style 400.
    pub max_model_len: u32,
    /// Delay before the first token.
    #[serde(with = "humantime_serde")]
    pub ttft: Duration,
    /// Delay between output tokens.
    #[serde(with = "humantime_serde")]
    pub tpot: Duration,
    /// Tokens per answer when the request sets no smaller `max_tokens`.
    pub output_tokens: u32,
    /// Requests run at once; the rest wait (and count in `vllm:num_requests_waiting`).
    pub max_num_seqs: u32,
    /// Share of requests answered 500 before any output (0–1).
    pub error_rate: f64,
    /// Behave like a busy GPU: a continuous-batching timing model (`ssw_stub::timing`) instead
    /// of fixed `ttft`/`tpot`. Uses `step_base`, `step_per_seq`, `prefill_per_token`,
    /// `kv_tokens` and `max_num_seqs`.
    pub batching: bool,
    /// A named set of timing-model figures (implies `batching`): one of [`STUB_PRESETS`].
    pub preset: Option<String>,
    /// Timing model: fixed cost of a decode step.
    #[serde(with = "humantime_serde")]
    pub step_base: Duration,
    /// Timing model: extra step cost per running sequence.
    #[serde(with = "humantime_serde")]
    pub step_per_seq: Duration,
    /// Timing model: cost per prompt token prefilled.
    #[serde(with = "humantime_serde")]
    pub prefill_per_token: Duration,
    /// Timing model: KV-cache budget in tokens.
    pub kv_tokens: u32,
    /// File holding the key clients must send (as `vllm serve --api-key` does for `/v1`).
    pub api_key_file: Option<PathBuf>,
    /// vLLM's `--scheduling-policy`: `fcfs` refuses a request with a non-zero `priority` (as
    /// vLLM does); `priority` orders the timing model's waiting queue by it and preempts the
    /// lowest-priority running sequence for a higher-priority arrival when the batch is full.
    pub scheduling_policy: crate::pool::SchedulingPolicy,
    /// How long `POST /stub/load_model` takes to switch the served model (`ssw rollout
    /// --engine-api`); a 14B AWQ vLLM restart takes 40–90 s on an A40, a level-1 wake 1–3 s
    /// (research/next-features-anchors.md §1).
    #[serde(with = "humantime_serde")]
    pub load_time: Duration,
    /// LoRA adapters it serves from the start, name → path (vLLM's `--lora-modules
    /// name=path`; the stub reads nothing there).
    pub lora_modules: std::collections::BTreeMap<String, String>,
    /// vLLM's `--max-loras`: adapters in one batch (GPU slots).
    pub max_loras: u32,
    /// How long swapping an adapter into a slot takes. The default, 50 ms, lies between a copy
    /// from vLLM's CPU cache (an r=16 adapter of a 7B model is about 81 MB, research/
    /// next-features-anchors.md §4b: about 3 ms over PCIe 4.0 x16) and a load from disk (about
    /// 80 ms at 1 GB/s), with the kernels' set-up.
    #[serde(with = "humantime_serde")]
    pub lora_swap_time: Duration,
    /// How much longer a decode step of the timing model takes while any request in the batch
    /// runs an adapter (a fraction). The default, 0.09, is Punica's measurement (arXiv
    /// 2310.18547, §7.2: Llama-2-7B, rank 16, one A100-80GB: 1 044 tokens/s with LoRA
    /// against vLLM's 1 140 on the base model), which found the same throughput whether the
    /// batch's requests use one adapter or each a different one: no extra cost per distinct
    /// adapter.
    pub lora_step_overhead: f64,
}

/// Timing-model presets of `ssw stub` (the A40 replicas of the production layout).
pub const STUB_PRESETS: &[&str] = &[
    "a40-qwen2.5-14b-awq",
    "a40-qwen3-8b-awq",
    "a40-qwen2.5-7b-awq",
];

impl Default for StubConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            served_model: "stub-model".into(),
            max_model_len: 32_768,
            ttft: Duration::ZERO,
            tpot: Duration::ZERO,
            output_tokens: 16,
            max_num_seqs: 256,
            error_rate: 0.0,
            batching: false,
            preset: None,
            step_base: Duration::from_millis(20),
            step_per_seq: Duration::from_micros(500),
            prefill_per_token: Duration::from_micros(200),
            kv_tokens: 60_000,
            api_key_file: None,
            scheduling_policy: crate::pool::SchedulingPolicy::Fcfs,
            load_time: Duration::from_secs(5),
            lora_modules: std::collections::BTreeMap::new(),
            max_loras: 1,
            lora_swap_time: Duration::from_millis(50),
            lora_step_overhead: 0.09,
        }
    }
}

impl StubConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let s = self;
        if s.served_model.is_empty() {
            return Err(invalid("stub.served_model", "must not be empty"));
        }
        if s.max_num_seqs == 0 {
            return Err(invalid("stub.max_num_seqs", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&s.error_rate) {
            return Err(invalid("stub.error_rate", "must be between 0 and 1"));
        }
        if let Some(p) = &s.preset
            && !STUB_PRESETS.contains(&p.as_str())
        {
            return Err(invalid(
                "stub.preset",
                format!(
                    "unknown preset `{p}` (presets: {})",
                    STUB_PRESETS.join(", ")
                ),
            ));
        }
        if s.kv_tokens == 0 {
            return Err(invalid("stub.kv_tokens", "must be at least 1"));
        }
        if !(0.0..=10.0).contains(&s.lora_step_overhead) {
            return Err(invalid(
                "stub.lora_step_overhead",
                "must be a fraction between 0 and 10",
            ));
        }
        Ok(())
    }
}
