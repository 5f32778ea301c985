# Routing of heavy/light by model and by header, and streaming, through the NixOS units.
import json

HEAVY = "Qwen/Qwen2.5-14B-Instruct-AWQ"
LIGHT = "Qwen/Qwen3-8B-AWQ"


def chat(model, header=None, stream=False):
    body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    h = f"-H 'x-ssw-pool: {header}'" if header else ""
    return machine.succeed(
        f"curl -sf -D /tmp/headers -H 'content-type: application/json' {h} "
        f"-d '{body}' http://127.0.0.1:8080/v1/chat/completions"
    )


start_all()
machine.wait_for_unit("redis-ssw.service")
machine.wait_for_unit("ssw-gateway.service")
machine.wait_until_succeeds(f"curl -sf {OPS}/readyz", timeout=120)

with subtest("model names route to their pool"):
    for model, served in [("heavy", HEAVY), (HEAVY, HEAVY), ("light", LIGHT), (LIGHT, LIGHT)]:
        answer = json.loads(chat(model))
        assert answer["model"] == served, answer
        assert answer["choices"][0]["message"]["content"].startswith(f"[{served}]"), answer
        assert "x-ssw-worker" in machine.succeed("cat /tmp/headers")

with subtest("the x-ssw-pool header wins over the model"):
    answer = json.loads(chat(HEAVY, header="light"))
    assert answer["model"] == LIGHT, answer

with subtest("unknown models get 404 model_not_found"):
    code = machine.succeed(
        "curl -s -o /tmp/err -w '%{http_code}' -H 'content-type: application/json' "
        "-d '{\"model\":\"gpt-9\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}' "
        "http://127.0.0.1:8080/v1/chat/completions"
    )
    assert code == "404", code
    assert json.loads(machine.succeed("cat /tmp/err"))["error"]["code"] == "model_not_found"

with subtest("streaming ends with [DONE]"):
    out = chat("light", stream=True)
    assert out.rstrip().endswith("data: [DONE]"), out
    assert '"role":"assistant"' in out
