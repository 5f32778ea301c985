//! A timing model of a continuous-batching engine (what vLLM does on a GPU).
//!
//! One engine loop runs steps. Before each step it admits waiting sequences, first come first
//! served, while fewer than `max_num_seqs` run and their KV reservation (prompt + answer tokens)
//! fits in `kv_tokens`. A step takes
//!
//! ```text
//! step = step_base + step_per_seq × running + prefill_per_token × (prompt tokens admitted)
//! ```
//!
//! and gives every running sequence one token; a sequence leaves when its answer is complete or
//! its client is gone. So a full batch of `max_num_seqs` delivers
//! `max_num_seqs / (step_base + step_per_seq × max_num_seqs)` tokens per second: the engine's
//! capacity. Requests beyond the batch or the KV budget wait (`vllm:num_requests_waiting`).
//!
//! With `priority` scheduling (vLLM's `--scheduling-policy priority`) the waiting queue is
//! ordered by `(priority, arrival)` (lower first), and a waiting sequence that orders before
//! the last running one preempts it when the batch is full: the preempted sequence goes back to
//! waiting and resumes where it stopped (vLLM recomputes its KV; its client sees a pause).
//! (vLLM itself preempts only under KV pressure, vllm-project/vllm#40004; the stub does what
//! the platform asks of a priority engine.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

/// The model's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Model {
    /// Fixed cost of a decode step (weights read once per step).
    pub step_base: Duration,
    /// Extra cost per running sequence (its KV cache read, its share of compute).
    pub step_per_seq: Duration,
    /// Cost per prompt token prefilled in a step.
    pub prefill_per_token: Duration,
    /// Sequences run at once.
    pub max_num_seqs: u32,
    /// KV-cache budget in tokens (prompt + answer reserved per sequence).
    pub kv_tokens: u32,
    /// Order by the request's `priority` (else first come, first served).
    pub priority: bool,
    /// A step with any LoRA request in the batch takes this much longer (a fraction; the
    /// stub's `lora_step_overhead`).
    pub lora_step_overhead: f64,
}

impl Model {
    /// Tokens per second with a full batch (the engine's capacity when it is never short of
    /// work and prompts are short).
    pub fn capacity_tokens_per_s(&self) -> f64 {
        let n = f64::from(self.max_num_seqs);
        n / (self.step_base + self.step_per_seq * self.max_num_seqs).as_secs_f64()
    }
}

/// Gauges shared with the server's `/metrics`.
#[derive(Debug, Default)]
pub struct Load {
    /// Sequences in the batch.
    pub running: AtomicU64,
    /// Sequences waiting for admission.
    pub waiting: AtomicU64,
    /// KV tokens reserved by the batch.
    pub kv_used: AtomicU64,
}

struct Seq {
    prompt: u32,
    tokens: u32,
    /// vLLM's `priority` (lower runs first) and the arrival order: the scheduling key.
    key: (i64, u64),
    /// Tokens produced so far (a preempted sequence resumes from here).
    produced: u32,
    /// It runs a LoRA adapter.
    lora: bool,
    /// One message per produced token; closed when the sequence is done.
    tx: mpsc::UnboundedSender<()>,
}

/// Handle to a running engine loop.
#[derive(Clone)]
pub struct Engine {
    submit: mpsc::UnboundedSender<Seq>,
    /// Its gauges.
    pub load: Arc<Load>,
    model: Model,
}

impl Engine {
    /// Starts the engine loop on the current runtime.
    pub fn start(model: Model) -> Self {
        let (submit, rx) = mpsc::unbounded_channel();
        let load = Arc::new(Load::default());
        tokio::spawn(run(model, rx, load.clone()));
        Self {
            submit,
            load,
            model,
        }
    }

    /// The parameters.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Submits a sequence of vLLM `priority` (0 unless priority scheduling), running a LoRA
    /// adapter or not; the receiver yields one `()` per token, then closes. Dropping it aborts
    /// the sequence (its slot and KV are freed at the next step).
    pub fn submit(
        &self,
        prompt: u32,
        tokens: u32,
        priority: i64,
        lora: bool,
    ) -> mpsc::UnboundedReceiver<()> {
        static ARRIVALS: AtomicU64 = AtomicU64::new(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let arrival = ARRIVALS.fetch_add(1, Ordering::Relaxed);
        let key = (if self.model.priority { priority } else { 0 }, arrival);
        let _ = self.submit.send(Seq {
            prompt,
            tokens,
            key,
            produced: 0,
            lora,
            tx,
        });
        rx
    }
}

async fn run(model: Model, mut incoming: mpsc::UnboundedReceiver<Seq>, load: Arc<Load>) {
    // Kept sorted by key (arrival alone under fcfs).
    let mut waiting: VecDeque<Seq> = VecDeque::new();
    let mut running: Vec<Seq> = Vec::new();
    let mut kv_used: u64 = 0;
    let need = |s: &Seq| u64::from(s.prompt) + u64::from(s.tokens);
    let enqueue = |waiting: &mut VecDeque<Seq>, s: Seq| {
        let at = waiting.partition_point(|w| w.key < s.key);
        waiting.insert(at, s);
    };
    // Steps follow an ideal timeline: each starts when the previous one should have ended, so the
    // timer's rounding (up to a millisecond per sleep) does not slow the engine by 10 % at 10 ms
    // steps. Lateness beyond `SLACK` (a starved process) is not caught up.
    const SLACK: Duration = Duration::from_millis(2);
    let mut step_end = tokio::time::Instant::now();
    loop {
        // Take everything that arrived; block only when there is nothing to do.
        if waiting.is_empty() && running.is_empty() {
            match incoming.recv().await {
                Some(s) => enqueue(&mut waiting, s),
                None => return,
            }
        }
        while let Ok(s) = incoming.try_recv() {
            enqueue(&mut waiting, s);
        }
        waiting.retain(|s| !s.tx.is_closed());
        if model.priority && running.len() >= model.max_num_seqs as usize {
            // A full batch: the first waiting sequence takes the place of the last running one
            // if it orders before it.
            let last = running
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| s.key)
                .map(|(i, s)| (i, s.key));
            if let (Some((i, key)), Some(first)) = (last, waiting.front())
                && first.key < key
            {
                let preempted = running.swap_remove(i);
                kv_used -= need(&preempted);
                enqueue(&mut waiting, preempted);
            }
        }
        let mut prefill: u64 = 0;
        while let Some(s) = waiting.front() {
            let fits = running.len() < model.max_num_seqs as usize
                && (kv_used + need(s) <= u64::from(model.kv_tokens) || running.is_empty());
            if !fits {
                break;
            }
            let s = waiting.pop_front().expect("front exists");
            kv_used += need(&s);
            // A resumed sequence recomputes its prompt and what it had produced.
            prefill += u64::from(s.prompt) + u64::from(s.produced);
            running.push(s);
        }
        load.running.store(running.len() as u64, Ordering::Relaxed);
        load.waiting.store(waiting.len() as u64, Ordering::Relaxed);
        load.kv_used.store(kv_used, Ordering::Relaxed);
        if running.is_empty() {
            continue;
        }
        let mut step = model.step_base
            + model.step_per_seq * running.len() as u32
            + model.prefill_per_token * prefill as u32;
        if model.lora_step_overhead > 0.0 && running.iter().any(|s| s.lora) {
            step = step.mul_f64(1.0 + model.lora_step_overhead);
        }
        if !step.is_zero() {
            let now = tokio::time::Instant::now();
            let start = if now <= step_end + SLACK {
                step_end
            } else {
                now
            };
            step_end = start + step;
            tokio::time::sleep_until(step_end).await;
        }
        running.retain_mut(|s| {
            let alive = s.tx.send(()).is_ok();
            s.produced += 1;
            let keep = alive && s.produced < s.tokens;
            if !keep {
                kv_used -= need(s);
            }
            keep
        });
        load.running.store(running.len() as u64, Ordering::Relaxed);
        load.kv_used.store(kv_used, Ordering::Relaxed);
    }
}

/// The A40 presets: engine figures for the four replicas of the production layout (14B-AWQ and
/// 8B-AWQ sharing a GPU). docs/benchmarks.md gives the figures they rest on and their sources;
/// every figure is an estimate until measured on the real host.
pub fn preset(name: &str) -> Option<Model> {
    match name {
        // Qwen2.5-14B-Instruct-AWQ on an A40 shared with the light model.
        "a40-qwen2.5-14b-awq" => Some(Model {
            step_base: Duration::from_millis(28),
            step_per_seq: Duration::from_micros(1000),
            prefill_per_token: Duration::from_micros(350),
            max_num_seqs: 64,
            kv_tokens: 55_000,
            priority: false,
            lora_step_overhead: 0.0,
        }),
        // Qwen3-8B-AWQ on an A40 shared with the heavy model.
        "a40-qwen3-8b-awq" => Some(Model {
            step_base: Duration::from_millis(16),
            step_per_seq: Duration::from_micros(600),
            prefill_per_token: Duration::from_micros(200),
            max_num_seqs: 64,
            kv_tokens: 60_000,
            priority: false,
            lora_step_overhead: 0.0,
        }),
        // Qwen2.5-7B-Instruct-AWQ, the base of the archetype adapters (issue 15), on an A40
        // beside another replica: the 8B figures scaled by the parameter count (7.6 B against
        // 8.2 B). The adapters' cost is the stub's `lora_swap_time` and `max_loras`.
        "a40-qwen2.5-7b-awq" => Some(Model {
            step_base: Duration::from_micros(14_800),
            step_per_seq: Duration::from_micros(560),
            prefill_per_token: Duration::from_micros(185),
            max_num_seqs: 64,
            kv_tokens: 64_000,
            priority: false,
            lora_step_overhead: 0.0,
        }),
        _ => None,
    }
}

/// Names of the presets.
pub const PRESETS: &[&str] = &[
    "a40-qwen2.5-14b-awq",
    "a40-qwen3-8b-awq",
    "a40-qwen2.5-7b-awq",
];

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn model(base_ms: u64, per_seq_us: u64, max_num_seqs: u32) -> Model {
        Model {
            step_base: Duration::from_millis(base_ms),
            step_per_seq: Duration::from_micros(per_seq_us),
            prefill_per_token: Duration::ZERO,
            max_num_seqs,
            kv_tokens: 1_000_000,
            priority: false,
            lora_step_overhead: 0.0,
        }
    }

    async fn drain(mut rx: mpsc::UnboundedReceiver<()>) -> u32 {
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_with_a_lora_request_steps_slower_whatever_the_number_of_adapters() {
        let m = Model {
            lora_step_overhead: 0.09,
            ..model(10, 500, 4)
        };
        let engine = Engine::start(m);
        let start = Instant::now();
        // One of four runs an adapter: every step of the batch pays (the kernels run for the
        // whole batch), 100 steps of 12 ms × 1.09.
        let seqs: Vec<_> = (0..4).map(|i| engine.submit(1, 100, 0, i == 0)).collect();
        futures::future::join_all(seqs.into_iter().map(drain)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(12).mul_f64(1.09) * 100
        );
        // Four requests, four adapters or one: the same (Punica's finding).
        let start = Instant::now();
        let seqs: Vec<_> = (0..4).map(|_| engine.submit(1, 100, 0, true)).collect();
        futures::future::join_all(seqs.into_iter().map(drain)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(12).mul_f64(1.09) * 100
        );
        // Without an adapter, the base step.
        let start = Instant::now();
        let seqs: Vec<_> = (0..4).map(|_| engine.submit(1, 100, 0, false)).collect();
        futures::future::join_all(seqs.into_iter().map(drain)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_delivers_the_formula_throughput() {
        // 4 slots, step = 10 ms + 4 × 0.5 ms = 12 ms → 4 / 12 ms = 333.3 tokens/s.
        let m = model(10, 500, 4);
        let engine = Engine::start(m);
        let start = Instant::now();
        let seqs: Vec<_> = (0..8).map(|_| engine.submit(1, 100, 0, false)).collect();
        let counts = futures::future::join_all(seqs.into_iter().map(drain)).await;
        let elapsed = start.elapsed();
        assert!(counts.iter().all(|&n| n == 100));
        // Two full batches of 100 steps each.
        assert_eq!(elapsed, Duration::from_millis(2 * 100 * 12));
        let tokens_per_s = 800.0 / elapsed.as_secs_f64();
        assert!(
            (tokens_per_s - m.capacity_tokens_per_s()).abs() < 1e-6,
            "{tokens_per_s}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_batch_wait_and_are_counted() {
        let engine = Engine::start(model(10, 0, 2));
        let seqs: Vec<_> = (0..5).map(|_| engine.submit(1, 3, 0, false)).collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(engine.load.running.load(Ordering::Relaxed), 2);
        assert_eq!(engine.load.waiting.load(Ordering::Relaxed), 3);
        futures::future::join_all(seqs.into_iter().map(drain)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(engine.load.running.load(Ordering::Relaxed), 0);
        assert_eq!(engine.load.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_kv_budget_limits_the_batch() {
        let mut m = model(10, 0, 8);
        m.kv_tokens = 250; // room for two 100-token sequences
        let engine = Engine::start(m);
        let _a = engine.submit(50, 50, 0, false);
        let _b = engine.submit(50, 50, 0, false);
        let _c = engine.submit(50, 50, 0, false);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(engine.load.running.load(Ordering::Relaxed), 2);
        assert_eq!(engine.load.waiting.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn prefill_cost_grows_with_the_prompt() {
        let mut m = model(10, 0, 4);
        m.prefill_per_token = Duration::from_micros(100);
        let engine = Engine::start(m);
        let start = Instant::now();
        let mut rx = engine.submit(1000, 2, 0, false);
        rx.recv().await;
        // First step: 10 ms + 1000 × 0.1 ms of prefill.
        assert_eq!(start.elapsed(), Duration::from_millis(110));
        rx.recv().await;
        assert_eq!(start.elapsed(), Duration::from_millis(120));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_client_frees_its_slot() {
        let engine = Engine::start(model(10, 0, 1));
        let a = engine.submit(1, 1000, 0, false);
        let b = engine.submit(1, 2, 0, false);
        tokio::time::sleep(Duration::from_millis(25)).await;
        drop(a);
        let start = Instant::now();
        assert_eq!(drain(b).await, 2);
        assert!(
            start.elapsed() <= Duration::from_millis(40),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn priority_orders_the_waiting_queue_and_preempts_the_last_running() {
        let mut m = model(10, 0, 2);
        m.priority = true;
        let engine = Engine::start(m);
        // Two low-priority sequences fill the batch; a flex one waits.
        let low_a = engine.submit(1, 100, 2, false);
        let low_b = engine.submit(1, 100, 1, false);
        let flex = engine.submit(1, 2, 2, false);
        tokio::time::sleep(Duration::from_millis(25)).await;
        assert_eq!(engine.load.waiting.load(Ordering::Relaxed), 1);
        // A priority arrival takes the place of the last running one (priority 2, first in).
        let start = Instant::now();
        let mut urgent = engine.submit(1, 2, 0, false);
        urgent.recv().await;
        assert_eq!(
            engine.load.waiting.load(Ordering::Relaxed),
            2,
            "low_a and flex wait"
        );
        assert_eq!(drain(urgent).await, 1);
        assert!(
            start.elapsed() <= Duration::from_millis(30),
            "{:?}",
            start.elapsed()
        );
        // The preempted sequence resumes and still delivers every token once.
        drop(flex);
        drop(low_b);
        assert_eq!(drain(low_a).await, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn without_priority_scheduling_arrival_order_rules() {
        let engine = Engine::start(model(10, 0, 1));
        let first = engine.submit(1, 5, 2, false);
        let second = engine.submit(1, 1, 0, false);
        let start = Instant::now();
        assert_eq!(drain(second).await, 1);
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(drain(first).await, 5);
    }

    #[test]
    fn config_knows_exactly_these_presets() {
        assert_eq!(PRESETS, ssw_config::STUB_PRESETS);
    }

    #[test]
    fn presets_exist_and_fit_their_batch_in_the_kv_budget() {
        for name in PRESETS {
            let m = preset(name).expect("preset");
            assert!(m.capacity_tokens_per_s() > 100.0, "{name}");
            assert!(
                m.kv_tokens >= m.max_num_seqs * 700,
                "{name}: 64 × (100 prompt + 600 answer) fit"
            );
        }
        assert!(preset("h100").is_none());
    }
}
