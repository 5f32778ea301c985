//! Integration tests: the real `ssw` binary, real `redis-server`, HTTP over loopback.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod api;
mod failures;
mod load;
mod observability;

use std::path::Path;

/// The binary under test.
pub fn ssw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ssw"))
}
