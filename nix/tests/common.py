"""Shared by the nix/ tests: result bookkeeping and `nix-instantiate --eval`."""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NIX = os.path.dirname(HERE)
ROOT = os.path.dirname(NIX)

passes = []
failures = []


def ok(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    (passes if cond else failures).append(what)
    return cond


def need(tool, install):
    """Fail (never skip) when a tool a check needs is missing."""
    if shutil.which(tool) is None:
        ok(False, f"{tool} not found: install it ({install})")
        return False
    return True


def nix_eval(expr, cwd=NIX, writable_store=False):
    """(exit code, stdout, stderr) of evaluating `expr` strictly to JSON, offline. Read-only,
    unless `writable_store`: then in a throw-away store (for `builtins.toFile`)."""
    if not writable_store:
        return _run(["--readonly-mode"], expr, cwd, None)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NIX_STORE_DIR=f"{d}/store", NIX_STATE_DIR=f"{d}/state", NIX_LOG_DIR=f"{d}/log")
        return _run(["--read-write-mode"], expr, cwd, env)


def _run(mode, expr, cwd, env):
    p = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", *mode, "-E", expr],
        cwd=cwd, capture_output=True, text=True, env=env,
    )
    return p.returncode, p.stdout, p.stderr


def nixpkgs_lib():
    """Path of the real nixpkgs `lib`: $NIXPKGS_LIB (nix flake check passes nixpkgs' own), or
    the vendored copy beside the repository (../shared/vendor/nixpkgs-lib/lib)."""
    path = os.environ.get("NIXPKGS_LIB") or os.path.join(ROOT, "..", "shared", "vendor", "nixpkgs-lib", "lib")
    path = os.path.abspath(path)
    if not os.path.exists(os.path.join(path, "default.nix")):
        print(f"error: nixpkgs lib not found at {path}; put ../shared beside the repository or set NIXPKGS_LIB", file=sys.stderr)
        sys.exit(2)
    return path
