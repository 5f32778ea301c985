//! Worker side of the queue.
//!
//! A run of a job is fenced: the claim that lets a worker run it gives the run a fence number,
//! and every later step of the run (committing a response, finishing, putting the job back)
//! checks in its script that the run still owns the job. A worker that was only slow, and
//! whose job another worker took over meanwhile, therefore changes nothing; its reply events
//! carry the old fence and the gateway ignores them.

use std::time::Duration;

use redis::{ScriptInvocation, Value};
use ssw_protocol::heartbeat::{Drain, WorkerStatus};
use ssw_protocol::job::Job;
use ssw_protocol::keys::{GROUP, JobState};
use ssw_protocol::reply::Reply;

use crate::client::Dedicated;
use crate::resp;
use crate::scripts::{CLAIM, DROP, FINISH, HEARTBEAT, MARK_OUTPUT, PULL, RECLAIM, REPLY, REQUEUE};
use crate::{QueueError, Redis};

/// What the claim script decided for one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Run it; the run's events carry this fence.
    Run {
        /// The run's fence.
        fence: u32,
    },
    /// The client is gone; acknowledge and drop.
    Cancelled,
    /// Its deadline passed before anyone started it; the gateway answers `queue_timeout`.
    Expired,
    /// A worker that died had already committed a response; tell the client it failed (with
    /// this fence, newer than the dead run's).
    Orphaned {
        /// The fence of the failure event.
        fence: u32,
    },
}

/// What committing a stream's head found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Commit {
    /// The run owns the job; its head is on the gateway's stream.
    Committed,
    /// The client cancelled, or another run owns the job now: stop silently.
    Lost,
    /// The gateway's reply stream is gone (the gateway died).
    GatewayGone,
}

/// What putting a job back found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Back on the stream under this entry id.
    Queued(String),
    /// The client had cancelled; the entry is gone.
    Cancelled,
    /// Another run owns the job; nothing was touched.
    Lost,
}

/// What a running job's state says about its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watch {
    /// The run still owns the job.
    Mine,
    /// The client cancelled.
    Cancelled,
    /// Another run owns the job, or its state is gone (Redis lost it): stop without a word.
    Lost,
}

/// A job as pulled from the stream.
#[derive(Debug)]
pub struct Pulled {
    /// Stream entry id.
    pub entry_id: String,
    /// The decoded job, or why it could not be decoded.
    pub job: Result<Job, String>,
    /// What the entry counts for in the pool's queued bytes (its body).
    pub size: u64,
}

fn pulled(entries: Vec<resp::Entry>) -> Vec<Pulled> {
    entries
        .into_iter()
        .map(|mut e| {
            let size = e.fields.get("body").map_or(0, |b| b.len() as u64);
            let job = Job::from_fields(|k| e.take(k)).map_err(|err| err.to_string());
            Pulled {
                entry_id: e.id,
                job,
                size,
            }
        })
        .collect()
}

/// How a worker may fill its free slots in one pull.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PullPolicy<'a> {
    /// Most jobs to take.
    pub most: usize,
    /// Most of them below the priority tier (the other free slots are kept for priority work).
    pub below_priority: usize,
    /// Minimum share of picks for the default tier while a higher tier has work waiting.
    pub default_share: f64,
    /// The same for the flex tier.
    pub flex_share: f64,
    /// Adapter-aware pulling (a pool with LoRA adapters).
    pub adapters: Adapters<'a>,
}

/// What PULL knows of LoRA adapters for one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Adapters<'a> {
    /// Adapters resident on the worker's engine, comma-separated.
    pub resident: &'a str,
    /// How long a job may wait for its adapter's turn (zero: no affinity, plain round robin).
    pub wait: Duration,
    /// How many more adapters the engine could load now: free slots, and slots whose adapter
    /// has nothing running.
    pub room: u32,
}

impl Adapters<'_> {
    /// A pool without adapters.
    pub const NONE: Adapters<'static> = Adapters {
        resident: "",
        wait: Duration::ZERO,
        room: 0,
    };
}

/// A share as PULL takes it: whole thousandths, so credits add up exactly.
fn thousandths(share: f64) -> u64 {
    (share.clamp(0.0, 1.0) * 1000.0).round() as u64
}

/// Which wake-up tokens a worker waits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// New jobs of any tier, priority jobs, its own wake-ups.
    Any,
    /// Priority jobs and its own wake-ups (only reserved slots free, or its engine has
    /// requests waiting).
    Priority,
    /// Its own wake-ups only (a job of its own ending): its PULL held every job it may take
    /// back for want of adapter room, and new jobs' tokens are for workers that can take them.
    Own,
}

/// What one PULL found.
#[derive(Debug, Default)]
pub struct Batch {
    /// The jobs it handed this worker.
    pub jobs: Vec<Pulled>,
    /// It took nothing because the jobs this worker may take are all for adapters its engine
    /// has no room for: wait for room (one of its adapters' jobs ending), not for new jobs.
    pub held_back: bool,
}

/// Decodes PULL's answer: its entries, or 1 (held back).
fn batch(v: Value) -> Result<Batch, QueueError> {
    if v == Value::Int(1) {
        return Ok(Batch {
            jobs: Vec::new(),
            held_back: true,
        });
    }
    Ok(Batch {
        jobs: pulled(resp::entries(v)?),
        held_back: false,
    })
}

/// One reclaim scan's bounds (RECLAIM).
#[derive(Debug, Clone, Copy)]
pub struct ReclaimScan<'a> {
    /// Scan pending entries after this id (`-`: from the start).
    pub cursor: &'a str,
    /// Most pending entries to look at.
    pub budget: usize,
    /// Most entries to take.
    pub want: usize,
    /// Now, ms: workers whose heartbeat expired before are dead.
    pub now_ms: u64,
    /// An entry pending under this worker for this long, yet not in `held`, is stranded (the
    /// reply of the PULL that handed it out, or of its claim, was lost): taken back.
    pub stranded_after: Duration,
    /// The entries this worker holds (its running jobs).
    pub held: &'a [String],
}

/// Where a reclaim scan stopped, and what it took over.
#[derive(Debug)]
pub struct Reclaimed {
    /// Pass to the next scan (`-` once the scan reached the end of the pending list).
    pub cursor: String,
    /// Jobs taken over from workers whose heartbeat expired, and this worker's stranded ones.
    pub jobs: Vec<Pulled>,
    /// How many of `jobs` were stranded under this worker.
    pub stranded: usize,
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

    /// `after_wait`: the PULL follows a wait for a token.
    fn pull_invocation(
        &self,
        pool: &str,
        consumer: &str,
        policy: PullPolicy<'_>,
        after_wait: bool,
    ) -> ScriptInvocation<'static> {
        let keys = self.keys();
        let mut inv = PULL.prepare_invoke();
        inv.key(keys.jobs(pool))
            .key(keys.waiting(pool))
            .arg(GROUP)
            .arg(consumer)
            .arg(policy.most)
            .arg(policy.below_priority)
            .arg(keys.pool_prefix(pool))
            .arg(thousandths(policy.default_share))
            .arg(thousandths(policy.flex_share))
            .arg(if after_wait { "1" } else { "0" })
            .arg(policy.adapters.resident)
            .arg(policy.adapters.wait.as_millis() as u64)
            .arg(crate::now_ms())
            .arg(policy.adapters.room);
        inv
    }

    /// Takes waiting jobs across the pool's lanes by the scheduler's policy (PULL); returns at
    /// once, with nothing when no job is waiting that `policy` allows.
    pub async fn pull(
        &self,
        pool: &str,
        consumer: &str,
        policy: PullPolicy<'_>,
    ) -> Result<Vec<Pulled>, QueueError> {
        Ok(self.pull_batch(pool, consumer, policy).await?.jobs)
    }

    /// [`Redis::pull`], saying whether jobs were held back for want of adapter room.
    pub async fn pull_batch(
        &self,
        pool: &str,
        consumer: &str,
        policy: PullPolicy<'_>,
    ) -> Result<Batch, QueueError> {
        let v: Value = self
            .script(&self.pull_invocation(pool, consumer, policy, false))
            .await?;
        batch(v)
    }

    fn wake_keys(&self, pool: &str, consumer: &str, wait: Wait) -> Vec<String> {
        let keys = self.keys();
        let own = keys.wake(pool, &format!("worker:{consumer}"));
        match wait {
            Wait::Own => vec![own],
            Wait::Priority => vec![keys.wake(pool, "priority"), own],
            Wait::Any => vec![keys.wake(pool, "priority"), own, keys.wake(pool, "any")],
        }
    }

    /// Waits up to `block` for a wake-up token: one left by a new job of any tier (unless
    /// `priority_only`), of the priority tier, or for this worker by itself
    /// ([`Redis::wake_self`]). Returns whether one came.
    pub async fn wait_for_work(
        &self,
        conn: &mut Dedicated,
        pool: &str,
        consumer: &str,
        priority_only: bool,
        block: Duration,
    ) -> Result<bool, QueueError> {
        let mut cmd = redis::cmd("BLPOP");
        let wait = if priority_only {
            Wait::Priority
        } else {
            Wait::Any
        };
        cmd.arg(self.wake_keys(pool, consumer, wait))
            .arg(block.as_secs_f64());
        let v: Value = conn.blocking(&cmd, block).await?;
        Ok(!matches!(v, Value::Nil))
    }

    /// [`Redis::wait_for_work`] and then [`Redis::pull_batch`] in one pipeline: the PULL runs
    /// in Redis the moment the wait ends, so a job that wakes an idle worker costs no further
    /// round trip. `wait` says on which tokens (with `Wait::Any`, priority tokens only when
    /// `policy` takes priority work only). A PULL that held jobs back gives the token it woke
    /// on back to its list: it stands for a job another worker may take. The PULL's script must
    /// be loaded (the worker's plain pulls load it); a NOSCRIPT error (Redis restarted) is
    /// returned like any error.
    pub async fn wait_then_pull(
        &self,
        conn: &mut Dedicated,
        pool: &str,
        consumer: &str,
        policy: PullPolicy<'_>,
        wait: Wait,
        block: Duration,
    ) -> Result<Batch, QueueError> {
        let wait = match wait {
            Wait::Any if policy.below_priority == 0 => Wait::Priority,
            w => w,
        };
        let mut pipe = redis::pipe();
        pipe.cmd("BLPOP")
            .arg(self.wake_keys(pool, consumer, wait))
            .arg(block.as_secs_f64());
        pipe.invoke_script(&self.pull_invocation(pool, consumer, policy, true));
        let (popped, v): (Option<(String, String)>, Value) =
            conn.blocking_pipe(&pipe, block).await?;
        let got = batch(v)?;
        if got.held_back
            && let Some((key, _)) = popped
            && !key.ends_with(&format!("worker:{consumer}"))
        {
            self.query::<i64>(redis::cmd("RPUSH").arg(&key).arg(1))
                .await?;
        }
        Ok(got)
    }

    /// Wakes this worker's own [`Redis::wait_for_work`] (a slot came free while it waited for
    /// priority work only).
    pub async fn wake_self(&self, pool: &str, consumer: &str) -> Result<(), QueueError> {
        let key = self.keys().wake(pool, &format!("worker:{consumer}"));
        let mut pipe = redis::pipe();
        pipe.cmd("LPUSH")
            .arg(&key)
            .arg(1)
            .ignore()
            .cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(0)
            .ignore();
        self.pipe(&pipe).await
    }

    /// Takes over up to `scan.want` jobs handed to workers whose heartbeat has expired, and
    /// this worker's stranded ones, looking at up to `scan.budget` pending entries after
    /// `scan.cursor` (RECLAIM).
    pub async fn reclaim(
        &self,
        pool: &str,
        consumer: &str,
        scan: ReclaimScan<'_>,
    ) -> Result<Reclaimed, QueueError> {
        let mut inv = RECLAIM.prepare_invoke();
        inv.key(self.keys().jobs(pool))
            .key(self.keys().workers(pool))
            .arg(GROUP)
            .arg(consumer)
            .arg(scan.now_ms)
            .arg(scan.cursor)
            .arg(scan.budget)
            .arg(scan.want)
            .arg(scan.stranded_after.as_millis() as u64);
        for id in scan.held {
            inv.arg(id);
        }
        let v: Value = self.script(&inv).await?;
        let mut parts = resp::array(v)?.into_iter();
        let cursor = parts
            .next()
            .and_then(resp::string)
            .ok_or_else(|| QueueError::Malformed("reclaim cursor".into()))?;
        let jobs = parts
            .next()
            .map(resp::entries)
            .transpose()?
            .unwrap_or_default();
        let stranded = parts.next().as_ref().and_then(resp::int).unwrap_or(0) as usize;
        Ok(Reclaimed {
            cursor,
            jobs: pulled(jobs),
            stranded,
        })
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
        let v: Vec<(String, u32)> = self.script(&inv).await?;
        v.into_iter()
            .map(|(verdict, fence)| match verdict.as_str() {
                "run" => Ok(Claim::Run { fence }),
                "cancelled" => Ok(Claim::Cancelled),
                "expired" => Ok(Claim::Expired),
                "orphaned" => Ok(Claim::Orphaned { fence }),
                other => Err(QueueError::Malformed(format!("claim result {other}"))),
            })
            .collect()
    }

    /// Which of these reply streams exist: a gateway's stream is there while the gateway
    /// lives (it renews the stream's TTL).
    pub async fn streams_exist(&self, keys: &[&str]) -> Result<Vec<bool>, QueueError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("EXISTS").arg(*k);
        }
        let v: Vec<i64> = self.pipe(&pipe).await?;
        Ok(v.into_iter().map(|n| n == 1).collect())
    }

    /// Sends one reply event; `Ok(false)` when the owning gateway's stream is gone.
    pub async fn send_reply(&self, reply_to: &str, reply: &Reply) -> Result<bool, QueueError> {
        let id: Option<String> = self.script(&xadd_reply(reply_to, reply)).await?;
        Ok(id.is_some())
    }

    /// Commits a stream's response (MARK_OUTPUT: the job must never run again) and sends its
    /// head, in one round trip. The head goes out even when the run no longer owns the job:
    /// it carries the run's old fence, which the gateway ignores.
    pub async fn commit_reply(
        &self,
        pool: &str,
        worker: &str,
        fence: u32,
        reply_to: &str,
        head: &Reply,
        state_ttl: Duration,
    ) -> Result<Commit, QueueError> {
        let mut inv = MARK_OUTPUT.prepare_invoke();
        inv.key(self.keys().job_state(pool, &head.job))
            .arg(worker)
            .arg(fence)
            .arg(state_ttl.as_millis() as u64);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&inv)
            .invoke_script(&xadd_reply(reply_to, head));
        let (marked, id): (Value, Option<String>) =
            self.pipe_scripts(&pipe, &[&MARK_OUTPUT, &REPLY]).await?;
        Ok(if id.is_none() {
            Commit::GatewayGone
        } else if resp::int(&marked) == Some(1) {
            Commit::Committed
        } else {
            Commit::Lost
        })
    }

    /// Sends the job's last event (if any) and removes the job if this run still owns it
    /// (FINISH), in one round trip. `Ok(false)` when the gateway's stream is gone.
    #[allow(clippy::too_many_arguments)] // one script's contract
    pub async fn finish(
        &self,
        pool: &str,
        entry_id: &str,
        reply_to: &str,
        reply: Option<&Reply>,
        job_id: &str,
        run: (&str, u32),
        size: u64,
    ) -> Result<bool, QueueError> {
        let (worker, fence) = run;
        let mut inv = FINISH.prepare_invoke();
        inv.key(self.keys().jobs(pool))
            .key(self.keys().job_state(pool, job_id))
            .key(self.keys().queued_bytes(pool))
            .arg(GROUP)
            .arg(entry_id)
            .arg(worker)
            .arg(fence)
            .arg(size);
        let mut pipe = redis::pipe();
        if let Some(r) = reply {
            pipe.invoke_script(&xadd_reply(reply_to, r));
        }
        pipe.invoke_script(&inv).ignore();
        if reply.is_some() {
            let (id,): (Option<String>,) = self.pipe_scripts(&pipe, &[&FINISH, &REPLY]).await?;
            Ok(id.is_some())
        } else {
            let _: () = self.pipe_scripts(&pipe, &[&FINISH]).await?;
            Ok(true)
        }
    }

    /// Acknowledges and deletes an entry nobody will run (cancelled, expired, undecodable),
    /// leaving the job's state alone.
    pub async fn drop_entry(
        &self,
        pool: &str,
        entry_id: &str,
        size: u64,
    ) -> Result<(), QueueError> {
        let mut inv = DROP.prepare_invoke();
        inv.key(self.keys().jobs(pool))
            .key(self.keys().queued_bytes(pool))
            .arg(GROUP)
            .arg(entry_id)
            .arg(size);
        let _: i64 = self.script(&inv).await?;
        Ok(())
    }

    /// Puts a job back (as a new entry) for another worker, if this run still owns it and its
    /// client has not cancelled.
    pub async fn requeue(
        &self,
        pool: &str,
        entry_id: &str,
        job: &Job,
        run: (&str, u32),
        state_ttl: Duration,
    ) -> Result<Requeue, QueueError> {
        let (worker, fence) = run;
        let keys = self.keys();
        let mut inv = REQUEUE.prepare_invoke();
        inv.key(keys.jobs(pool))
            .key(keys.job_state(pool, &job.id))
            .key(keys.queued_bytes(pool))
            .key(keys.lane(pool, job.tier, &job.lane_owner()))
            .key(keys.ring(pool, job.tier))
            .key(keys.ring_set(pool, job.tier))
            .key(keys.waiting(pool))
            .key(keys.wake(pool, crate::producer::wake_for(job.tier)))
            .arg(GROUP)
            .arg(entry_id)
            .arg(worker)
            .arg(fence)
            .arg(job.size())
            .arg(state_ttl.as_millis() as u64)
            .arg(job.tier.as_str())
            .arg(&*job.lane_owner());
        for (k, v) in job.to_fields() {
            inv.arg(k).arg(&*v);
        }
        let v: Value = self.script(&inv).await?;
        let mut parts = resp::array(v)?.into_iter();
        let flag = parts.next().as_ref().and_then(resp::int);
        let what = parts.next().and_then(resp::string);
        match (flag, what.as_deref()) {
            (Some(1), Some(id)) => Ok(Requeue::Queued(id.to_owned())),
            (Some(0), Some("cancelled")) => Ok(Requeue::Cancelled),
            (Some(0), Some("lost")) => Ok(Requeue::Lost),
            other => Err(QueueError::Malformed(format!("requeue reply {other:?}"))),
        }
    }

    /// What the states of these running jobs (`(job id, fence)` of this worker's runs) say.
    pub async fn watch(
        &self,
        pool: &str,
        worker: &str,
        runs: &[(&str, u32)],
    ) -> Result<Vec<Watch>, QueueError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = runs
            .iter()
            .map(|(j, _)| self.keys().job_state(pool, j))
            .collect();
        let states: Vec<Option<String>> = self.query(redis::cmd("MGET").arg(keys)).await?;
        Ok(states
            .into_iter()
            .zip(runs)
            .map(
                |(s, (_, fence))| match s.as_deref().and_then(JobState::parse) {
                    Some(JobState::Cancelled) => Watch::Cancelled,
                    Some(state) if state.owned_by(worker, *fence) => Watch::Mine,
                    _ => Watch::Lost,
                },
            )
            .collect())
    }

    /// Publishes a heartbeat valid until `now + ttl`; returns the operator's drain of this
    /// worker, if there is one (HEARTBEAT).
    pub async fn heartbeat(
        &self,
        status: &WorkerStatus,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<Option<Drain>, QueueError> {
        let json =
            serde_json::to_string(status).map_err(|e| QueueError::Malformed(e.to_string()))?;
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.key(self.keys().workers(&status.pool))
            .key(self.keys().worker_status(&status.pool))
            .key(self.keys().drain(&status.pool))
            .arg(&status.worker)
            .arg(now_ms + ttl.as_millis() as u64)
            .arg(json)
            .arg(now_ms.saturating_sub(3_600_000));
        let v: Value = self.script(&inv).await?;
        let drain = resp::array(v)?.into_iter().nth(1).and_then(resp::bytes);
        Ok(drain.map(|b| decode_drain(&String::from_utf8_lossy(&b))))
    }

    /// Drains `worker` of `pool` (it stops pulling at its next heartbeat, finishes what it
    /// runs, and stays drained across restarts). Returns the drain already in force, if it was
    /// drained before (the first drain is kept), or `None` if this one is.
    pub async fn drain(
        &self,
        pool: &str,
        worker: &str,
        drain: &Drain,
    ) -> Result<Option<Drain>, QueueError> {
        let json =
            serde_json::to_string(drain).map_err(|e| QueueError::Malformed(e.to_string()))?;
        let key = self.keys().drain(pool);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HSETNX")
            .arg(&key)
            .arg(worker)
            .arg(json)
            .cmd("HGET")
            .arg(&key)
            .arg(worker);
        let (set, stored): (bool, Option<String>) = self.pipe(&pipe).await?;
        Ok(match (set, stored) {
            (true, _) | (false, None) => None,
            (false, Some(j)) => Some(decode_drain(&j)),
        })
    }

    /// Ends an operator's drain of `worker`; returns false if it was not drained.
    pub async fn resume(&self, pool: &str, worker: &str) -> Result<bool, QueueError> {
        let n: i64 = self
            .query(redis::cmd("HDEL").arg(self.keys().drain(pool)).arg(worker))
            .await?;
        Ok(n > 0)
    }

    /// The pool's drained workers (live or not), by worker id.
    pub async fn drains(&self, pool: &str) -> Result<Vec<(String, Drain)>, QueueError> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(self.keys().drain(pool)))
            .await?;
        let mut out: Vec<(String, Drain)> = all
            .into_iter()
            .map(|(w, j)| (w, decode_drain(&j)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The statuses the pool's workers last published (live or not: see `heartbeat_ms`).
    pub async fn worker_statuses(&self, pool: &str) -> Result<Vec<WorkerStatus>, QueueError> {
        let all: Vec<String> = self
            .query(redis::cmd("HVALS").arg(self.keys().worker_status(pool)))
            .await?;
        let mut out: Vec<WorkerStatus> = all
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect();
        out.sort_by(|a, b| a.worker.cmp(&b.worker));
        Ok(out)
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

/// A drain entry; one that does not decode still drains (an operator wrote something).
fn decode_drain(json: &str) -> Drain {
    serde_json::from_str(json).unwrap_or_else(|_| Drain {
        by: "?".into(),
        reason: json.to_owned(),
        at_ms: 0,
    })
}

/// The REPLY script's call for one event.
fn xadd_reply<'a>(reply_to: &str, reply: &Reply) -> redis::ScriptInvocation<'a> {
    let mut inv = REPLY.prepare_invoke();
    inv.key(reply_to);
    for (k, v) in reply.to_fields() {
        inv.arg(k).arg(v);
    }
    inv
}
