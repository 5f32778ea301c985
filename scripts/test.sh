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

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$out" || status=$?
# cargo prints one result line per test binary; sum them into one closing line.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
exit $status
