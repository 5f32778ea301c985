# Helpers every VM test script starts with (each vm-tests/<name>.nix concatenates this file and
# its own script into testScript).
import json
import shlex

GATEWAY = "http://127.0.0.1:8080"
# The gateway's operators' listener (settings.gateway.opsListen): /readyz, /metrics.
OPS = "http://127.0.0.1:9300"


def background(machine, cmd):
    """Start `cmd` in the VM and return at once.

    The driver runs `bash -c CMD | (base64 -w 0; echo)` and waits until stdout is closed, so a
    backgrounded command that keeps the pipe open blocks `succeed` until it ends (the
    driver's `Machine.execute` docstring). Redirecting stdout and stderr closes it.
    scripts/nix-checks.sh checks this function against that pipeline, and that no script
    backgrounds a command any other way.
    """
    machine.succeed(f"({cmd}) >/dev/null 2>&1 </dev/null &")


def chat_cmd(model, out, request_id=None, stream=False, max_time=60):
    """A curl command line for one chat completion: body to `out`, headers to `out`.h, and the
    HTTP status (000 if none) to `out`.code once the request is over (wait_for_file on it)."""
    body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    rid = f"-H {shlex.quote('x-request-id: ' + request_id)} " if request_id else ""
    return (
        f"{{ curl -s -m {max_time} -o {out} -D {out}.h -w '%{{http_code}}' {rid}"
        f"-H 'content-type: application/json' -d {shlex.quote(body)} "
        f"{GATEWAY}/v1/chat/completions > {out}.part || true; }}; mv {out}.part {out}.code"
    )
