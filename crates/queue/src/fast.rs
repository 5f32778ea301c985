//! A pool's fast lane: jobs that generate nothing (`/tokenize`, `/detokenize`). They skip the
//! tier lanes and the workers' generation slots: a gateway pushes one on a list (FAST_PUSH,
//! bounded), any worker of the pool pops it (`BLPOP`, at most once) and answers on the
//! gateway's reply stream like any job. Nothing is reclaimed: the gateway's short deadline tells
//! the client when no answer comes.

use std::time::Duration;

use ssw_protocol::job::Job;

use crate::client::Dedicated;
use crate::scripts::FAST_PUSH;
use crate::{QueueError, Redis};

/// The most jobs waiting on one pool's fast lane.
pub const FAST_LANE_MAX: u64 = 1024;

impl Redis {
    /// Pushes `job` on its pool's fast lane; `false` when the lane is full.
    pub async fn fast_push(&self, pool: &str, job: &Job) -> Result<bool, QueueError> {
        let mut inv = FAST_PUSH.prepare_invoke();
        // The lane outlives its jobs' deadlines by a minute.
        let ttl = job.deadline_ms.saturating_sub(crate::now_ms()) + 60_000;
        inv.key(self.keys().fast(pool))
            .arg(job.to_json())
            .arg(FAST_LANE_MAX)
            .arg(ttl);
        let n: i64 = self.script(&inv).await?;
        Ok(n >= 0)
    }
}

impl Dedicated {
    /// Waits up to `block` for a job on `pool`'s fast lane (`keys` names it).
    pub async fn fast_pop(
        &mut self,
        keys: &ssw_protocol::keys::Keys,
        pool: &str,
        block: Duration,
    ) -> Result<Option<Result<Job, ssw_protocol::job::DecodeError>>, QueueError> {
        let popped: Option<(String, Vec<u8>)> = self
            .blocking(
                redis::cmd("BLPOP")
                    .arg(keys.fast(pool))
                    .arg(block.as_secs_f64()),
                block,
            )
            .await?;
        Ok(popped.map(|(_, bytes)| Job::from_json(&bytes)))
    }
}
