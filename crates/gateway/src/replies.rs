//! The reply demultiplexer: one reader per gateway instance.
//!
//! Workers append events to this gateway's reply stream; one task reads it in order
//! (`XREAD BLOCK`) on a dedicated connection and hands each event to the request it belongs to.
//! After a dropped connection it reconnects with backoff and resumes after the last id it read,
//! so nothing is skipped. If the stream itself has vanished (Redis restarted without its data),
//! every request in flight is told at once instead of waiting for a timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssw_protocol::error::ErrorCode;
use ssw_protocol::error::ErrorEnvelope;
use ssw_protocol::reply::{Reply, ReplyEvent};
use ssw_queue::Redis;
use ssw_queue::producer::ReplyReader;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where events of one request go.
pub type EventRx = mpsc::UnboundedReceiver<ReplyEvent>;

/// The table of requests in flight on this gateway.
#[derive(Debug)]
pub struct Replies {
    key: String,
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<ReplyEvent>>>,
    open: AtomicBool,
}

impl Replies {
    /// A table for the reply stream `key`.
    pub fn new(key: String) -> Self {
        Self {
            key,
            routes: Mutex::new(HashMap::new()),
            open: AtomicBool::new(false),
        }
    }

    /// Whether the reply stream has been created: workers append with `NOMKSTREAM` (a gateway
    /// that is gone must not get its stream back), so a job enqueued before it exists would
    /// have its answer dropped. No request is admitted until then.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn set_open(&self) {
        self.open.store(true, Ordering::Release);
    }

    /// The reply stream key, written into every job.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Starts routing events of `job` to the returned receiver.
    pub fn register(&self, job: &str) -> EventRx {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(job.to_owned(), tx);
        rx
    }

    /// Stops routing events of `job`.
    pub fn unregister(&self, job: &str) {
        self.lock().remove(job);
    }

    /// Requests in flight.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<ReplyEvent>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dispatch(&self, reply: Reply) {
        let routes = self.lock();
        if let Some(tx) = routes.get(&reply.job) {
            let _ = tx.send(reply.event);
        }
    }

    /// Fails every request in flight with `code` (their replies can no longer arrive).
    pub fn fail_all(&self, code: ErrorCode, message: &str) {
        let body = ErrorEnvelope::new(code, message).to_json();
        for tx in self.lock().values() {
            let _ = tx.send(ReplyEvent::Fail {
                status: code.status(),
                worker: String::new(),
                body: body.clone(),
            });
        }
    }
}

/// How long the reply stream outlives this gateway (renewed every third of it).
pub const REPLY_TTL: Duration = Duration::from_secs(60);
const BLOCK: Duration = Duration::from_secs(1);
const BATCH: usize = 1024;
const TRIM_EVERY: Duration = Duration::from_millis(200);

/// Runs the reader until `shutdown`.
pub async fn run_reader(redis: Redis, replies: Arc<Replies>, shutdown: CancellationToken) {
    let mut reader = ReplyReader::new(replies.key().to_owned(), "0-0".to_owned());
    let mut backoff = Duration::from_millis(50);
    let mut connected_once = false;
    let mut last_trim = tokio::time::Instant::now();
    let mut untrimmed = false;
    while !shutdown.is_cancelled() {
        let conn = async {
            let existed = redis.keep_replies(reader.key(), REPLY_TTL).await?;
            Ok::<_, ssw_queue::QueueError>((redis.dedicated().await?, existed))
        };
        let (mut conn, existed) = match conn.await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "reply reader cannot reach redis; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if connected_once && !existed {
            tracing::error!(
                "reply stream vanished (redis lost its data); failing requests in flight"
            );
            replies.fail_all(
                ErrorCode::QueueUnavailable,
                "the queue lost this request; retry it",
            );
            reader = ReplyReader::new(replies.key().to_owned(), "0-0".to_owned());
        }
        if !connected_once {
            tracing::info!("reply stream ready");
            replies.set_open();
        }
        connected_once = true;
        backoff = Duration::from_millis(50);
        loop {
            let batch = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = reader.read(&mut conn, BLOCK, BATCH) => r,
            };
            match batch {
                Ok(events) => {
                    untrimmed |= !events.is_empty();
                    for ev in events {
                        match ev {
                            Ok(reply) => replies.dispatch(reply),
                            Err(e) => tracing::error!(error = %e, "malformed reply entry skipped"),
                        }
                    }
                    // Let the requests just woken answer their clients before the next read
                    // is sent.
                    tokio::task::yield_now().await;
                    if untrimmed && last_trim.elapsed() >= TRIM_EVERY {
                        if let Err(e) = redis.trim_replies(reader.key(), reader.last_id()).await {
                            tracing::warn!(error = %e, "trimming the reply stream failed");
                        }
                        untrimmed = false;
                        last_trim = tokio::time::Instant::now();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reply stream read failed; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Renews the reply stream's TTL and notices if it vanished between renewals.
pub async fn run_keeper(redis: Redis, replies: Arc<Replies>, shutdown: CancellationToken) {
    // The reader creates the stream at start-up; the first renewal is one period later.
    let period = REPLY_TTL / 3;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match redis.keep_replies(replies.key(), REPLY_TTL).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!("reply stream had vanished; failing requests in flight");
                replies.fail_all(
                    ErrorCode::QueueUnavailable,
                    "the queue lost this request; retry it",
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the reply stream"),
        }
    }
}
