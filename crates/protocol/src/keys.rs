//! The Redis key schema.
//!
//! Every key of a pool carries the pool name as a hash tag (`ssw:{heavy}:jobs`), so a pool's keys
//! live in one Redis Cluster slot and the Lua scripts that touch several of them stay legal. A
//! gateway's reply stream is tagged by the gateway id.
//!
//! | key | type | written by | meaning |
//! |---|---|---|---|
//! | `P:{pool}:jobs` | stream, group `workers` | gateway `XADD`, worker `XREADGROUP`/`XAUTOCLAIM` | jobs not yet finished |
//! | `P:{pool}:job:<id>` | string with TTL | worker claim, gateway cancel | [`JobState`] of a job |
//! | `P:{pool}:workers` | sorted set | worker | member = worker id, score = heartbeat expiry (ms) |
//! | `P:{pool}:worker-status` | hash | worker | worker id → [`crate::heartbeat::WorkerStatus`] JSON |
//! | `P:{gw:<id>}:replies` | stream with TTL | worker `XADD NOMKSTREAM`, gateway `XREAD` | reply events for one gateway |

/// The consumer group every worker of a pool reads the job stream through.
pub const GROUP: &str = "workers";

/// Key names under a prefix (default `ssw`).
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new("ssw")
    }
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The pool's job stream.
    pub fn jobs(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:jobs", self.prefix)
    }

    /// The state marker of one job.
    pub fn job_state(&self, pool: &str, job: &str) -> String {
        format!("{}:{{{pool}}}:job:{job}", self.prefix)
    }

    /// The pool's live-worker sorted set.
    pub fn workers(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:workers", self.prefix)
    }

    /// The pool's worker-status hash.
    pub fn worker_status(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:worker-status", self.prefix)
    }

    /// A gateway's reply stream.
    pub fn replies(&self, gateway: &str) -> String {
        format!("{}:{{gw:{gateway}}}:replies", self.prefix)
    }
}

/// What a job's state key holds. Absent means queued and untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// A worker claimed it and called its engine; no output has reached the client yet, so
    /// another worker may take it over if this one dies.
    Started(String),
    /// The worker has committed a response to the client; the job must never run again.
    Output(String),
    /// The client is gone or the deadline passed: no worker may start it, a running one aborts.
    Cancelled,
}

impl JobState {
    /// The stored string.
    pub fn encode(&self) -> String {
        match self {
            Self::Started(w) => format!("started:{w}"),
            Self::Output(w) => format!("output:{w}"),
            Self::Cancelled => "cancelled".to_owned(),
        }
    }

    /// Parses the stored string.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "cancelled" {
            return Some(Self::Cancelled);
        }
        if let Some(w) = s.strip_prefix("started:") {
            return Some(Self::Started(w.to_owned()));
        }
        s.strip_prefix("output:")
            .map(|w| Self::Output(w.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keys_share_one_hash_tag() {
        let k = Keys::default();
        assert_eq!(k.jobs("heavy"), "ssw:{heavy}:jobs");
        assert_eq!(k.job_state("heavy", "j1"), "ssw:{heavy}:job:j1");
        assert_eq!(k.workers("light"), "ssw:{light}:workers");
        assert_eq!(k.worker_status("light"), "ssw:{light}:worker-status");
        assert_eq!(k.replies("g1"), "ssw:{gw:g1}:replies");
    }

    #[test]
    fn job_state_round_trips() {
        for s in [
            JobState::Started("heavy-0".into()),
            JobState::Output("w:1".into()),
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(&s.encode()), Some(s));
        }
        assert_eq!(JobState::parse("garbage"), None);
    }
}
