"""Drives a running gateway with the official `openai` SDK: chat, stream with usage, tools
(streamed and not), completions (streamed and not), responses (streamed and not, with a tool, a
two-turn conversation whose second turn lands on the other replica, retrieve and delete), and 200
concurrent requests. Exits non-zero on the first problem.

Usage: python3 scripts/sdk_check.py http://127.0.0.1:8080/v1
"""

import asyncio
import json
import sys

import openai

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
TOOLS = [{
    "type": "function",
    "function": {
        "name": "dock_ship",
        "description": "Dock a ship at a bay",
        "parameters": {"type": "object", "properties": {"bay": {"type": "integer"}}, "required": ["bay"]},
    },
}]


PASSED = []


def check(cond, what):
    if not cond:
        print(f"sdk: {len(PASSED)} passed, 1 failed")
        raise SystemExit(f"FAILED: {what}")
    PASSED.append(what)
    print(f"ok: {what}")


def sync_checks():
    client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
    models = [m.id for m in client.models.list().data]
    check(models == ["heavy", "light"], f"models.list -> {models}")

    r = client.chat.completions.create(model="heavy", messages=[{"role": "user", "content": "Status report"}])
    check(r.choices[0].message.content.startswith("[Qwen/Qwen2.5-14B-Instruct-AWQ]"), "chat (heavy)")
    check(r.usage.completion_tokens > 0, "chat usage")

    raw = client.chat.completions.with_raw_response.create(model="light", messages=[{"role": "user", "content": "hi"}])
    check(raw.headers["x-ssw-pool"] == "light" and raw.headers["x-ssw-worker"].startswith("light-"), "routing headers")

    stream = client.chat.completions.create(
        model="light", messages=[{"role": "user", "content": "Tell a story"}],
        stream=True, stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    check(text.startswith("[Qwen/Qwen3-8B-AWQ]") and finish == "stop", "stream text and finish_reason")
    check(usage is not None and usage.completion_tokens > 0, "stream usage chunk")

    c = client.completions.create(model="light", prompt="The innkeeper said", max_tokens=4)
    check(c.object == "text_completion" and c.choices[0].text.startswith("[Qwen/Qwen3-8B-AWQ]")
          and c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 4, "completions.create")
    stream = client.completions.create(model="heavy", prompt="Hail", max_tokens=3, stream=True,
                                       stream_options={"include_usage": True})
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
    check(text.startswith("[Qwen/Qwen2.5-14B-Instruct-AWQ]") and finish == "length"
          and usage is not None and usage.completion_tokens == 3, "completions.create stream with usage")

    r = client.chat.completions.create(
        model="heavy", messages=[{"role": "user", "content": "Dock at bay 7"}], tools=TOOLS, tool_choice="required",
    )
    call = r.choices[0].message.tool_calls[0]
    check(call.function.name == "dock_ship" and json.loads(call.function.arguments), "tool call")

    stream = client.chat.completions.create(
        model="heavy", messages=[{"role": "user", "content": "Dock"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "dock_ship"}}, stream=True,
    )
    name, args = None, ""
    for chunk in stream:
        for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
    check(name == "dock_ship" and json.loads(args), "streamed tool call")

    try:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        check(False, "unknown model raises")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", "unknown model -> NotFoundError model_not_found")


def responses_checks():
    client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0)
    r = client.responses.create(model="light", input="Greet the traveller", max_output_tokens=4)
    check(r.id.startswith("resp_") and r.status == "incomplete" and r.output_text.startswith("[")
          and r.usage.output_tokens == 4 and r.service_tier == "default", "responses.create")

    events = []
    with client.responses.create(model="heavy", input="Report", instructions="Be terse", stream=True) as s:
        for e in s:
            events.append(e)
    types = [e.type for e in events]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response if events else None
    check(types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
          and [e.sequence_number for e in events] == list(range(len(events)))
          and done is not None and done.output_text == deltas and done.usage.output_tokens > 0,
          f"responses.create stream: typed events, deltas add up to the completed response ({types})")

    tools = [{"type": "function", "name": "dock_ship", "description": "Dock a ship at a bay",
              "parameters": TOOLS[0]["function"]["parameters"]}]
    r = client.responses.create(model="heavy", input="Dock the freighter", tools=tools, tool_choice="required")
    call = r.output[0]
    check(call.type == "function_call" and call.name == "dock_ship" and json.loads(call.arguments),
          "responses.create with a tool -> function_call item")
    r2 = client.responses.create(model="heavy", previous_response_id=r.id, tools=tools,
                                 input=[{"type": "function_call_output", "call_id": call.call_id, "output": "docked at bay 3"}])
    check(r2.status == "completed" and r2.output_text, "responses.create: the tool's output sent back through previous_response_id")

    raw = client.responses.with_raw_response.create(model="light", input="My name is Vex")
    first, first_worker = raw.parse(), raw.headers["x-ssw-worker"]
    landed = None
    for _ in range(30):
        raw = client.responses.with_raw_response.create(model="light", input="What is my name?",
                                                         previous_response_id=first.id)
        if raw.headers["x-ssw-worker"] != first_worker:
            landed = raw.parse()
            break
    check(landed is not None and landed.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens,
          f"two-turn conversation: the second turn on another replica ({first_worker} first) carries the first")

    got = client.responses.retrieve(first.id)
    check(got.id == first.id and got.output_text == first.output_text, "responses.retrieve")
    client.responses.delete(first.id)
    try:
        client.responses.retrieve(first.id)
        check(False, "a deleted response is gone")
    except openai.NotFoundError:
        check(True, "responses.delete, then retrieve -> NotFoundError")


async def concurrent_checks(n=200):
    client = openai.AsyncOpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=60)

    async def one(i):
        model = "heavy" if i % 3 == 0 else "light"
        if i % 2:
            r = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"npc {i}"}])
            return r.choices[0].finish_reason
        s = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"npc {i}"}], stream=True)
        finish = None
        async for c in s:
            if c.choices and c.choices[0].finish_reason:
                finish = c.choices[0].finish_reason
        return finish

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    check(not errors, f"{n} concurrent requests without errors ({errors[:3]})")
    check(all(r == "stop" for r in results), f"{n} concurrent requests all finished")


sync_checks()
responses_checks()
asyncio.run(concurrent_checks())
print(f"sdk: {len(PASSED)} passed, 0 failed")
