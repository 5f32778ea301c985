//! The Redis key schema.
//!
//! Every key of a pool carries the pool name as a hash tag (`ssw:{heavy}:jobs`), so a pool's keys
//! live in one Redis Cluster slot and the Lua scripts that touch several of them stay legal. A
//! gateway's reply stream is tagged by the gateway id.
//!
//! | key | type | written by | meaning |
//! |---|---|---|---|
//! | `P:{pool}:jobs` | stream, group `workers` | gateway `XADD`, worker `XREADGROUP`/RECLAIM | jobs not yet finished |
//! | `P:{pool}:queued-bytes` | integer | ENQUEUE, and every script that deletes an entry | bytes of job bodies on the stream |
//! | `P:{pool}:job:<id>` | string with TTL | worker claim, gateway cancel | [`JobState`] of a job |
//! | `P:{pool}:workers` | sorted set | worker | member = worker id, score = heartbeat expiry (ms) |
//! | `P:{pool}:worker-status` | hash | worker | worker id → [`crate::heartbeat::WorkerStatus`] JSON |
//! | `P:{pool}:drain` | hash | `ssw drain`/`resume`/`rollout`; read by HEARTBEAT | worker id → [`crate::heartbeat::Drain`] JSON: an operator's drain, kept across the worker's restarts |
//! | `P:{pool}:lane:<tier>:<tenant>` | sorted set | ENQUEUE, REQUEUE add; PULL pops; CANCEL, EXPIRE remove | entry ids of one tenant's waiting jobs of one tier, in arrival order |
//! | `P:{pool}:ring:<tier>` / `P:{pool}:ring-set:<tier>` | list / set | ENQUEUE, REQUEUE, PULL | the tier's tenants with waiting jobs, in turn order (the set: membership) |
//! | `P:{pool}:waiting` | hash | ENQUEUE, REQUEUE, PULL, CANCEL, EXPIRE | jobs waiting, per tier (`<tier>`) and per tenant (`tenant:<name>`); each lower tier's earned share of picks (`credit:<tier>`, the minimum-share scheduler's, PULL only) |
//! | `P:{pool}:wake:<any\|priority\|worker id>` | list | ENQUEUE, REQUEUE, a worker | wake-up tokens for idle workers |
//! | `P:{t:<tenant>}:rpm`, `…:tpm` | hash | ALLOWANCE | a tenant's request and token buckets: `level`, read at `ms` |
//! | `P:{t:<tenant>}:slots`, `…:slot-leases` | hash, sorted set | ALLOWANCE | concurrency slots each gateway instance holds, and its lease expiry (ms) |
//! | `P:{routing}:version` | integer | PUBLISH_ROUTING | the routing version in force (absent: none published) |
//! | `P:{routing}:versions` | hash | PUBLISH_ROUTING | routing version → its document (JSON: the settings, who published it, why, when) |
//! | `P:{routing}:status` | hash | gateways | gateway instance → the routing version it has in force, or why it refused the latest (JSON) |
//! | `P:{r:<route>}:stats:<slice>` | hash, TTL the guard's window | every gateway, each second | a guarded route's requests, 5xx answers and TTFT histogram per variant over one 10 s slice |
//! | `P:{r:<route>}:guard` | string, PX 15 s | `SET NX` by gateways | the gateway instance that judges the route's guard |
//! | `P:{gw:<instance>}:replies` | stream with TTL | worker `XADD NOMKSTREAM`, gateway `XREAD` | reply events for one gateway process (`<instance>`: its id and a random nonce per start) |

use crate::tier::Tier;

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

    /// The routing version in force.
    pub fn routing_version(&self) -> String {
        format!("{}:{{routing}}:version", self.prefix)
    }

    /// Routing versions' documents.
    pub fn routing_versions(&self) -> String {
        format!("{}:{{routing}}:versions", self.prefix)
    }

    /// Each gateway's routing status.
    pub fn routing_status(&self) -> String {
        format!("{}:{{routing}}:status", self.prefix)
    }

    /// A guarded route's stats for one time slice (requests, errors, TTFT buckets per variant).
    pub fn route_stats(&self, route: &str, slice: u64) -> String {
        format!("{}:{{r:{route}}}:stats:{slice}", self.prefix)
    }

    /// A guarded route's lease: the gateway instance that judges it.
    pub fn route_guard(&self, route: &str) -> String {
        format!("{}:{{r:{route}}}:guard", self.prefix)
    }

    /// The pool's job stream.
    pub fn jobs(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:jobs", self.prefix)
    }

    /// The pool's fast lane: jobs that generate nothing (`/tokenize`, `/detokenize`).
    pub fn fast(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:fast", self.prefix)
    }

    /// Bytes of job bodies on the pool's stream (what `max_queue_bytes` limits).
    pub fn queued_bytes(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:queued-bytes", self.prefix)
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

    /// Operators' drains of the pool's workers.
    pub fn drain(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:drain", self.prefix)
    }

    /// Everything of the pool's keys but the last part (`P:{pool}:`): the PULL script builds
    /// its lanes' names from it, all in the pool's slot.
    pub fn pool_prefix(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:", self.prefix)
    }

    /// One tenant's lane of one tier: entry ids of its waiting jobs, by arrival.
    pub fn lane(&self, pool: &str, tier: Tier, tenant: &str) -> String {
        format!("{}:{{{pool}}}:lane:{tier}:{tenant}", self.prefix)
    }

    /// The tier's tenants with waiting jobs, in turn order.
    pub fn ring(&self, pool: &str, tier: Tier) -> String {
        format!("{}:{{{pool}}}:ring:{tier}", self.prefix)
    }

    /// The members of [`Keys::ring`], as a set.
    pub fn ring_set(&self, pool: &str, tier: Tier) -> String {
        format!("{}:{{{pool}}}:ring-set:{tier}", self.prefix)
    }

    /// Jobs waiting, per tier and per tenant.
    pub fn waiting(&self, pool: &str) -> String {
        format!("{}:{{{pool}}}:waiting", self.prefix)
    }

    /// Wake-up tokens: `any` (a job of any tier arrived), `priority`, or one worker's own.
    pub fn wake(&self, pool: &str, which: &str) -> String {
        format!("{}:{{{pool}}}:wake:{which}", self.prefix)
    }

    /// A tenant's requests-per-minute bucket (its own slot, shared by every pool).
    pub fn tenant_rpm(&self, tenant: &str) -> String {
        format!("{}:{{t:{tenant}}}:rpm", self.prefix)
    }

    /// A tenant's tokens-per-minute bucket.
    pub fn tenant_tpm(&self, tenant: &str) -> String {
        format!("{}:{{t:{tenant}}}:tpm", self.prefix)
    }

    /// A stored Responses API response (`/v1/responses`): its tenant, its whole input and the
    /// response, under a TTL.
    pub fn response(&self, id: &str) -> String {
        format!("{}:{{resp:{id}}}", self.prefix)
    }

    /// A tenant's use of its daily quotas: the UTC day, requests and tokens used on it.
    pub fn tenant_day(&self, tenant: &str) -> String {
        format!("{}:{{t:{tenant}}}:day", self.prefix)
    }

    /// The concurrency slots each gateway instance holds for a tenant.
    pub fn tenant_slots(&self, tenant: &str) -> String {
        format!("{}:{{t:{tenant}}}:slots", self.prefix)
    }

    /// The leases on those slots: gateway instance → expiry (ms).
    pub fn tenant_slot_leases(&self, tenant: &str) -> String {
        format!("{}:{{t:{tenant}}}:slot-leases", self.prefix)
    }

    /// A gateway process's reply stream (`instance`: the gateway's id and its start nonce).
    pub fn replies(&self, instance: &str) -> String {
        format!("{}:{{gw:{instance}}}:replies", self.prefix)
    }
}

/// What a job's state key holds. Absent means queued and never claimed.
///
/// Every claim that lets a worker run the job takes the next *fence* number; the run's reply
/// events carry it, and a gateway ignores events of an older fence than one it has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Put back on the queue after run `fence` (its engine refused or crashed before output).
    Queued {
        /// The last run's fence.
        fence: u32,
    },
    /// Run `fence` by `worker`, which called its engine; no output has reached the client yet,
    /// so another worker may take it over if this one dies.
    Started {
        /// The worker.
        worker: String,
        /// The run's fence.
        fence: u32,
    },
    /// Run `fence` by `worker` has committed a response to the client; the job must never run
    /// again.
    Output {
        /// The worker.
        worker: String,
        /// The run's fence.
        fence: u32,
    },
    /// The client is gone or the deadline passed: no worker may start it, a running one aborts.
    Cancelled,
}

impl JobState {
    /// The stored string.
    pub fn encode(&self) -> String {
        match self {
            Self::Queued { fence } => format!("queued:{fence}"),
            Self::Started { worker, fence } => format!("started:{worker}:{fence}"),
            Self::Output { worker, fence } => format!("output:{worker}:{fence}"),
            Self::Cancelled => "cancelled".to_owned(),
        }
    }

    /// Parses the stored string.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "cancelled" {
            return Some(Self::Cancelled);
        }
        if let Some(f) = s.strip_prefix("queued:") {
            return Some(Self::Queued {
                fence: f.parse().ok()?,
            });
        }
        let run = |rest: &str| {
            let (worker, fence) = rest.rsplit_once(':')?;
            Some((worker.to_owned(), fence.parse().ok()?))
        };
        if let Some(rest) = s.strip_prefix("started:") {
            let (worker, fence) = run(rest)?;
            return Some(Self::Started { worker, fence });
        }
        let (worker, fence) = run(s.strip_prefix("output:")?)?;
        Some(Self::Output { worker, fence })
    }

    /// Whether run `fence` of `worker` owns the job in this state.
    pub fn owned_by(&self, me: &str, my_fence: u32) -> bool {
        match self {
            Self::Started { worker, fence } | Self::Output { worker, fence } => {
                worker == me && *fence == my_fence
            }
            Self::Queued { .. } | Self::Cancelled => false,
        }
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
        assert_eq!(k.queued_bytes("heavy"), "ssw:{heavy}:queued-bytes");
        assert_eq!(k.replies("g1"), "ssw:{gw:g1}:replies");
        assert_eq!(
            k.lane("heavy", Tier::Flex, "studio-a"),
            "ssw:{heavy}:lane:flex:studio-a"
        );
        assert!(
            k.lane("heavy", Tier::Priority, "t")
                .starts_with(&k.pool_prefix("heavy"))
        );
        assert_eq!(k.ring("heavy", Tier::Priority), "ssw:{heavy}:ring:priority");
    }

    #[test]
    fn job_state_round_trips() {
        for s in [
            JobState::Queued { fence: 3 },
            JobState::Started {
                worker: "heavy-0".into(),
                fence: 1,
            },
            JobState::Output {
                worker: "w.1".into(),
                fence: 12,
            },
            JobState::Cancelled,
        ] {
            assert_eq!(JobState::parse(&s.encode()), Some(s));
        }
        for bad in ["garbage", "started:w", "output:w:x", "queued:"] {
            assert_eq!(JobState::parse(bad), None, "{bad}");
        }
        let s = JobState::parse("started:w:2").unwrap();
        assert!(s.owned_by("w", 2));
        assert!(!s.owned_by("w", 1));
        assert!(!s.owned_by("v", 2));
    }
}
