//! Gateway side of the queue.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};
use ssw_protocol::heartbeat::WorkerStatus;
use ssw_protocol::job::Job;
use ssw_protocol::keys::{GROUP, JobState};
use ssw_protocol::reply::Reply;

use crate::resp::{self, Entry};
use crate::{QueueError, Redis};

/// Admission and enqueue in one step: refuse when the backlog (entries not yet delivered to any
/// worker = stream length − pending) has reached `max_queue`, else `XADD`.
static ENQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and p.err == nil then pending = p[1] end
local backlog = len - pending
if backlog < 0 then backlog = 0 end
if backlog >= tonumber(ARGV[2]) then return {0, backlog} end
return {1, redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))}
",
    )
});

/// Client gone: mark the job cancelled (a running worker sees it on its next poll and drops
/// the engine request); if nobody had claimed it, remove it from the stream too. Returns the
/// previous state.
static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'cancelled', 'PX', ARGV[2])
if (not cur) and ARGV[1] ~= '' then redis.call('XDEL', KEYS[2], ARGV[1]) end
return cur
",
    )
});

/// Deadline reached: if no worker has started the job, cancel and remove it (nil reply);
/// otherwise return the state and leave it running.
static EXPIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == 'cancelled' then
  redis.call('SET', KEYS[1], 'cancelled', 'PX', ARGV[2])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return false
end
return cur
",
    )
});

/// Creates the reply stream if missing (empty, through a consumer group) and renews its TTL.
/// Returns 1 if it already existed.
static KEEP_REPLIES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local existed = redis.call('EXISTS', KEYS[1])
if existed == 0 then redis.call('XGROUP', 'CREATE', KEYS[1], 'gateway', '$', 'MKSTREAM') end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return existed
",
    )
});

/// Backlog, pending count, oldest waiting job and live workers' statuses of one pool.
static POOL_STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local len = redis.call('XLEN', KEYS[1])
local pending = 0
local oldest = false
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(p) == 'table' and p.err == nil then pending = p[1] end
local g = redis.pcall('XINFO', 'GROUPS', KEYS[1])
local last = '0-0'
if type(g) == 'table' and g.err == nil then
  for _, grp in ipairs(g) do
    for i = 1, #grp, 2 do
      if grp[i] == 'name' and grp[i + 1] ~= ARGV[1] then break end
      if grp[i] == 'last-delivered-id' then last = grp[i + 1] end
    end
  end
end
local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)
if #first > 0 then oldest = first[1][1] end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[2], '+inf')
local statuses = {}
if #live > 0 then statuses = redis.call('HMGET', KEYS[3], unpack(live)) end
return {len, pending, oldest, statuses}
",
    )
});

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
}

/// What a deadline check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nobody started it; it is cancelled and gone from the stream.
    Expired,
    /// A worker started it in time; it keeps running.
    Running(JobState),
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
    /// Statuses of workers whose heartbeat has not expired.
    pub workers: Vec<WorkerStatus>,
}

impl PoolStats {
    /// Live workers that can take jobs (engine up, not draining).
    pub fn serving(&self) -> usize {
        self.workers.iter().filter(|w| w.serving()).count()
    }
}

fn entry_ms(id: &str) -> Option<u64> {
    id.split_once('-').and_then(|(ms, _)| ms.parse().ok())
}

impl Redis {
    /// Admits and enqueues a job on `pool`'s stream.
    pub async fn enqueue(
        &self,
        pool: &str,
        job: &Job,
        max_queue: u64,
    ) -> Result<Enqueued, QueueError> {
        let mut inv = ENQUEUE.prepare_invoke();
        inv.key(self.keys().jobs(pool)).arg(GROUP).arg(max_queue);
        for (k, v) in job.to_fields() {
            inv.arg(k).arg(&*v);
        }
        let v: Value = self.script(&inv).await?;
        let mut parts = resp::array(v)?.into_iter();
        let flag = parts.next().as_ref().and_then(resp::int);
        let val = parts.next();
        match (flag, val) {
            (Some(1), Some(id)) => Ok(Enqueued::Accepted(
                resp::string(id).ok_or_else(|| QueueError::Malformed("XADD id".into()))?,
            )),
            (Some(0), Some(n)) => Ok(Enqueued::Full {
                backlog: resp::int(&n).unwrap_or_default().max(0) as u64,
            }),
            other => Err(QueueError::Malformed(format!("enqueue reply {other:?}"))),
        }
    }

    /// Cancels a job whose client went away. `ttl` bounds how long the marker lives (longer
    /// than the job could still be claimed or run). An empty `entry_id` (an enqueue whose
    /// outcome is unknown) only sets the marker: a worker that claims the entry skips it.
    pub async fn cancel(
        &self,
        pool: &str,
        job: &str,
        entry_id: &str,
        ttl: Duration,
    ) -> Result<Option<JobState>, QueueError> {
        let mut inv = CANCEL.prepare_invoke();
        inv.key(self.keys().job_state(pool, job))
            .key(self.keys().jobs(pool))
            .arg(entry_id)
            .arg(ttl.as_millis() as u64);
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
    ) -> Result<Expiry, QueueError> {
        let mut inv = EXPIRE.prepare_invoke();
        inv.key(self.keys().job_state(pool, job))
            .key(self.keys().jobs(pool))
            .arg(entry_id)
            .arg(ttl.as_millis() as u64);
        let cur: Option<String> = self.script(&inv).await?;
        Ok(match cur.as_deref().and_then(JobState::parse) {
            None | Some(JobState::Cancelled) => Expiry::Expired,
            Some(state) => Expiry::Running(state),
        })
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
            .arg(GROUP)
            .arg(now_ms);
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
        let oldest_waiting_ms = parts
            .next()
            .and_then(resp::string)
            .and_then(|id| entry_ms(&id));
        let workers = match parts.next() {
            Some(v) => resp::array(v)?
                .into_iter()
                .filter_map(resp::bytes)
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect(),
            None => Vec::new(),
        };
        Ok(PoolStats {
            backlog: len.saturating_sub(pending),
            pending,
            oldest_waiting_ms,
            workers,
        })
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
