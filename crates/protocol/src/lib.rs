//! Declarative protocol of the SSW inference platform.
//!
//! Everything that crosses a process boundary is defined here and nowhere else: the OpenAI
//! chat-completions request as the gateway accepts it, the OpenAI error envelope and the stable
//! error codes, the job envelope a gateway puts on a pool's Redis stream, the reply events a worker
//! sends back, the worker heartbeat, and the Redis key schema. The crate does no I/O: no tokio, no
//! redis, no axum.
//!
//! # Layout
//! - [`chat`]: parse a client's chat-completions body into a [`chat::ChatRequest`] (validated,
//!   unknown fields preserved).
//! - [`error`]: [`error::ErrorCode`], the one table of status, OpenAI type and code.
//! - [`fields`]: which request fields clients may send (OpenAI's, allowed vLLM extensions).
//! - [`job`]: [`job::Job`], the envelope on `ssw:{pool}:jobs`.
//! - [`reply`]: [`reply::Reply`], the events on a gateway's reply stream.
//! - [`keys`]: [`keys::Keys`], every Redis key name.
//! - [`heartbeat`]: [`heartbeat::WorkerStatus`], what a worker publishes about itself.
//! - [`models`]: the `/v1/models` list types.
//! - [`schema`]: the API's shapes for the OpenAPI document.
//! - [`tier`]: [`tier::Tier`] (service tiers) and tenant names.

pub mod chat;
pub mod error;
pub mod fields;
pub mod heartbeat;
pub mod job;
pub mod keys;
pub mod models;
pub mod reply;
pub mod schema;
pub mod tier;

/// Milliseconds since the Unix epoch, the time unit of every timestamp in Redis.
pub type EpochMillis = u64;
