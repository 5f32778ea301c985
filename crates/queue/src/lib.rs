//! The Redis Streams queue between gateways and workers.
//!
//! All Redis I/O of the platform lives here, so the key schema of `ssw_protocol::keys` is used
//! in one place and every multi-step change is one atomic Lua script.
//!
//! # Layout
//! - [`client`]: [`Redis`], a pooled handle whose every command has a deadline; connections are
//!   recycled without a PING and dropped after any error.
//! - [`producer`]: gateway side — admission + enqueue, cancel, expire, reply stream upkeep and
//!   reads, pool statistics.
//! - [`consumer`]: worker side — group set-up, pulling, claiming, reclaiming, replies, requeue,
//!   finish, cancellation polling, heartbeats.
//! - [`fast`]: a pool's fast lane, for jobs that generate nothing (tokenizer endpoints).
//! - [`limits`]: tenants' rate limits (requests and tokens per minute and day, concurrency).
//! - [`responses`]: the Responses API's stored responses (one key each, under a TTL).
//! - [`routing`]: routing versions (published compare-and-swap) and gateways' routing status.
//! - [`resp`]: decoding of raw replies.
//! - [`scripts`]: the Lua scripts, one file each under `crates/queue/lua/`.

pub mod client;
pub mod consumer;
pub mod fast;
pub mod limits;
pub mod producer;
pub mod resp;
pub mod responses;
pub mod routing;
pub mod scripts;

pub use client::{QueueError, Redis};

/// Milliseconds since the Unix epoch, from the local clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
