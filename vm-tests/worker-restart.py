# SIGKILL a worker: systemd restarts it (Restart=on-failure) and no request fails meanwhile.
start_all()
machine.wait_for_unit("ssw-gateway.service")
machine.wait_until_succeeds("curl -sf http://127.0.0.1:8080/readyz", timeout=120)

request = (
    "curl -sf -m 30 -H 'content-type: application/json' "
    "-d '{\"model\":\"heavy\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}' "
    "http://127.0.0.1:8080/v1/chat/completions > /dev/null"
)

with subtest("requests keep succeeding while a worker is killed and restarted"):
    pid_before = machine.succeed("systemctl show -p MainPID --value ssw-worker-heavy-0").strip()
    machine.succeed(
        f"(for i in $(seq 1 60); do {request} || echo fail >> /tmp/failures; sleep 0.1; done; touch /tmp/done) &"
    )
    machine.succeed("systemctl kill -s KILL ssw-worker-heavy-0")
    machine.wait_until_succeeds(
        f"test \"$(systemctl show -p MainPID --value ssw-worker-heavy-0)\" != {pid_before} "
        "&& systemctl is-active ssw-worker-heavy-0",
        timeout=30,
    )
    machine.wait_for_file("/tmp/done", timeout=60)
    machine.fail("test -s /tmp/failures")

with subtest("the restarted worker serves again"):
    machine.wait_until_succeeds(
        "curl -s http://127.0.0.1:8080/readyz | jq -e '.pools[] | select(.pool == \"heavy\") | .serving_workers == 2'",
        timeout=30,
    )
