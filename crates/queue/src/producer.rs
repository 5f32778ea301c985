//! Gateway side of the queue.

use std::time::Duration;

use redis::Value;
use ssw_protocol::heartbeat::WorkerStatus;
use ssw_protocol::job::Job;
use ssw_protocol::keys::{GROUP, JobState};
use ssw_protocol::reply::Reply;
use ssw_protocol::tier::Tier;

use crate::resp::{self, Entry};
use crate::scripts::{CANCEL, ENQUEUE, EXPIRE, KEEP_REPLIES, POOL_STATS};
use crate::{QueueError, Redis};

/// A pool's queue limits, for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most jobs waiting for a worker (`pools.<p>.max_queue`).
    pub max_queue: u64,
    /// Most bytes of job bodies on the pool's stream (`pools.<p>.max_queue_bytes`).
    pub max_queue_bytes: u64,
    /// Most jobs waiting in the job's tier (`pools.<p>.tiers.<t>.max_queue`; 0: none of its own).
    pub max_tier: u64,
    /// Most jobs of the job's tenant waiting in the pool (`tenants.<t>.max_queued`; 0: none).
    pub max_tenant: u64,
}

/// Which lane a job waits in: its tier and tenant (what the scripts that take a job out of the
/// queue need besides its ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// The job's tier.
    pub tier: Tier,
    /// The job's tenant.
    pub tenant: String,
    /// The lane's owner within the tier: the tenant, or `<tenant>/<adapter>`.
    pub owner: String,
}

impl Lane {
    /// The lane of `job`.
    pub fn of(job: &Job) -> Self {
        Self {
            tier: job.tier,
            tenant: job.tenant.clone(),
            owner: job.lane_owner().into_owned(),
        }
    }
}

/// Result of an enqueue attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// On the stream under this entry id.
    Accepted(String),
    /// Refused: the backlog had reached `max_queue`.
    Full {
        /// Backlog at the time.
        backlog: u64,
    },
    /// Refused: the job would take the pool's queued bytes past `max_queue_bytes`.
    FullBytes {
        /// Queued bytes at the time.
        bytes: u64,
    },
    /// Refused: the job's tier had reached its own `max_queue`.
    FullTier {
        /// Jobs waiting in the tier at the time.
        waiting: u64,
    },
    /// Refused: the job's tenant had reached its `max_queued` in this pool.
    FullTenant {
        /// The tenant's jobs waiting at the time.
        waiting: u64,
    },
}

/// What a deadline check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nobody started it; it is cancelled and gone from the stream.
    Expired,
    /// A worker started it in time; it keeps running.
    Running(JobState),
}

/// One tier's waiting jobs in a pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Jobs waiting.
    pub waiting: u64,
    /// Enqueue time (ms) of the oldest waiting one.
    pub oldest_waiting_ms: Option<u64>,
}

/// A pool's queue state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolStats {
    /// Jobs waiting for a worker.
    pub backlog: u64,
    /// Jobs claimed by a worker and not finished.
    pub pending: u64,
    /// Enqueue time (ms) of the oldest waiting job.
    pub oldest_waiting_ms: Option<u64>,
    /// Per tier, in [`Tier::ALL`] order.
    pub tiers: [TierStats; 3],
    /// Jobs waiting per tenant (tenants with a count).
    pub tenants: Vec<(String, u64)>,
    /// Statuses of workers whose heartbeat has not expired.
    pub workers: Vec<WorkerStatus>,
    /// Bytes of job bodies on the stream.
    pub queued_bytes: u64,
}

impl PoolStats {
    /// Live workers that can take jobs (engine up, not draining).
    pub fn serving(&self) -> usize {
        self.workers.iter().filter(|w| w.serving()).count()
    }
}

impl Redis {
    /// Admits and enqueues a job on `pool`'s stream. A Redis at `maxmemory` refuses it
    /// ([`QueueError::OutOfMemory`]) before anything is written.
    pub async fn enqueue(
        &self,
        pool: &str,
        job: &Job,
        limits: QueueLimits,
    ) -> Result<Enqueued, QueueError> {
        let keys = self.keys();
        let mut inv = ENQUEUE.prepare_invoke();
        inv.key(keys.jobs(pool))
            .key(keys.queued_bytes(pool))
            .key(keys.lane(pool, job.tier, &job.lane_owner()))
            .key(keys.ring(pool, job.tier))
            .key(keys.ring_set(pool, job.tier))
            .key(keys.waiting(pool))
            .key(keys.wake(pool, wake_for(job.tier)))
            .arg(GROUP)
            .arg(limits.max_queue)
            .arg(limits.max_queue_bytes)
            .arg(job.size())
            .arg(job.tier.as_str())
            .arg(&*job.lane_owner())
            .arg(limits.max_tier)
            .arg(limits.max_tenant);
        for (k, v) in job.to_fields() {
            inv.arg(k).arg(&*v);
        }
        let v: Value = self.script(&inv).await?;
        let mut parts = resp::array(v)?.into_iter();
        let flag = parts.next().as_ref().and_then(resp::int);
        match (flag, parts.next(), parts.next()) {
            (Some(1), Some(id), None) => Ok(Enqueued::Accepted(
                resp::string(id).ok_or_else(|| QueueError::Malformed("XADD id".into()))?,
            )),
            (Some(0), Some(which), Some(n)) => {
                let n = resp::int(&n).unwrap_or_default().max(0) as u64;
                match resp::string(which).as_deref() {
                    Some("jobs") => Ok(Enqueued::Full { backlog: n }),
                    Some("bytes") => Ok(Enqueued::FullBytes { bytes: n }),
                    Some("tier") => Ok(Enqueued::FullTier { waiting: n }),
                    Some("tenant") => Ok(Enqueued::FullTenant { waiting: n }),
                    other => Err(QueueError::Malformed(format!("enqueue refusal {other:?}"))),
                }
            }
            other => Err(QueueError::Malformed(format!("enqueue reply {other:?}"))),
        }
    }

    /// Cancels a job whose client went away. `ttl` bounds how long the marker lives (past the
    /// job's deadline). An empty `entry_id` (an enqueue whose outcome is unknown) only sets the
    /// marker: a worker that claims the entry skips it.
    pub async fn cancel(
        &self,
        pool: &str,
        job: &str,
        entry_id: &str,
        ttl: Duration,
        size: u64,
        lane: &Lane,
    ) -> Result<Option<JobState>, QueueError> {
        let keys = self.keys();
        let mut inv = CANCEL.prepare_invoke();
        inv.key(keys.job_state(pool, job))
            .key(keys.jobs(pool))
            .key(keys.queued_bytes(pool))
            .key(keys.lane(pool, lane.tier, &lane.owner))
            .key(keys.waiting(pool))
            .arg(entry_id)
            .arg(ttl.as_millis() as u64)
            .arg(size)
            .arg(lane.tier.as_str())
            .arg(&lane.owner);
        let prev: Option<String> = self.script(&inv).await?;
        Ok(prev.as_deref().and_then(JobState::parse))
    }

    /// At the job's deadline: expires it unless a worker started it.
    pub async fn expire(
        &self,
        pool: &str,
        job: &str,
        entry_id: &str,
        ttl: Duration,
        size: u64,
        lane: &Lane,
    ) -> Result<Expiry, QueueError> {
        let keys = self.keys();
        let mut inv = EXPIRE.prepare_invoke();
        inv.key(keys.job_state(pool, job))
            .key(keys.jobs(pool))
            .key(keys.queued_bytes(pool))
            .key(keys.lane(pool, lane.tier, &lane.owner))
            .key(keys.waiting(pool))
            .arg(entry_id)
            .arg(ttl.as_millis() as u64)
            .arg(size)
            .arg(lane.tier.as_str())
            .arg(&lane.owner);
        let cur: Option<String> = self.script(&inv).await?;
        Ok(match cur.as_deref().and_then(JobState::parse) {
            None | Some(JobState::Cancelled | JobState::Queued { .. }) => Expiry::Expired,
            Some(state) => Expiry::Running(state),
        })
    }

    /// Workers of `pool` whose heartbeat has not expired at `now_ms`.
    pub async fn live_workers(&self, pool: &str, now_ms: u64) -> Result<Vec<String>, QueueError> {
        self.query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys().workers(pool))
                .arg(now_ms)
                .arg("+inf"),
        )
        .await
    }

    /// The Redis server's `run_id`: a new one means the server restarted (and, without
    /// persistence, lost every key).
    pub async fn run_id(&self) -> Result<String, QueueError> {
        let info: String = self.query(redis::cmd("INFO").arg("server")).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .ok_or_else(|| QueueError::Malformed("INFO server without run_id".into()))
    }

    /// Ensures a gateway's reply stream exists and renews its TTL; `Ok(false)` means it had
    /// vanished (Redis lost its data), so replies to requests in flight are lost.
    pub async fn keep_replies(&self, key: &str, ttl: Duration) -> Result<bool, QueueError> {
        let mut inv = KEEP_REPLIES.prepare_invoke();
        inv.key(key).arg(ttl.as_millis() as u64);
        let existed: i64 = self.script(&inv).await?;
        Ok(existed == 1)
    }

    /// Drops reply entries up to and including `last_id` (they have been delivered).
    pub async fn trim_replies(&self, key: &str, last_id: &str) -> Result<(), QueueError> {
        // MINID keeps ids >= the bound; everything delivered is strictly below the next id.
        let (ms, seq) = last_id
            .split_once('-')
            .and_then(|(m, s)| Some((m.parse::<u64>().ok()?, s.parse::<u64>().ok()?)))
            .ok_or_else(|| QueueError::Malformed(format!("stream id {last_id}")))?;
        let bound = format!("{ms}-{}", seq + 1);
        let _: i64 = self
            .query(redis::cmd("XTRIM").arg(key).arg("MINID").arg(bound))
            .await?;
        Ok(())
    }

    /// Queue and worker state of one pool.
    pub async fn pool_stats(&self, pool: &str, now_ms: u64) -> Result<PoolStats, QueueError> {
        let keys = self.keys();
        let mut inv = POOL_STATS.prepare_invoke();
        inv.key(keys.jobs(pool))
            .key(keys.workers(pool))
            .key(keys.worker_status(pool))
            .key(keys.queued_bytes(pool))
            .key(keys.waiting(pool))
            .arg(GROUP)
            .arg(now_ms)
            .arg(keys.pool_prefix(pool));
        let v: Value = self.script(&inv).await?;
        let mut parts = resp::array(v)?.into_iter();
        let len = parts
            .next()
            .as_ref()
            .and_then(resp::int)
            .unwrap_or(0)
            .max(0) as u64;
        let pending = parts
            .next()
            .as_ref()
            .and_then(resp::int)
            .unwrap_or(0)
            .max(0) as u64;
        let workers = match parts.next() {
            Some(v) => resp::array(v)?
                .into_iter()
                .filter_map(resp::bytes)
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect(),
            None => Vec::new(),
        };
        let queued_bytes = parts
            .next()
            .as_ref()
            .and_then(resp::int)
            .unwrap_or(0)
            .max(0) as u64;
        let mut tiers = [TierStats::default(); 3];
        if let Some(v) = parts.next() {
            for (stats, t) in tiers.iter_mut().zip(resp::array(v)?) {
                let mut t = resp::array(t)?.into_iter();
                stats.waiting = t.next().as_ref().and_then(resp::int).unwrap_or(0).max(0) as u64;
                // A lane's score is the entry id's milliseconds × 1000 plus its sequence (LANES).
                stats.oldest_waiting_ms = t
                    .next()
                    .as_ref()
                    .and_then(resp::int)
                    .map(|score| score.max(0) as u64 / 1000);
            }
        }
        let mut tenants = Vec::new();
        if let Some(v) = parts.next() {
            let mut flat = resp::array(v)?.into_iter();
            while let (Some(name), Some(n)) = (flat.next(), flat.next()) {
                let name = resp::string(name).unwrap_or_default();
                let n = resp::string(n)
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(0);
                tenants.push((name, n.max(0) as u64));
            }
        }
        Ok(PoolStats {
            backlog: len.saturating_sub(pending),
            pending,
            oldest_waiting_ms: tiers.iter().filter_map(|t| t.oldest_waiting_ms).min(),
            tiers,
            tenants,
            workers,
            queued_bytes,
        })
    }
}

/// The wake-up list a job of `tier` leaves a token on.
pub(crate) fn wake_for(tier: Tier) -> &'static str {
    match tier {
        Tier::Priority => "priority",
        Tier::Default | Tier::Flex | Tier::Shadow => "any",
    }
}

/// Reads one gateway's reply stream in order; resumes from the last id after a reconnect.
pub struct ReplyReader {
    key: String,
    last_id: String,
}

impl ReplyReader {
    /// A reader of `key` starting after `last_id` (`$`-like start: pass the id returned when the
    /// stream was created, or `0-0` to read everything).
    pub fn new(key: String, last_id: String) -> Self {
        Self { key, last_id }
    }

    /// The stream key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the last entry handed out.
    pub fn last_id(&self) -> &str {
        &self.last_id
    }

    /// Blocks up to `block` for new entries; decodes them into replies (malformed entries are
    /// returned as errors alongside, never dropped silently).
    pub async fn read(
        &mut self,
        conn: &mut crate::client::Dedicated,
        block: Duration,
        count: usize,
    ) -> Result<Vec<Result<Reply, String>>, QueueError> {
        let v: Value = conn
            .blocking(
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&self.key)
                    .arg(&self.last_id),
                block,
            )
            .await?;
        let entries = resp::read_reply(v)?;
        let mut out = Vec::with_capacity(entries.len());
        for mut e in entries {
            self.last_id = std::mem::take(&mut e.id);
            out.push(decode_reply(e));
        }
        Ok(out)
    }
}

fn decode_reply(mut e: Entry) -> Result<Reply, String> {
    Reply::from_fields(|k| e.take(k)).map_err(|err| err.to_string())
}
