//! A route's shadow copies: a share of the route's requests sent again to the shadow pool, in
//! its lowest lane (`Tier::Shadow`: taken only when no other job of the pool waits, bounded
//! apart from the pool's backlog, dropped after 30 s), the answer read and discarded, its
//! figures recorded under variant `shadow`. The client's request is admitted and enqueued
//! before its copy is made, on a task of its own: the client never waits for it.

use std::sync::Arc;

use ssw_protocol::error::ErrorCode;
use ssw_protocol::job::Job;
use ssw_protocol::reply::ReplyEvent;
use ssw_protocol::tier::Tier;
use ssw_queue::producer::{Enqueued, Lane, QueueLimits};

use crate::lifecycle::{Next, Ticket};
use crate::metrics::RouteLabels;
use crate::routing::Pool;
use crate::state::AppState;

/// The lane tenant of shadow copies: apart from every real tenant (not a valid tenant name),
/// so copies never count against a tenant's queue bound.
pub const SHADOW_TENANT: &str = "~shadow";

/// The variant label of shadow copies.
pub const SHADOW_VARIANT: &str = "shadow";

/// One copy to send.
pub struct Copy {
    /// The shadow pool.
    pub pool: Arc<Pool>,
    /// The route it copies.
    pub route: Arc<str>,
    /// The client's request id with `.shadow`.
    pub request_id: String,
    /// Whether the client asked for a stream (the copy does the same, so its TTFT compares).
    pub stream: bool,
    /// The endpoint the client called.
    pub endpoint: ssw_protocol::job::Endpoint,
    /// The engine body for the shadow pool.
    pub body: Vec<u8>,
}

/// Enqueues the copy and reads its answer to the end.
pub async fn run(state: AppState, copy: Copy) {
    let Copy {
        pool,
        route,
        request_id,
        stream,
        endpoint,
        body,
    } = copy;
    let now = ssw_queue::now_ms();
    let deadline_ms = now + pool.tier_queue_timeout(Tier::Shadow).as_millis() as u64;
    let job = Job {
        id: state.next_job_id(),
        request_id,
        reply_to: state.replies.key().to_owned(),
        enqueued_ms: now,
        deadline_ms,
        stream,
        attempt: 1,
        crashes: 0,
        crashed_on: String::new(),
        tier: Tier::Shadow,
        tenant: SHADOW_TENANT.to_owned(),
        endpoint,
        adapter: String::new(),
        body,
    };
    let span = tracing::info_span!(
        "shadow",
        request_id = %job.request_id,
        job = %job.id,
        pool = %pool.name,
        route = %route,
        worker = tracing::field::Empty,
    );
    let mut ticket = Ticket::register(
        &state,
        pool.name.clone(),
        job.id.clone(),
        Lane::of(&job),
        (tokio::time::Instant::now(), now, deadline_ms),
        stream,
        span,
    );
    // Copies are not the route's variants: no guard counts them.
    let labels = RouteLabels {
        route: route.clone(),
        variant: SHADOW_VARIANT.into(),
        adapter: "".into(),
    };
    ticket.routed(labels, false);
    let limits = QueueLimits {
        max_queue: pool.max_queue,
        max_queue_bytes: pool.max_queue_bytes,
        max_tier: pool.tier_max_queue(Tier::Shadow),
        max_tenant: 0,
    };
    match state.redis.enqueue(&pool.name, &job, limits).await {
        Ok(Enqueued::Accepted(entry)) => ticket.enqueued(entry, job, limits),
        Ok(_) | Err(ssw_queue::QueueError::OutOfMemory(_)) => {
            ticket.finish();
            ticket.record(429, ErrorCode::QueueFull.as_str());
            crate::metrics::shadow_dropped(&route, "queue_full");
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, "cannot enqueue a shadow copy");
            ticket.cancel_unconfirmed();
            ticket.record(503, ErrorCode::QueueUnavailable.as_str());
            crate::metrics::shadow_dropped(&route, "queue_unavailable");
            return;
        }
    }
    discard(ticket, &route).await;
}

/// Reads the copy's answer to its end and records it; nothing is kept.
async fn discard(mut ticket: Ticket, route: &str) {
    loop {
        match ticket.next().await {
            Next::Event(ReplyEvent::Head { .. } | ReplyEvent::Data(_)) => {}
            Next::Event(ReplyEvent::End) => {
                ticket.finish();
                ticket.record(200, "ok");
                return;
            }
            Next::Event(ev @ (ReplyEvent::Full { .. } | ReplyEvent::Fail { .. })) => {
                let code = ev.error_code().map_or("ok", ErrorCode::as_str);
                let status = match ev {
                    ReplyEvent::Full { status, .. } | ReplyEvent::Fail { status, .. } => status,
                    _ => 200,
                };
                ticket.finish();
                ticket.record(status, code);
                return;
            }
            Next::Event(_) => {}
            Next::Failed(err) => {
                // Not finished: dropping the ticket cancels the job.
                if err.code == ErrorCode::QueueTimeout {
                    crate::metrics::shadow_dropped(route, "queue_timeout");
                }
                ticket.record(err.code.status(), err.code.as_str());
                return;
            }
        }
    }
}
