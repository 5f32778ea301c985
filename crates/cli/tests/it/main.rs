//! Integration tests: the real `ssw` binary, real `redis-server`, HTTP over loopback.

mod api;
mod failures;
mod load;

use std::path::Path;

/// The binary under test.
pub fn ssw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ssw"))
}
