# SIGKILL a worker while it runs requests: systemd restarts it (Restart=on-failure), the jobs it
# held are taken over once its heartbeat lapses (worker.heartbeat_ttl, 5 s), and every request
# succeeds with its own answer.
N = 16
HEAVY_0_METRICS = "http://127.0.0.1:9301/metrics"  # workerMetricsBase, first replica by name

start_all()
machine.wait_for_unit("ssw-gateway.service")
machine.wait_until_succeeds(f"curl -sf {OPS}/readyz", timeout=120)
machine.wait_until_succeeds(
    f"curl -s {OPS}/readyz | jq -e '.pools[] | select(.pool == \"heavy\") | .serving_workers == 2'",
    timeout=60,
)


def inflight_on_heavy_0():
    out = machine.succeed(f"curl -s {HEAVY_0_METRICS} | grep '^ssw_worker_inflight_jobs' || true")
    return sum(float(line.split()[-1]) for line in out.splitlines())


with subtest("requests in flight on a worker survive its SIGKILL"):
    pid_before = machine.succeed("systemctl show -p MainPID --value ssw-worker-heavy-0").strip()
    # Heavy stubs take 3 s to the first token: the kill lands while the jobs run.
    for i in range(N):
        background(machine, chat_cmd("heavy", f"/tmp/r{i}", request_id=f"restart-{i}"))
    machine.wait_until_succeeds(
        f"curl -s {HEAVY_0_METRICS} | grep -E '^ssw_worker_inflight_jobs.* [1-9]'", timeout=30
    )
    running = inflight_on_heavy_0()
    machine.succeed("systemctl kill -s KILL ssw-worker-heavy-0")
    machine.wait_until_succeeds(
        f"test \"$(systemctl show -p MainPID --value ssw-worker-heavy-0)\" != {pid_before} "
        "&& systemctl is-active ssw-worker-heavy-0",
        timeout=30,
    )
    for i in range(N):
        machine.wait_for_file(f"/tmp/r{i}.code", timeout=90)
    codes = [machine.succeed(f"cat /tmp/r{i}.code") for i in range(N)]
    assert running >= 1, f"no request was in flight on heavy-0 when it was killed ({running})"
    assert codes == ["200"] * N, codes
    for i in range(N):
        answer = json.loads(machine.succeed(f"cat /tmp/r{i}"))
        # The stub's answer names the request it answers: no answer reached another client.
        assert answer["choices"][0]["message"]["content"].split()[1] == f"restart-{i}", answer

with subtest("the restarted worker serves again"):
    machine.wait_until_succeeds(
        f"curl -s {OPS}/readyz | jq -e '.pools[] | select(.pool == \"heavy\") | .serving_workers == 2'",
        timeout=30,
    )
