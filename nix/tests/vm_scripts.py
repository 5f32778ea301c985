"""Checks of the VM test scripts that run without a VM.

- every vm-tests/<name>.nix reads vm-tests/lib.py and its own <name>.py, which compile together;
- commands run in the background only through lib.background(): the NixOS test driver runs each
  command as `bash -c CMD | (base64 -w 0; echo)` and waits until stdout is closed
  (nixos/lib/test-driver/src/test_driver/machine/__init__.py, `Machine.execute`, NixOS/nixpkgs @
  b09f2c739a3e49b80049c1fd80bd8a393cc7fbc1), so a `cmd &` that keeps stdout blocks `succeed`
  until it ends (the bug that made vm-overload fail and vm-worker-restart test nothing);
- lib.background() returns at once under that exact pipeline, while the old form does not.
"""

import ast
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VM = os.path.join(ROOT, "vm-tests")

passes, failures = [], []


def ok(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    (passes if cond else failures).append(what)
    return cond


class LocalMachine:
    """`Machine.execute`/`succeed` of the NixOS test driver, run on this host."""

    def execute(self, command, timeout=900):
        command = f"set -euo pipefail; {command}"
        out_command = f"timeout {timeout} bash -c {shlex.quote(command)} | (base64 -w 0; echo)"
        p = subprocess.run(["bash", "-c", out_command], capture_output=True, text=True)
        return p.returncode, p.stdout

    def succeed(self, command, timeout=900):
        status, out = self.execute(command, timeout)
        if status != 0:
            raise AssertionError(f"command failed: {command}")
        return out


# A `&` that sends a command to the background (not `&&`, `>&`, `&>` or `2>&1`).
BACKGROUND = re.compile(r"(?<![&>|<])&(?![&>])")


def strings(node):
    """Every string literal in a script, f-string parts included."""
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            yield n.value


def main():
    lib = open(os.path.join(VM, "lib.py")).read()
    for nixfile in sorted(f for f in os.listdir(VM) if f.endswith(".nix")):
        text = open(os.path.join(VM, nixfile)).read()
        if "testScript" not in text:
            continue  # helpers such as common.nix
        name = nixfile[:-4]
        py = os.path.join(VM, f"{name}.py")
        if not ok(os.path.exists(py), f"{nixfile} has its script {name}.py"):
            continue
        ok(f"builtins.readFile ./lib.py + builtins.readFile ./{name}.py" in text, f"{nixfile} reads lib.py and {name}.py")
        script = open(py).read()
        try:
            tree = ast.parse(lib + "\n" + script, filename=py)
            ok(True, f"{name}: lib.py + {name}.py compile")
        except SyntaxError as e:
            ok(False, f"{name}: lib.py + {name}.py compile ({e})")
            continue
        stray = [s for s in strings(ast.parse(script)) if BACKGROUND.search(s)]
        ok(not stray, f"{name}: backgrounds commands only through background()" + ("" if not stray else f" ({stray})"))

    machine = LocalMachine()
    scope = {}
    exec(compile(lib, "lib.py", "exec"), scope)
    with tempfile.TemporaryDirectory() as d:
        marker = os.path.join(d, "ran")
        start = time.monotonic()
        scope["background"](machine, f"sleep 3; touch {marker}")
        took = time.monotonic() - start
        ok(took < 1.5, f"background() returns at once under the driver's pipeline ({took:.2f} s)")
        time.sleep(3.5)
        ok(os.path.exists(marker), "background() runs its command to the end")
        # The form the scripts used before: it blocks until the command ends, so the check above
        # can tell the two apart.
        start = time.monotonic()
        machine.succeed("(sleep 2 &) ")
        ok(time.monotonic() - start > 1.5, "the driver pipeline blocks on a backgrounded command that keeps stdout")

    print(f"vm-scripts: {len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


main()
