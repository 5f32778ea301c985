//! Worker side of the queue.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, Value};
use ssw_protocol::heartbeat::WorkerStatus;
use ssw_protocol::job::Job;
use ssw_protocol::keys::GROUP;
use ssw_protocol::reply::Reply;

use crate::client::Dedicated;
use crate::resp;
use crate::{QueueError, Redis};

/// Decides, atomically per job, whether this worker may run it: not cancelled, not past its
/// deadline, and not already answering a client through a worker that died. Marks the ones it
/// may run as started by this worker.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local res = {}
local me = 'started:' .. ARGV[1]
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if not cur then
    if tonumber(ARGV[3]) > tonumber(ARGV[3 + i]) then
      redis.call('SET', key, 'cancelled', 'PX', ARGV[2])
      res[i] = 'expired'
    else
      redis.call('SET', key, me, 'PX', ARGV[2])
      res[i] = 'run'
    end
  elseif cur == 'cancelled' then
    res[i] = 'cancelled'
  elseif string.sub(cur, 1, 7) == 'output:' then
    res[i] = 'orphaned'
  else
    redis.call('SET', key, me, 'PX', ARGV[2])
    res[i] = 'run'
  end
end
return res
",
    )
});

/// Puts a job back for another worker (engine refused it before any output), unless the client
/// cancelled meanwhile. Returns the new entry id, or nil when cancelled.
static REQUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if cur == 'cancelled' then return false end
redis.call('DEL', KEYS[2])
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
",
    )
});

/// Marks that a response is committed to the client: from now on the job must never run again.
/// Returns the state it replaced (`cancelled` means the client is gone).
const MARK_OUTPUT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == 'started:' .. ARGV[1] then redis.call('SET', KEYS[1], 'output:' .. ARGV[1], 'PX', ARGV[2]) end
return cur
";

/// Refreshes this worker's heartbeat and drops workers silent for over an hour.
static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if #stale > 0 then
  redis.call('ZREM', KEYS[1], unpack(stale))
  redis.call('HDEL', KEYS[2], unpack(stale))
end
return #stale
",
    )
});

/// What the claim script decided for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Run it.
    Run,
    /// The client is gone; acknowledge and drop.
    Cancelled,
    /// Its deadline passed before anyone started it; the gateway answers `queue_timeout`.
    Expired,
    /// A worker that died had already committed a response; tell the client it failed.
    Orphaned,
}

/// A job as pulled from the stream.
#[derive(Debug)]
pub struct Pulled {
    /// Stream entry id.
    pub entry_id: String,
    /// The decoded job, or why it could not be decoded.
    pub job: Result<Job, String>,
}

fn pulled(entries: Vec<resp::Entry>) -> Vec<Pulled> {
    entries
        .into_iter()
        .map(|mut e| {
            let job = Job::from_fields(|k| e.take(k)).map_err(|err| err.to_string());
            Pulled {
                entry_id: e.id,
                job,
            }
        })
        .collect()
}

impl Redis {
    /// Creates the pool's consumer group (and stream) if missing.
    pub async fn ensure_group(&self, pool: &str) -> Result<(), QueueError> {
        let r: Result<(), QueueError> = self
            .query(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.keys().jobs(pool))
                    .arg(GROUP)
                    .arg("0")
                    .arg("MKSTREAM"),
            )
            .await;
        match r {
            Err(QueueError::Redis(m)) if m.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Pulls up to `count` new jobs, blocking up to `block` when there are none.
    pub async fn pull(
        &self,
        conn: &mut Dedicated,
        pool: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Pulled>, QueueError> {
        let v: Value = conn
            .blocking(
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(count)
                    .arg("BLOCK")
                    .arg(block.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(self.keys().jobs(pool))
                    .arg(">"),
                block,
            )
            .await?;
        Ok(pulled(resp::read_reply(v)?))
    }

    /// Takes over up to `count` jobs that another consumer claimed and has not touched for
    /// `min_idle` (it died).
    pub async fn reclaim(
        &self,
        pool: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Pulled>, QueueError> {
        let v: Value = self
            .query(
                redis::cmd("XAUTOCLAIM")
                    .arg(self.keys().jobs(pool))
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(min_idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        let mut parts = resp::array(v)?.into_iter();
        let _cursor = parts.next();
        let claimed = parts
            .next()
            .map(resp::entries)
            .transpose()?
            .unwrap_or_default();
        Ok(pulled(claimed))
    }

    /// Resets the idle time of jobs this worker is running, so nobody reclaims them.
    pub async fn touch(
        &self,
        pool: &str,
        consumer: &str,
        entry_ids: &[String],
    ) -> Result<(), QueueError> {
        if entry_ids.is_empty() {
            return Ok(());
        }
        let _: Value = self
            .query(
                redis::cmd("XCLAIM")
                    .arg(self.keys().jobs(pool))
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(0)
                    .arg(entry_ids)
                    .arg("JUSTID"),
            )
            .await?;
        Ok(())
    }

    /// Runs the claim decision for a batch of jobs (`(job id, deadline ms)`).
    pub async fn claim(
        &self,
        pool: &str,
        worker: &str,
        jobs: &[(&str, u64)],
        now_ms: u64,
        state_ttl: Duration,
    ) -> Result<Vec<Claim>, QueueError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = CLAIM.prepare_invoke();
        for (id, _) in jobs {
            inv.key(self.keys().job_state(pool, id));
        }
        inv.arg(worker)
            .arg(state_ttl.as_millis() as u64)
            .arg(now_ms);
        for (_, deadline) in jobs {
            inv.arg(*deadline);
        }
        let v: Vec<String> = self.script(&inv).await?;
        v.into_iter()
            .map(|s| match s.as_str() {
                "run" => Ok(Claim::Run),
                "cancelled" => Ok(Claim::Cancelled),
                "expired" => Ok(Claim::Expired),
                "orphaned" => Ok(Claim::Orphaned),
                other => Err(QueueError::Malformed(format!("claim result {other}"))),
            })
            .collect()
    }

    /// Sends one reply event; `Ok(false)` when the owning gateway's stream is gone.
    pub async fn send_reply(&self, reply_to: &str, reply: &Reply) -> Result<bool, QueueError> {
        let id: Option<String> = self.query(&xadd_reply(reply_to, reply)).await?;
        Ok(id.is_some())
    }

    /// Commits a response (marks the job as answered: it must never run again) and sends its
    /// head, in one round trip. Returns `Ok(false)` when the client is gone (cancelled, or
    /// gateway stream gone).
    pub async fn commit_reply(
        &self,
        pool: &str,
        worker: &str,
        reply_to: &str,
        head: &Reply,
        state_ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(MARK_OUTPUT)
            .arg(1)
            .arg(self.keys().job_state(pool, &head.job))
            .arg(worker)
            .arg(state_ttl.as_millis() as u64)
            .add_command(xadd_reply(reply_to, head));
        let (prev, id): (Option<String>, Option<String>) = self.pipe(&pipe).await?;
        Ok(id.is_some() && prev.as_deref() != Some("cancelled"))
    }

    /// Sends the job's last event and removes the job (ack, delete entry and state) in one
    /// round trip. `Ok(false)` when the gateway's stream is gone.
    pub async fn finish(
        &self,
        pool: &str,
        entry_id: &str,
        reply_to: &str,
        reply: Option<&Reply>,
        job_id: &str,
    ) -> Result<bool, QueueError> {
        let jobs = self.keys().jobs(pool);
        let mut pipe = redis::pipe();
        if let Some(r) = reply {
            pipe.add_command(xadd_reply(reply_to, r));
        }
        pipe.cmd("XACK")
            .arg(&jobs)
            .arg(GROUP)
            .arg(entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(&jobs)
            .arg(entry_id)
            .ignore()
            .cmd("DEL")
            .arg(self.keys().job_state(pool, job_id))
            .ignore();
        if reply.is_some() {
            let (id,): (Option<String>,) = self.pipe(&pipe).await?;
            Ok(id.is_some())
        } else {
            let _: () = self.pipe(&pipe).await?;
            Ok(true)
        }
    }

    /// Acknowledges and deletes an entry without touching the job's state (for jobs that are
    /// skipped: cancelled, expired, undecodable).
    pub async fn drop_entry(&self, pool: &str, entry_id: &str) -> Result<(), QueueError> {
        let jobs = self.keys().jobs(pool);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK")
            .arg(&jobs)
            .arg(GROUP)
            .arg(entry_id)
            .ignore()
            .cmd("XDEL")
            .arg(&jobs)
            .arg(entry_id)
            .ignore();
        self.pipe(&pipe).await
    }

    /// Puts a job back with its attempt count raised; `None` if the client cancelled meanwhile.
    pub async fn requeue(
        &self,
        pool: &str,
        entry_id: &str,
        job: &Job,
    ) -> Result<Option<String>, QueueError> {
        let mut inv = REQUEUE.prepare_invoke();
        inv.key(self.keys().jobs(pool))
            .key(self.keys().job_state(pool, &job.id))
            .arg(GROUP)
            .arg(entry_id);
        for (k, v) in job.to_fields() {
            inv.arg(k).arg(&*v);
        }
        self.script(&inv).await
    }

    /// Which of these jobs the client cancelled.
    pub async fn cancelled(&self, pool: &str, job_ids: &[&str]) -> Result<Vec<bool>, QueueError> {
        if job_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = job_ids
            .iter()
            .map(|j| self.keys().job_state(pool, j))
            .collect();
        let states: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        Ok(states
            .into_iter()
            .map(|s| s.as_deref() == Some("cancelled"))
            .collect())
    }

    /// Publishes a heartbeat valid until `now + ttl`.
    pub async fn heartbeat(
        &self,
        status: &WorkerStatus,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<(), QueueError> {
        let json =
            serde_json::to_string(status).map_err(|e| QueueError::Malformed(e.to_string()))?;
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.key(self.keys().workers(&status.pool))
            .key(self.keys().worker_status(&status.pool))
            .arg(&status.worker)
            .arg(now_ms + ttl.as_millis() as u64)
            .arg(json)
            .arg(now_ms.saturating_sub(3_600_000));
        let _: i64 = self.script(&inv).await?;
        Ok(())
    }

    /// Removes a worker from the live set (clean exit).
    pub async fn deregister(&self, pool: &str, worker: &str) -> Result<(), QueueError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.keys().workers(pool))
            .arg(worker)
            .ignore()
            .cmd("HDEL")
            .arg(self.keys().worker_status(pool))
            .arg(worker)
            .ignore();
        self.pipe(&pipe).await
    }
}

fn xadd_reply(reply_to: &str, reply: &Reply) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(reply_to).arg("NOMKSTREAM").arg("*");
    for (k, v) in reply.to_fields() {
        cmd.arg(k).arg(v);
    }
    cmd
}
