//! Integration tests: the real `ssw` binary, real `redis-server`, HTTP over loopback.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod adapters;
mod api;
mod completions;
mod edge;
mod failures;
mod faults;
mod load;
mod observability;
mod responses;
mod rollout;
mod routes;
mod tiers;
mod tokenizer;

use std::path::Path;

/// The binary under test.
pub fn ssw() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ssw"))
}

/// Runs `ssw` with `args`, asserts it succeeded (showing its stderr if not), returns stdout.
pub async fn ssw_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = tokio::process::Command::new(ssw())
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
