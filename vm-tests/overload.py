# A burst beyond the heavy pool's max_queue gets 429 queue_full with Retry-After; light is unaffected.
import json

start_all()
machine.wait_for_unit("ssw-gateway.service")
machine.wait_until_succeeds("curl -sf http://127.0.0.1:8080/readyz", timeout=120)

body = '{"model":"heavy","messages":[{"role":"user","content":"x"}]}'
with subtest("a burst fills the heavy queue"):
    for i in range(10):
        machine.succeed(
            f"(curl -s -o /dev/null -m 60 -H 'content-type: application/json' -d '{body}' "
            f"http://127.0.0.1:8080/v1/chat/completions &) "
        )
    machine.wait_until_succeeds(
        "curl -s http://127.0.0.1:8080/readyz | jq -e '.pools[] | select(.pool == \"heavy\") | .backlog >= 4'",
        timeout=30,
    )

with subtest("the next request gets 429 queue_full with Retry-After"):
    code = machine.succeed(
        f"curl -s -D /tmp/h -o /tmp/err -w '%{{http_code}}' -H 'content-type: application/json' "
        f"-d '{body}' http://127.0.0.1:8080/v1/chat/completions"
    )
    assert code == "429", code
    assert json.loads(machine.succeed("cat /tmp/err"))["error"]["code"] == "queue_full"
    assert "retry-after" in machine.succeed("cat /tmp/h").lower()

with subtest("the light pool still answers"):
    machine.succeed(
        "curl -sf -m 10 -H 'content-type: application/json' "
        "-d '{\"model\":\"light\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}' "
        "http://127.0.0.1:8080/v1/chat/completions"
    )
