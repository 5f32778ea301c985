//! vLLM's multi-LoRA serving, emulated: the adapters it knows (`--lora-modules`, or loaded at
//! runtime through `/v1/load_lora_adapter` with `VLLM_ALLOW_RUNTIME_LORA_UPDATING`), and
//! `max_loras` GPU slots. A request for an adapter in a slot runs at once; one for another
//! adapter takes a free slot, or the least recently used slot no running request uses, and pays
//! the swap-in (`lora_swap_time`); when every slot serves running requests it waits, as vLLM's
//! scheduler keeps a request whose adapter cannot join the batch waiting (`max_loras` is "max
//! number of LoRAs in a single batch", vllm/config/lora.py). `vllm:lora_requests_info` reports
//! the slots as vLLM does (running and waiting adapters, `max_lora`), and
//! `ssw_stub_lora_swap_ins_total` counts swap-ins.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// One GPU slot.
#[derive(Debug)]
struct Slot {
    adapter: String,
    running: u32,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Adapter name → its path.
    known: BTreeMap<String, String>,
    slots: Vec<Slot>,
    /// Requests waiting for a slot, by adapter.
    waiting: BTreeMap<String, u32>,
    swap_ins: u64,
}

/// The engine's adapters and slots.
#[derive(Debug)]
pub struct Lora {
    state: Mutex<State>,
    max_loras: usize,
    swap_time: Duration,
    freed: Notify,
}

/// A request's hold on its adapter's slot (released on drop).
pub struct Held {
    lora: Arc<Lora>,
    adapter: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut s = self.lora.lock();
        if let Some(slot) = s.slots.iter_mut().find(|x| x.adapter == self.adapter) {
            slot.running = slot.running.saturating_sub(1);
            slot.last_used = Instant::now();
        }
        drop(s);
        self.lora.freed.notify_waiters();
    }
}

impl Lora {
    /// Adapters `known` (name → path), `max_loras` slots, each swap-in taking `swap_time`.
    pub fn new(known: BTreeMap<String, String>, max_loras: u32, swap_time: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                known,
                ..State::default()
            }),
            max_loras: max_loras.max(1) as usize,
            swap_time,
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `name` is a known adapter.
    pub fn knows(&self, name: &str) -> bool {
        self.lock().known.contains_key(name)
    }

    /// The known adapters (name, path).
    pub fn adapters(&self) -> Vec<(String, String)> {
        self.lock()
            .known
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Adds an adapter; false if the name is taken.
    pub fn load(&self, name: &str, path: &str) -> bool {
        let mut s = self.lock();
        if s.known.contains_key(name) {
            return false;
        }
        s.known.insert(name.to_owned(), path.to_owned());
        true
    }

    /// Forgets an adapter (and its idle slot); false if unknown.
    pub fn unload(&self, name: &str) -> bool {
        let mut s = self.lock();
        if s.known.remove(name).is_none() {
            return false;
        }
        s.slots.retain(|x| x.adapter != name || x.running > 0);
        true
    }

    /// Swap-ins so far.
    pub fn swap_ins(&self) -> u64 {
        self.lock().swap_ins
    }

    /// Requests waiting for a slot: vLLM's scheduler keeps them in its waiting queue, so they
    /// count in `vllm:num_requests_waiting` (vllm/v1/core/sched/scheduler.py: a request that
    /// would exceed `max_loras` is skipped and put back at the head of `waiting`).
    pub fn waiting(&self) -> u64 {
        self.lock().waiting.values().map(|n| u64::from(*n)).sum()
    }

    /// `vllm:lora_requests_info`'s labels: running adapters, waiting adapters.
    pub fn info(&self) -> (String, String) {
        let s = self.lock();
        let running: Vec<&str> = s
            .slots
            .iter()
            .filter(|x| x.running > 0)
            .map(|x| x.adapter.as_str())
            .collect();
        let waiting: Vec<&str> = s
            .waiting
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(a, _)| a.as_str())
            .collect();
        (running.join(","), waiting.join(","))
    }

    /// The slots' size.
    pub fn max_loras(&self) -> usize {
        self.max_loras
    }

    /// Waits until `adapter` holds a slot for this request (swapping it in if needed). A request
    /// whose client leaves while it waits stops counting as waiting.
    pub async fn acquire(self: &Arc<Self>, adapter: &str) -> Held {
        struct Waiting<'a>(&'a Lora, &'a str, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.2 {
                    let mut s = self.0.lock();
                    if let Some(n) = s.waiting.get_mut(self.1) {
                        *n = n.saturating_sub(1);
                    }
                }
            }
        }
        let mut counted = Waiting(self, adapter, false);
        loop {
            let freed = self.freed.notified();
            let swap = {
                let mut s = self.lock();
                let now = Instant::now();
                let taken = if let Some(slot) = s.slots.iter_mut().find(|x| x.adapter == adapter) {
                    slot.running += 1;
                    slot.last_used = now;
                    Some(false)
                } else if s.slots.len() < self.max_loras {
                    s.slots.push(Slot {
                        adapter: adapter.to_owned(),
                        running: 1,
                        last_used: now,
                    });
                    Some(true)
                } else if let Some(lru) = s
                    .slots
                    .iter_mut()
                    .filter(|x| x.running == 0)
                    .min_by_key(|x| x.last_used)
                {
                    *lru = Slot {
                        adapter: adapter.to_owned(),
                        running: 1,
                        last_used: now,
                    };
                    Some(true)
                } else {
                    None
                };
                match taken {
                    Some(swap) => {
                        if counted.2
                            && let Some(n) = s.waiting.get_mut(adapter)
                        {
                            *n = n.saturating_sub(1);
                        }
                        counted.2 = false;
                        if swap {
                            s.swap_ins += 1;
                        }
                        Some(swap)
                    }
                    None => {
                        if !counted.2 {
                            *s.waiting.entry(adapter.to_owned()).or_default() += 1;
                            counted.2 = true;
                        }
                        None
                    }
                }
            };
            match swap {
                Some(swap) => {
                    let held = Held {
                        lora: self.clone(),
                        adapter: adapter.to_owned(),
                    };
                    if swap && !self.swap_time.is_zero() {
                        tokio::time::sleep(self.swap_time).await;
                    }
                    return held;
                }
                None => freed.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lora(max: u32) -> Arc<Lora> {
        let known = ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), format!("/adapters/{n}")))
            .collect();
        Arc::new(Lora::new(known, max, Duration::ZERO))
    }

    #[tokio::test]
    async fn resident_adapters_swap_nothing_and_a_full_batch_waits_for_a_free_slot() {
        let l = lora(2);
        let a = l.acquire("a").await;
        let a2 = l.acquire("a").await;
        let b = l.acquire("b").await;
        assert_eq!(l.swap_ins(), 2, "a and b swapped in once each");
        // Both slots run requests: c waits until one is free.
        let l2 = l.clone();
        let c = tokio::spawn(async move { l2.acquire("c").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!c.is_finished());
        assert_eq!(l.info(), ("a,b".into(), "c".into()));
        assert_eq!(l.waiting(), 1, "counted in vllm:num_requests_waiting");
        drop(b);
        let c = c.await.unwrap();
        assert_eq!(l.swap_ins(), 3, "c took b's idle slot");
        assert_eq!(l.info().1, "", "nothing waits");
        assert_eq!(l.waiting(), 0);
        drop((a, a2, c));
        // LRU: a was used before c, so d… here b evicts a.
        let _b = l.acquire("b").await;
        assert_eq!(l.swap_ins(), 4);
        assert_eq!(l.info().0, "b");
    }
}
