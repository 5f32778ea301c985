# A burst beyond the heavy pool's max_queue gets 429 queue_full with Retry-After; light is unaffected.
start_all()
machine.wait_for_unit("ssw-gateway.service")
machine.wait_until_succeeds(f"curl -sf {OPS}/readyz", timeout=120)

with subtest("a burst fills the heavy queue"):
    for i in range(10):
        background(machine, chat_cmd("heavy", f"/tmp/burst-{i}"))
    machine.wait_until_succeeds(
        f"curl -s {OPS}/readyz | jq -e '.pools[] | select(.pool == \"heavy\") | .backlog >= 4'",
        timeout=30,
    )

with subtest("the next request gets 429 queue_full with Retry-After"):
    machine.succeed(chat_cmd("heavy", "/tmp/over", max_time=10))
    assert machine.succeed("cat /tmp/over.code") == "429", machine.succeed("cat /tmp/over.code /tmp/over")
    assert json.loads(machine.succeed("cat /tmp/over"))["error"]["code"] == "queue_full"
    assert "retry-after" in machine.succeed("cat /tmp/over.h").lower()

with subtest("the light pool still answers at once (its stubs are fast)"):
    machine.succeed(chat_cmd("light", "/tmp/light", max_time=10))
    assert machine.succeed("cat /tmp/light.code") == "200", machine.succeed("cat /tmp/light")
