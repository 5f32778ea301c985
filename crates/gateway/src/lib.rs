//! The SSW gateway: the OpenAI-compatible front door.
//!
//! A request is parsed and validated ([`ssw_protocol::chat`]), routed to a pool
//! ([`routing`]), admitted and enqueued on the pool's Redis stream, and answered from the events
//! the worker sends back on this gateway's reply stream ([`replies`]). [`lifecycle`] owns one
//! request's wait, deadline and cancellation.
//!
//! # Layout
//! - [`server`]: connections: the cap on open ones, head, idle and write timeouts.
//! - [`http`]: routes, middleware, handlers (thin: read, call, answer).
//! - [`admission`]: from a body to a job on its queue, or the reason it is refused.
//! - [`routing`]: pool and route resolution; [`reload`]: routing versions and SIGHUP.
//! - [`lifecycle`]: the per-request [`lifecycle::Ticket`]; [`shadow`]: routes' shadow copies;
//!   [`guard`]: routes' automatic fallback to their control.
//! - [`replies`]: the reply-stream reader and demultiplexer.
//! - [`openapi`]: the OpenAPI document (`GET /openapi.json`).
//! - [`auth`]: API keys. [`error`]: error → HTTP. [`metrics`]: metric names.
//! - [`state`]: [`AppState`], built once from the config.

pub mod admission;
pub mod auth;
pub mod error;
pub mod guard;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod reload;
pub mod replies;
pub mod responses;
pub mod routing;
pub mod server;
pub mod shadow;
pub mod state;

pub use state::{AppState, StartError};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the public API on `listener` (and `/metrics`, `/readyz` on `ops` when given) until
/// `shutdown` is cancelled, then drains: readiness fails, new requests are refused, responses in
/// flight complete, and the function returns.
pub async fn serve(
    listener: TcpListener,
    ops: Option<TcpListener>,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    ssw_telemetry::start_process_metrics("gateway", shutdown.clone());
    let background = CancellationToken::new();
    let sampler = tokio::spawn(metrics::sample_queues(
        state.redis.clone(),
        state.pools.clone(),
        state.config.gateway.sample_interval,
        background.clone(),
    ));
    let reader = tokio::spawn(replies::run_reader(
        state.redis.clone(),
        state.replies.clone(),
        state.config.gateway.reply_ttl,
        background.clone(),
    ));
    let keeper = tokio::spawn(replies::run_keeper(
        state.redis.clone(),
        state.replies.clone(),
        state.config.gateway.reply_ttl,
        background.clone(),
    ));
    let settler = tokio::spawn(limits::settle(state.clone(), background.clone()));
    // A published routing version is in force before the first request is served (unless
    // Redis does not answer now: then within a second of its return).
    let mut routing = reload::Watcher::default();
    routing.check(&state).await;
    let routing = tokio::spawn(routing.run(state.clone(), background.clone()));
    let guards = tokio::spawn(guard::run(state.clone(), background.clone()));
    let watcher = tokio::spawn(replies::watch_workers(
        state.redis.clone(),
        state.replies.clone(),
        background.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, gateway = %state.instance, "gateway listening");
    if state.config.gateway.is_open(&state.config) {
        tracing::warn!(
            addr = %listener.local_addr()?,
            "serving without API keys on a listener others can reach (gateway.allow_unauthenticated)"
        );
    }
    let watchdog_state = state.clone();
    ssw_telemetry::systemd::ready_with_watchdog(
        move || !watchdog_state.is_draining(),
        shutdown.clone(),
    );
    // Draining starts at once on SIGTERM; the listeners stop right after.
    let drain_state = state.clone();
    let draining = shutdown.clone();
    tokio::spawn(async move {
        draining.cancelled().await;
        drain_state.start_draining();
        tracing::info!("draining: refusing new requests, finishing the ones in flight");
    });
    let bounds = server::Bounds::from_config(&state.config.gateway);
    let ops_serve = ops.map(|ops| {
        if let Ok(addr) = ops.local_addr() {
            tracing::info!(%addr, "operators' listener (/metrics, /readyz, /healthz)");
        }
        let ops_bounds = server::Bounds {
            max_connections: 256,
            ..bounds
        };
        tokio::spawn(server::serve(
            ops,
            http::ops_router(state.clone()),
            ops_bounds,
            shutdown.clone(),
        ))
    });
    let result = server::serve(listener, http::router(state), bounds, shutdown).await;
    if let Some(ops) = ops_serve {
        let _ = ops.await;
    }
    background.cancel();
    let _ = tokio::join!(reader, keeper, watcher, sampler, settler, routing, guards);
    result
}
