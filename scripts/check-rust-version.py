"""Fails if any locked crate declares a newer rust-version than the workspace's.

The workspace's rust-version is the rustc of the pinned nixpkgs (nixos-26.05) or older, so the
flake's crane build would fail on a dependency that needs more.
"""

import json
import subprocess
import sys


def parse(v):
    return tuple(int(x) for x in v.split(".")) + (0,) * (3 - len(v.split(".")))


meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked"],
    check=True, capture_output=True, text=True,
).stdout)
ours = {p["rust_version"] for p in meta["packages"] if p["source"] is None}
if len(ours) != 1 or None in ours:
    sys.exit(f"error: workspace crates must all inherit one rust-version, got {ours}")
ours = ours.pop()
newer = sorted(
    f"{p['name']} {p['version']} needs rust {p['rust_version']}"
    for p in meta["packages"]
    if p["source"] is not None and p.get("rust_version") and parse(p["rust_version"]) > parse(ours)
)
checked = sum(1 for p in meta["packages"] if p["source"] is not None)
if newer:
    print(f"error: locked crates newer than the workspace rust-version {ours}:", *newer, sep="\n  ")
    print(f"rust-version: 0 passed, {len(newer)} failed")
    sys.exit(1)
print(f"rust-version: {checked} locked crates declare at most rust {ours}")
print("rust-version: 1 passed, 0 failed")
