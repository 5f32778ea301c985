#!/usr/bin/env bash
# The Nix checks that run without nixpkgs (CI runs them with Debian's nix-bin):
#   1. every .nix file parses;
#   2. the nix/ tests (nix/tests/run.py): golden topologies, bad-input messages, the NixOS module
#      through the real module system (../shared/vendor/nixpkgs-lib), the docs' code blocks,
#      promtool on the generated Prometheus configs and alert rules, generated configs through
#      `ssw check-config`;
#   3. compose.yaml equals what the flake generates (`--fix` rewrites it);
#   4. compose.yaml validates against the Compose JSON schema (../shared/schemas/compose-spec.json);
#   5. no locked crate needs a newer rustc than the workspace's rust-version;
#   6. the VM test scripts (nix/tests/vm_scripts.py): they compile, and background commands
#      the way the NixOS test driver needs.
# Building the package, the OCI image and running the VM tests need nixpkgs: `nix flake check`.
set -euo pipefail
cd "$(dirname "$0")/.."

fix=0
[ "${1:-}" = "--fix" ] && fix=1
need() { command -v "$1" >/dev/null || { echo "error: $1 not found; install it: $2" >&2; exit 1; }; }
need nix-instantiate "sudo apt-get install nix-bin"
need nix "sudo apt-get install nix-bin"
need python3 "sudo apt-get install python3"
need cargo "https://rustup.rs"
need promtool "sudo apt-get install prometheus"
python3 -c 'import yaml, jsonschema' 2>/dev/null ||
  { echo "error: python3 lacks yaml/jsonschema; install them: sudo apt-get install python3-yaml python3-jsonschema (or pip install pyyaml jsonschema)" >&2; exit 1; }
export NIX_CONFIG="experimental-features = nix-command flakes"

passed=0 failed=0
step() { # name, command...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok: $name"; else failed=$((failed + 1)); echo "FAILED: $name" >&2; fi
}

parse_all() {
  local bad=0
  while IFS= read -r f; do
    nix-instantiate --parse "$f" >/dev/null || { echo "does not parse: $f" >&2; bad=1; }
  done < <(git ls-files '*.nix')
  return $bad
}

cargo build --locked --quiet --bin ssw
step "every .nix file parses" parse_all
step "nix/ tests" env SSW_BIN=target/debug/ssw python3 nix/tests/run.py

compose_fresh() {
  local tmp; tmp=$(mktemp)
  nix eval --raw .#lib.composeYaml >"$tmp"
  if ! diff -u compose.yaml "$tmp" >/dev/null; then
    if [ $fix = 1 ]; then cp "$tmp" compose.yaml; echo "compose.yaml regenerated"; rm -f "$tmp"; return 0; fi
    diff -u compose.yaml "$tmp" | head -40 >&2
    echo "compose.yaml is stale: run scripts/nix-checks.sh --fix (or nix eval --raw .#lib.composeYaml > compose.yaml)" >&2
    rm -f "$tmp"; return 1
  fi
  rm -f "$tmp"
}
step "compose.yaml is what the flake generates" compose_fresh

schema=../shared/schemas/compose-spec.json
[ -f "$schema" ] || { echo "error: $schema missing (CI puts shared/ beside the clone)" >&2; exit 1; }
step "compose.yaml validates against the Compose schema" python3 - "$schema" <<'PY'
import json, sys, yaml, jsonschema
jsonschema.validate(yaml.safe_load(open("compose.yaml")), json.load(open(sys.argv[1])))
PY

step "locked crates fit the workspace rust-version" python3 scripts/check-rust-version.py

step "VM test scripts" python3 nix/tests/vm_scripts.py

echo "nix-checks: $passed passed, $failed failed"
[ "$failed" = 0 ]
