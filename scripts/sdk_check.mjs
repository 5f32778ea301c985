// Drives a running gateway with the official `openai` Node SDK: completions and responses
// (streamed and not), a two-turn conversation through previous_response_id whose second turn
// lands on the other replica, retrieve and delete. Exits non-zero on the first problem.
//
// Usage: node sdk_check.mjs http://127.0.0.1:8080/v1, from a directory whose node_modules holds
// openai (scripts/sdk-check.sh copies it beside the SDK it installs).
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2] ?? "http://127.0.0.1:8080/v1", apiKey: "unused", maxRetries: 0 });
let passed = 0;
function check(cond, what) {
  if (!cond) {
    console.log(`sdk-node: ${passed} passed, 1 failed`);
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
  passed += 1;
  console.log(`ok: ${what}`);
}

const c = await client.completions.create({ model: "light", prompt: "The innkeeper said", max_tokens: 4 });
check(c.object === "text_completion" && c.choices[0].finish_reason === "length" && c.usage.completion_tokens === 4,
  "completions.create");
let text = "";
let usage = null;
for await (const chunk of await client.completions.create({ model: "heavy", prompt: "Hail", max_tokens: 3, stream: true,
  stream_options: { include_usage: true } })) {
  text += chunk.choices[0]?.text ?? "";
  usage = chunk.usage ?? usage;
}
check(text.length > 0 && usage?.completion_tokens === 3, "completions.create stream with usage");

const r = await client.responses.create({ model: "light", input: "Greet the traveller", max_output_tokens: 4 });
check(r.id.startsWith("resp_") && r.status === "incomplete" && r.output_text.length > 0 && r.usage.output_tokens === 4,
  "responses.create");
const events = [];
for await (const e of await client.responses.create({ model: "heavy", input: "Report", stream: true })) {
  events.push(e);
}
const types = events.map((e) => e.type);
const deltas = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
const done = events.at(-1)?.response;
check(types[0] === "response.created" && types.at(-1) === "response.completed"
  && events.every((e, i) => e.sequence_number === i)
  && done?.output?.[0]?.content?.[0]?.text === deltas && done.usage.output_tokens > 0,
  `responses.create stream: typed events, deltas add up (${types.join(",")})`);

const tools = [{ type: "function", name: "dock_ship", parameters: { type: "object", properties: { bay: { type: "integer" } } } }];
const t = await client.responses.create({ model: "heavy", input: "Dock the freighter", tools, tool_choice: "required" });
check(t.output[0].type === "function_call" && t.output[0].name === "dock_ship", "responses.create with a tool -> function_call item");

const { data: first, response: firstRaw } = await client.responses.create({ model: "light", input: "My name is Vex" }).withResponse();
const firstWorker = firstRaw.headers.get("x-ssw-worker");
let landed = null;
for (let i = 0; i < 30 && !landed; i++) {
  const { data, response } = await client.responses
    .create({ model: "light", input: "What is my name?", previous_response_id: first.id })
    .withResponse();
  if (response.headers.get("x-ssw-worker") !== firstWorker) landed = data;
}
check(landed && landed.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens,
  `two-turn conversation: the second turn on another replica (${firstWorker} first) carries the first`);

const got = await client.responses.retrieve(first.id);
check(got.id === first.id && got.output_text === first.output_text, "responses.retrieve");
await client.responses.delete(first.id);
try {
  await client.responses.retrieve(first.id);
  check(false, "a deleted response is gone");
} catch (e) {
  check(e instanceof OpenAI.NotFoundError, "responses.delete, then retrieve -> NotFoundError");
}
console.log(`sdk-node: ${passed} passed, 0 failed`);
