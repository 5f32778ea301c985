//! The SSW gateway: the OpenAI-compatible front door.
//!
//! A request is parsed and validated ([`ssw_protocol::chat`]), routed to a pool
//! ([`routing`]), admitted and enqueued on the pool's Redis stream, and answered from the events
//! the worker sends back on this gateway's reply stream ([`replies`]). [`lifecycle`] owns one
//! request's wait, deadline and cancellation.
//!
//! # Layout
//! - [`http`]: routes, middleware, handlers (thin: extract, call, return).
//! - [`routing`]: pool resolution.
//! - [`lifecycle`]: the per-request [`lifecycle::Ticket`].
//! - [`replies`]: the reply-stream reader and demultiplexer.
//! - [`auth`]: API keys. [`error`]: error → HTTP. [`metrics`]: metric names.
//! - [`state`]: [`AppState`], built once from the config.

pub mod auth;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod replies;
pub mod routing;
pub mod state;

pub use state::{AppState, StartError};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves on `listener` until `shutdown` is cancelled, then drains: readiness fails, new
/// requests are refused, responses in flight complete, and the function returns.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    ssw_telemetry::start_process_metrics("gateway", shutdown.clone());
    let background = CancellationToken::new();
    let sampler = tokio::spawn(metrics::sample_queues(
        state.redis.clone(),
        state.router.clone(),
        state.config.gateway.sample_interval,
        background.clone(),
    ));
    let reader = tokio::spawn(replies::run_reader(
        state.redis.clone(),
        state.replies.clone(),
        background.clone(),
    ));
    let keeper = tokio::spawn(replies::run_keeper(
        state.redis.clone(),
        state.replies.clone(),
        background.clone(),
    ));
    tracing::info!(addr = %listener.local_addr()?, gateway = %state.id, "gateway listening");
    let watchdog_state = state.clone();
    ssw_telemetry::systemd::ready_with_watchdog(
        move || !watchdog_state.is_draining(),
        shutdown.clone(),
    );
    let drain_state = state.clone();
    let listener = nodelay(listener);
    let result = axum::serve(listener, http::router(state))
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            drain_state.start_draining();
            tracing::info!("draining: refusing new requests, finishing the ones in flight");
        })
        .await;
    background.cancel();
    let _ = tokio::join!(reader, keeper, sampler);
    result
}

/// Small SSE writes must leave at once: without TCP_NODELAY, Nagle's algorithm holds each one
/// until the client's delayed ACK (~40 ms).
fn nodelay(
    listener: TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    })
}
