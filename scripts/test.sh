#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit + integration tests against a real redis-server).
# Fails, naming what to install, when a needed tool is missing; nothing is skipped silently.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null || { echo "error: $1 not found on PATH; install it: $2" >&2; exit 1; }
}
need cargo "https://rustup.rs"
need redis-server "sudo apt-get install redis-server"

cargo test --workspace --locked
