//! The reply demultiplexer: one reader per gateway instance.
//!
//! Workers append events to this gateway's reply stream; one task reads it in order
//! (`XREAD BLOCK`) on a dedicated connection and hands each event to the request it belongs to.
//! After a dropped connection it reconnects with backoff and resumes after the last id it read,
//! so nothing is skipped. If the stream itself has vanished (Redis restarted without its data),
//! every request in flight is told at once instead of waiting for a timeout.
//!
//! What waits for a request is bounded: the streamed bytes held for one request (its client
//! reading more slowly than its engine writes) may not exceed `gateway.reply_buffer`; past it
//! the request is told it overflowed and stops being routed, so its stream ends with
//! `client_too_slow` and its job is cancelled. One reader never waits for a slow request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssw_protocol::error::{ErrorCode, ErrorEnvelope};
use ssw_protocol::reply::{Reply, ReplyEvent};
use ssw_queue::Redis;
use ssw_queue::producer::ReplyReader;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What reaches a request.
#[derive(Debug)]
pub enum Delivery {
    /// An event of its job.
    Event(ReplyEvent),
    /// More streamed bytes were waiting for it than `gateway.reply_buffer`: nothing more
    /// will come.
    Overflow,
}

/// Where events of one request go.
#[derive(Debug)]
pub struct EventRx {
    rx: mpsc::UnboundedReceiver<Delivery>,
    held: Arc<AtomicUsize>,
}

impl EventRx {
    /// The next delivery; `None` when the table dropped the route (the reply stream is gone).
    pub async fn recv(&mut self) -> Option<Delivery> {
        let d = self.rx.recv().await?;
        if let Delivery::Event(ReplyEvent::Data(data)) = &d {
            self.held.fetch_sub(data.len(), Ordering::Relaxed);
        }
        Some(d)
    }
}

#[derive(Debug)]
struct Route {
    tx: mpsc::UnboundedSender<Delivery>,
    /// Streamed bytes sent and not yet taken.
    held: Arc<AtomicUsize>,
}

/// The table of requests in flight on this gateway.
#[derive(Debug)]
pub struct Replies {
    key: String,
    routes: Mutex<HashMap<String, Route>>,
    open: AtomicBool,
    /// Most streamed bytes held for one request.
    budget: usize,
}

impl Replies {
    /// A table for the reply stream `key`, holding at most `budget` streamed bytes per
    /// request.
    pub fn new(key: String, budget: usize) -> Self {
        Self {
            key,
            routes: Mutex::new(HashMap::new()),
            open: AtomicBool::new(false),
            budget,
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
        let held = Arc::new(AtomicUsize::new(0));
        self.lock().insert(
            job.to_owned(),
            Route {
                tx,
                held: held.clone(),
            },
        );
        EventRx { rx, held }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an event to its request; a request whose held stream would exceed the budget is
    /// told so instead and no longer routed.
    pub fn dispatch(&self, reply: Reply) {
        let mut routes = self.lock();
        let Some(route) = routes.get(&reply.job) else {
            return;
        };
        if let ReplyEvent::Data(data) = &reply.event {
            let held = route.held.fetch_add(data.len(), Ordering::Relaxed) + data.len();
            if held > self.budget {
                let _ = route.tx.send(Delivery::Overflow);
                routes.remove(&reply.job);
                return;
            }
        }
        let _ = route.tx.send(Delivery::Event(reply.event));
    }

    /// Fails every request in flight with `code` (their replies can no longer arrive).
    pub fn fail_all(&self, code: ErrorCode, message: &str) {
        let body = ErrorEnvelope::new(code, message).to_json();
        for route in self.lock().values() {
            let _ = route.tx.send(Delivery::Event(ReplyEvent::Fail {
                status: code.status(),
                worker: String::new(),
                code,
                body: body.clone(),
            }));
        }
    }
}

/// How long the reply stream outlives this gateway (renewed every third of it).
pub const REPLY_TTL: Duration = Duration::from_secs(60);
const BLOCK: Duration = Duration::from_secs(1);
/// Entries per read. Entries are bounded (a streamed chunk by the worker's coalescing, a whole
/// answer by `worker.max_response_bytes`), so a read is too, and finishes well within the
/// read's own timeout.
const BATCH: usize = 128;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(job: &str, n: usize) -> Reply {
        Reply {
            job: job.into(),
            event: ReplyEvent::Data(vec![b'x'; n]),
        }
    }

    #[tokio::test]
    async fn a_request_that_falls_behind_its_budget_is_told_and_dropped() {
        let replies = Replies::new("k".into(), 100);
        let mut slow = replies.register("slow");
        let mut fast = replies.register("fast");
        for _ in 0..3 {
            replies.dispatch(data("slow", 40));
            replies.dispatch(data("fast", 40));
            // The fast reader takes each chunk as it comes.
            assert!(matches!(fast.recv().await, Some(Delivery::Event(_))));
        }
        assert_eq!(replies.len(), 1, "the slow request is no longer routed");
        assert!(matches!(slow.recv().await, Some(Delivery::Event(_))));
        assert!(matches!(slow.recv().await, Some(Delivery::Event(_))));
        assert!(matches!(slow.recv().await, Some(Delivery::Overflow)));
        // A whole answer is one event, bounded by the worker, not by the stream budget.
        replies.dispatch(Reply {
            job: "fast".into(),
            event: ReplyEvent::Full {
                status: 200,
                worker: "w".into(),
                claimed_ms: 0,
                body: vec![b'x'; 1000],
            },
        });
        assert!(matches!(
            fast.recv().await,
            Some(Delivery::Event(ReplyEvent::Full { .. }))
        ));
    }
}
