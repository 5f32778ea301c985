# Switch to a specialisation whose heavy pool serves "new-model" while four clients keep
# sending requests (both pools, streaming and not): every request answered 200, by the old or
# the new model; afterwards every heavy answer is the new model; engines were rolled one at a
# time by ssw-rollout, and no worker or gateway restarted.
OLD = "Qwen/Qwen2.5-14B-Instruct-AWQ"
NEW = "new-model"
SPEC = "/run/booted-system/specialisation/new-heavy-model/bin/switch-to-configuration"

start_all()
machine.wait_for_unit("ssw-gateway.service")
machine.wait_for_unit("ssw-rollout.service")
machine.wait_until_succeeds(
    f"curl -s {OPS}/readyz | jq -e '[.pools[] | .serving_workers == 2] | all'", timeout=120
)


def pid(unit):
    return machine.succeed(f"systemctl show -p MainPID --value {unit}").strip()


# One client: requests until /tmp/stop exists, one line per answer: "<status> <pool> <model>".
machine.succeed(
    "cat > /tmp/client.sh <<'SH'\n"
    "#!/bin/sh\n"
    "n=0\n"
    "while [ ! -e /tmp/stop ]; do\n"
    "  if [ $(( ($1 + n) % 2 )) = 0 ]; then pool=heavy; else pool=light; fi\n"
    "  if [ $(( n % 2 )) = 0 ]; then stream=true; else stream=false; fi\n"
    "  body=\"{\\\"model\\\":\\\"$pool\\\",\\\"stream\\\":$stream,\\\"messages\\\":[{\\\"role\\\":\\\"user\\\",\\\"content\\\":\\\"hi\\\"}]}\"\n"
    "  code=$(curl -s -m 60 -o /tmp/c$1.body -w '%{http_code}' -H 'content-type: application/json' -d \"$body\" "
    + GATEWAY
    + "/v1/chat/completions)\n"
    "  if [ $stream = true ]; then\n"
    "    model=$(grep '^data: {' /tmp/c$1.body | head -n1 | cut -c7- | jq -r .model)\n"
    "    grep -q '^data: \\[DONE\\]' /tmp/c$1.body || code=\"$code-nodone\"\n"
    "  else\n"
    "    model=$(jq -r .model /tmp/c$1.body 2>/dev/null)\n"
    "  fi\n"
    "  echo \"$code $pool $model $(date +%s%N)\" >> /tmp/load$1\n"
    "  n=$((n + 1))\n"
    "done\n"
    "SH\n"
    "chmod +x /tmp/client.sh"
)

with subtest("a switch to another heavy model under load fails no request"):
    before = {u: pid(u) for u in ["ssw-gateway", "ssw-worker-heavy-0", "ssw-worker-heavy-1", "ssw-worker-light-0", "ssw-stub-light-0"]}
    for c in range(4):
        background(machine, f"/tmp/client.sh {c}")
    machine.wait_until_succeeds("test $(cat /tmp/load* | wc -l) -ge 20", timeout=60)
    switched_ns = int(machine.succeed("date +%s%N"))
    out = machine.succeed(f"{SPEC} test 2>&1")
    done_ns = int(machine.succeed("date +%s%N"))
    machine.succeed("sleep 3; touch /tmp/stop; sleep 2")
    lines = machine.succeed("cat /tmp/load*").split("\n")
    answers = [l.split() for l in lines if l.strip()]
    failed = [a for a in answers if a[0] != "200"]
    assert not failed, f"{len(failed)} of {len(answers)} failed: {failed[:5]}\n{out}"
    heavy = [a for a in answers if a[1] == "heavy"]
    assert all(a[2] in (OLD, NEW) for a in heavy), [a for a in heavy if a[2] not in (OLD, NEW)][:5]
    late = [a for a in heavy if int(a[3]) > done_ns + 500_000_000]
    assert late and all(a[2] == NEW for a in late), late[:5]
    assert any(a[2] == OLD for a in heavy) and any(a[2] == NEW for a in heavy)
    print(f"model swap under load: {len(answers)} requests, 0 failed, {len(heavy)} heavy; switch took {(done_ns - switched_ns) / 1e9:.1f} s")

with subtest("the engines were rolled one by one, nothing else restarted"):
    log = machine.succeed("journalctl -u ssw-rollout -o cat")
    assert "rolling heavy-0 (pool heavy) to new-model" in log, log
    assert "rolling heavy-1 (pool heavy) to new-model" in log, log
    assert "[heavy-0] resumed" in log and "[heavy-1] resumed" in log, log
    assert "rolling light" not in log, log
    after = {u: pid(u) for u in before}
    assert after == before, f"restarted: {before} → {after}"
    machine.succeed(f"curl -s {GATEWAY}/v1/models/heavy | jq -e '[.replicas[].model] == [\"{NEW}\", \"{NEW}\"]'")
