# Every scrape target (the gateway's operators' listener, stubs, workers) is up, the alert rules
# are loaded, and the request counters reach Prometheus; the public port serves no metrics.
import json

start_all()
machine.wait_for_unit("prometheus.service")
machine.wait_for_unit("ssw-gateway.service")
machine.wait_until_succeeds(f"curl -sf {OPS}/readyz", timeout=120)

for _ in range(3):
    machine.succeed(
        "curl -sf -H 'content-type: application/json' "
        "-d '{\"model\":\"light\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}' "
        "http://127.0.0.1:8080/v1/chat/completions"
    )

with subtest("every target is scraped and up"):
    machine.wait_until_succeeds(
        "curl -sf http://127.0.0.1:9090/api/v1/targets | jq -e "
        "'[.data.activeTargets[] | select(.health == \"up\")] | length == 9'",
        timeout=60,
    )
    targets = json.loads(machine.succeed("curl -sf http://127.0.0.1:9090/api/v1/targets"))
    jobs = sorted({t["labels"]["job"] for t in targets["data"]["activeTargets"]})
    assert jobs == ["ssw-gateway", "ssw-stub", "ssw-workers"], jobs

with subtest("metrics are on the operators' listener only"):
    assert machine.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' {GATEWAY}/metrics") == "404"
    machine.succeed(f"curl -sf {OPS}/metrics | grep -q ssw_gateway_open_connections")

with subtest("the alert rules are loaded"):
    machine.wait_until_succeeds(
        "curl -sf http://127.0.0.1:9090/api/v1/rules | jq -e '[.data.groups[].rules[]] | length >= 8'",
        timeout=60,
    )

with subtest("workers report to Prometheus"):
    machine.wait_until_succeeds(
        "curl -sf 'http://127.0.0.1:9090/api/v1/query?query=sum(ssw_worker_jobs_total{outcome=\"ok\"})' "
        "| jq -e '.data.result[0].value[1] == \"3\"'",
        timeout=60,
    )

with subtest("the gateway's request counter reaches Prometheus"):
    machine.wait_until_succeeds(
        "curl -sf 'http://127.0.0.1:9090/api/v1/query?query=sum(ssw_gateway_requests_total{pool=\"light\",code=\"ok\"})' "
        "| jq -e '.data.result[0].value[1] == \"3\"'",
        timeout=60,
    )
