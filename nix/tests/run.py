"""Tests of the builtins-only Nix functions under nix/, run with plain `nix-instantiate`.

- golden outputs: the A40 default topology and a stub topology (nix/tests/expected/*.json);
  `--update` rewrites them after a deliberate change;
- every bad input fails evaluation with a message naming the attribute;
- the NixOS module through the real module system (module.py): scenarios, docs blocks, option
  examples, planted defects;
- compose.yaml's configs reach the containers as written, and every generated Prometheus
  configuration, the alert rules (with their unit tests) and the dashboard's queries pass
  promtool (observability.py);
- every ssw config the functions generate (NixOS and compose flavours) passes
  `ssw check-config` for its role, unless `--no-ssw`.
"""

import json
import os
import subprocess
import sys
import tempfile

import module
import observability
from common import HERE, ROOT, failures, nix_eval, ok, passes


TOPOLOGIES = {
    "a40": "(import ./topology.nix).normalise {}",
    "stub": "(import ./topology.nix).normalise (import ./tests/stub-topology.nix)",
}


def golden(update):
    results = {}
    for name, expr in TOPOLOGIES.items():
        code, out, err = nix_eval(expr)
        ok(code == 0, f"{name} topology evaluates" + ("" if code == 0 else f": {err.strip()}"))
        if code:
            continue
        value = json.loads(out)
        results[name] = value
        path = os.path.join(HERE, "expected", f"{name}.json")
        text = json.dumps(value, indent=2, sort_keys=True) + "\n"
        if update or not os.path.exists(path):
            with open(path, "w") as f:
                f.write(text)
        with open(path) as f:
            ok(f.read() == text, f"{name} topology matches expected/{name}.json (python3 nix/tests/run.py --update after a deliberate change)")
    return results


def semantics(t):
    """Properties the golden files must have, stated independently of them."""
    a40 = t.get("a40")
    if a40:
        reps = {r["name"]: r for r in a40["replicas"]}
        ok(sorted(reps) == ["heavy-0", "heavy-1", "light-0", "light-1"], "A40: four replicas")
        for gpu in (0, 1):
            on = [r for r in reps.values() if r["gpu"] == gpu]
            ok(sorted(r["pool"] for r in on) == ["heavy", "light"], f"A40: GPU {gpu} runs one heavy and one light")
            ok(sum(r["gpuMemoryUtilization"] for r in on) <= 0.92, f"A40: GPU {gpu} memory fractions sum <= 0.92")
            ok(sorted(r["startAfter"] is None for r in on) == [False, True], f"A40: GPU {gpu} starts its vLLMs one after the other")
        for r in reps.values():
            args = r["vllmArgs"]
            ok("--enable-auto-tool-choice" in args and args[args.index("--tool-call-parser") + 1] == "hermes", f"{r['name']}: hermes tool calling")
            ok("--max-model-len" in args, f"{r['name']}: --max-model-len set")
            ok(("--reasoning-parser" in args) == (r["pool"] == "light"), f"{r['name']}: qwen3 reasoning parser only on light")
        ok(len({r["port"] for r in reps.values()}) == 4, "A40: distinct engine ports")
        ok(a40["ssw"]["gateway"]["pools"]["light"]["defaults"] == {"chat_template_kwargs": {"enable_thinking": False}}, "A40: light pool disables thinking by default")
        ok(len(a40["prometheus"]["scrapeConfigs"][1]["static_configs"]) == 4, "A40: Prometheus scrapes every engine")
        ok(len(a40["prometheus"]["scrapeConfigs"][2]["static_configs"]) == 4, "A40: Prometheus scrapes every worker")
        ports = [r["port"] for r in reps.values()] + [r["metricsPort"] for r in reps.values()]
        ok(len(set(ports)) == 8, "A40: engine and worker metrics ports all distinct")
    stub = t.get("stub")
    if stub:
        ok(stub["engine"] == "stub", "stub topology keeps engine = stub")
        ok({r["name"]: r["port"] for r in stub["replicas"]}["light-b"] == 9100, "stub: explicit port kept")
        ok(stub["ssw"]["gateway"]["pools"]["heavy"]["aliases"] == ["npc-boss"], "stub: alias reaches the gateway config")
        ok(stub["ssw"]["gateway"]["redis"]["url"] == "redis://127.0.0.1:6380", "stub: redis port reaches the configs")


MERGES = [
    # (what, settings, expression over the normalised topology `t`, expected JSON value)
    ("one field of a default pool changes, the rest of it and the other pools stay",
     '{ pools.heavy.aliases = [ "npc-boss" ]; }',
     "{ aliases = t.pools.heavy.aliases; model = t.pools.heavy.servedModel; light = t.pools.light.servedModel; }",
     {"aliases": ["npc-boss"], "model": "Qwen/Qwen2.5-14B-Instruct-AWQ", "light": "Qwen/Qwen3-8B-AWQ"}),
    ("a new servedModel also changes what the engine loads",
     '{ pools.heavy.servedModel = "org/new-14b"; }', "(builtins.head t.replicas).vllmArgs", None),
    ("null removes a default pool",
     '{ pools.light = null; replicas = { h = { pool = "heavy"; gpu = 0; }; }; }', "builtins.attrNames t.pools", ["heavy"]),
    ("a new pool is added beside the defaults",
     '{ pools.medium = { servedModel = "m"; gpuMemoryUtilization = 0.05; }; replicas = { h = { pool = "heavy"; gpu = 0; }; l = { pool = "light"; gpu = 1; }; m = { pool = "medium"; gpu = 1; }; }; }',
     "builtins.attrNames t.pools", ["heavy", "light", "medium"]),
    ("replicas replace the default layout",
     '{ gpus = [ 0 ]; replicas = { heavy-2 = { pool = "heavy"; gpu = 0; }; light-2 = { pool = "light"; gpu = 0; }; }; }',
     "map (r: r.name) t.replicas", ["heavy-2", "light-2"]),
    ("per-pool stub timing over the global one",
     '{ engine = "stub"; pools.heavy.stub.ttft = "3s"; }',
     "{ heavy = t.ssw.stubs.heavy-0.stub.ttft; light = t.ssw.stubs.light-0.stub.ttft; tpot = t.ssw.stubs.heavy-0.stub.tpot; }",
     {"heavy": "3s", "light": "20ms", "tpot": "5ms"}),
    ("a drain timeout in minutes gives the stop timeout drain + 15 s",
     '{ worker.drainTimeout = "2m"; }', "t.workerStopSeconds", 135),
    ("humantime units and leading zeros read as ssw reads them",
     '{ worker.drainTimeout = "1min 05secs"; }', "t.workerStopSeconds", 80),
    ("a pool scheduling by priority starts vLLM with --scheduling-policy priority and tells ssw",
     '{ pools.heavy.schedulingPolicy = "priority"; }',
     'let n = p: builtins.length (builtins.filter (a: a == "--scheduling-policy") (builtins.concatMap (r: if r.pool == p then r.vllmArgs else [ ]) t.replicas)); '
     'in { heavy = n "heavy"; light = n "light"; ssw = t.ssw.gateway.pools.heavy.scheduling_policy; }',
     {"heavy": 2, "light": 0, "ssw": "priority"}),
    ("tiers and a reserve of a pool, and tenants without their key files, reach the ssw configs",
     '{ pools.heavy = { priorityReserve = 0.25; tiers.flex = { maxQueue = 100; minShare = 0.05; }; }; '
     'tenants = { npc = { apiKeysFile = "/run/secrets/npc"; maxTier = "default"; maxConcurrent = 50; tokensPerDay = 1000000; }; }; }',
     "{ g = t.ssw.gateway.pools.heavy.tiers; r = t.ssw.workers.heavy-0.pools.heavy.priority_reserve; "
     "tenants = t.ssw.gateway.tenants; light = t.ssw.gateway.pools.light ? tiers; worker = t.ssw.workers.heavy-0 ? tenants; }",
     {"g": {"flex": {"max_queue": 100, "min_share": 0.05}}, "r": 0.25,
      "tenants": {"npc": {"max_tier": "default", "max_concurrent": 50, "tokens_per_day": 1000000}}, "light": False, "worker": False}),    ("a pool's LoRA adapters become vLLM's flags, the ssw configs' adapters and the stub's modules",
     '{ pools.heavy = { maxLoras = 2; adapterWait = "5s"; adapters = { vampire-personality = { source = "/var/lib/ssw/adapters/vp"; rank = 16; }; '
     'zombie-dialogue = { source = "org/zombie-dialogue"; rank = 32; }; werewolf-goals = { source = "/a/wg"; rank = 8; }; }; }; }',
     "let r = builtins.head (builtins.filter (r: r.pool == \"heavy\") t.replicas); a = r.vllmArgs; "
     "at = f: builtins.elemAt a (1 + (builtins.head (builtins.filter (i: builtins.elemAt a i == f) (builtins.genList (i: i) (builtins.length a))))); in "
     "{ lora = builtins.elem \"--enable-lora\" a; maxLoras = at \"--max-loras\"; rank = at \"--max-lora-rank\"; cpu = at \"--max-cpu-loras\"; "
     "modules = builtins.filter (x: builtins.match \".*=.*\" x != null) a; "
     "ssw = t.ssw.gateway.pools.heavy.adapters.zombie-dialogue; wait = t.ssw.workers.heavy-0.pools.heavy.adapter_wait; "
     "light = builtins.elem \"--enable-lora\" (builtins.head (builtins.filter (r: r.pool == \"light\") t.replicas)).vllmArgs; "
     "env = r.engineEnvironment; }",
     {"lora": True, "maxLoras": "2", "rank": "32", "cpu": "3",
      "modules": ["vampire-personality=/var/lib/ssw/adapters/vp", "werewolf-goals=/a/wg", "zombie-dialogue=org/zombie-dialogue"],
      "ssw": {"source": "org/zombie-dialogue", "rank": 32}, "wait": "5s", "light": False,
      "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}}),
    ("a pool with LoRA on and no adapter yet gets vLLM's LoRA flags and runtime loading",
     '{ pools.heavy = { lora = true; maxLoraRank = 32; }; }',
     "let r = builtins.head (builtins.filter (r: r.pool == \"heavy\") t.replicas); in { args = builtins.filter (x: builtins.match \"--.*lora.*\" x != null) r.vllmArgs; env = r.engineEnvironment; }",
     {"args": ["--enable-lora", "--max-loras", "--max-lora-rank", "--max-cpu-loras"], "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}}),
    ("a route's variant may be an adapter of its pool",
     '{ pools.heavy.adapters.vp = { source = "/a"; rank = 16; }; routes.vp-ab.variants = [ { pool = "heavy"; weight = 9; } { pool = "heavy"; adapter = "vp"; weight = 1; } ]; }',
     "t.ssw.gateway.routes.vp-ab.variants",
     [{"pool": "heavy", "weight": 9}, {"pool": "heavy", "adapter": "vp", "weight": 1}]),
]


def merges():
    for what, settings, expr, expected in MERGES:
        code, out, err = nix_eval(f"let t = (import ./topology.nix).normalise ({settings}); in {expr}")
        got = json.loads(out) if code == 0 else err.strip()[-300:]
        if expected is None:  # the servedModel case: the engine loads the new model
            good = code == 0 and got[0] == "org/new-14b" and got[got.index("--served-model-name") + 1] == "org/new-14b"
        else:
            good = got == expected
        ok(good, f"settings merge: {what}" + ("" if good else f" (got {got})"))


BAD = [
    ("unknown pool on a replica", '{ replicas = { x = { pool = "medium"; gpu = 0; }; }; }', "replicas.x.pool: unknown pool \"medium\""),
    ("unknown GPU on a replica", '{ replicas = { heavy-0 = { pool = "heavy"; gpu = 0; }; light-0 = { pool = "light"; gpu = 7; }; }; }', "replicas.light-0.gpu: GPU 7 is not in gpus"),
    ("GPU memory over-committed", '{ pools = { heavy = { servedModel = "a"; gpuMemoryUtilization = 0.6; }; light = { servedModel = "b"; gpuMemoryUtilization = 0.4; }; }; }', "GPU 0 is over-committed: replicas heavy-0 (pools.heavy.gpuMemoryUtilization = 0.6) + light-0 (pools.light.gpuMemoryUtilization = 0.4) = 1 > maxGpuMemoryUtilization 0.92"),
    ("memory fraction out of range", '{ pools = { heavy = { servedModel = "a"; gpuMemoryUtilization = 1.5; }; light = null; }; replicas = { h = { pool = "heavy"; gpu = 0; }; }; }', "pools.heavy.gpuMemoryUtilization: must be a fraction"),
    ("duplicate engine ports", '{ replicas = { heavy-0 = { pool = "heavy"; gpu = 0; port = 9000; }; light-0 = { pool = "light"; gpu = 1; port = 9000; }; }; }', "replicas.<name>.port / metricsPort, gateway.listen / opsListen: duplicate port 9000"),
    ("ops port taken by a worker", '{ ports.workerMetricsBase = 9300; }', "duplicate port 9300"),
    ("duplicate model names", '{ pools = { heavy = { servedModel = "m"; gpuMemoryUtilization = 0.3; }; light = { servedModel = "m"; gpuMemoryUtilization = 0.3; }; }; }', "duplicate model name"),
    ("alias that names another pool", '{ pools = { heavy = { servedModel = "a"; aliases = [ "light" ]; gpuMemoryUtilization = 0.3; }; light = { servedModel = "b"; gpuMemoryUtilization = 0.3; }; }; }', "duplicate model name (pool name, alias or servedModel) \"light\""),
    ("every pool removed", "{ pools = { heavy = null; light = null; }; replicas = { }; }", "pools: at least one pool is needed"),
    ("pool that is not an attribute set", '{ pools.heavy = "big"; }', "pools.heavy: must be an attribute set (or null to remove the pool)"),
    ("drain timeout that is not a duration", '{ worker.drainTimeout = "1 fortnight"; }', "worker.drainTimeout: must be a duration"),
    ("secret as a Nix path literal", "{ gateway.apiKeysFile = ./run.py; }", "gateway.apiKeysFile: must be an absolute path outside the Nix store"),
    ("secret in the Nix store", '{ redis.passwordFile = builtins.storeDir + "/x-pw"; }', "redis.passwordFile: must be an absolute path outside the Nix store"),
    ("pool without replicas", '{ pools = { heavy = { servedModel = "a"; gpuMemoryUtilization = 0.3; }; light = { servedModel = "b"; gpuMemoryUtilization = 0.3; }; spare = { servedModel = "c"; gpuMemoryUtilization = 0.1; }; }; }', "pools.spare: no replica serves this pool"),
    ("new pool without servedModel", '{ pools.medium = { }; replicas.m = { pool = "medium"; gpu = 0; }; }', "pools.medium.servedModel: is required"),
    ("unknown engine", '{ engine = "tgi"; }', "engine: must be \"vllm\" or \"stub\""),
    ("unknown scheduling policy", '{ pools.heavy.schedulingPolicy = "lottery"; }', "pools.heavy.schedulingPolicy: must be \"fcfs\" or \"priority\""),
    ("tenant without keys", '{ tenants.npc.requestsPerMinute = 60; }', "tenants.npc.apiKeysFile: is required"),
    ("tenant with an unknown setting", '{ tenants.npc = { apiKeysFile = "/k"; rpm = 60; }; }', "tenants.npc.rpm: unknown setting"),
    ("adapter with a rank vLLM refuses", '{ pools.heavy.adapters.vp = { source = "/a"; rank = 12; }; }', "pools.heavy.adapters.vp.rank: must be one of vLLM's ranks"),
    ("CPU cache smaller than the GPU slots", '{ pools.heavy = { maxLoras = 4; maxCpuLoras = 2; }; }', "pools.heavy.maxCpuLoras: must be null or an integer of at least maxLoras"),
    ("adapter with an unknown setting", '{ pools.heavy.adapters.vp = { source = "/a"; rank = 16; alpha = 32; }; }', "pools.heavy.adapters.vp.alpha: unknown setting"),
    ("route variant naming an adapter its pool lacks", '{ pools.heavy.adapters.vp = { source = "/a"; rank = 16; }; routes.r.variants = [ { pool = "heavy"; weight = 1; } { pool = "light"; adapter = "vp"; weight = 1; } ]; }', "routes.r.variants.1.adapter: pool \"light\" has no adapter \"vp\""),
    ("LoRA rank below an adapter's", '{ pools.heavy = { maxLoraRank = 8; adapters.vp = { source = "/a"; rank = 16; }; }; }', "pools.heavy.maxLoraRank: must be null or one of vLLM's ranks"),
    ("LoRA switch that is not a boolean", '{ pools.heavy.lora = "yes"; }', "pools.heavy.lora: must be null or a boolean"),
    ("adapter named like a pool", '{ pools.heavy.adapters.light = { source = "/a"; rank = 16; }; }', "duplicate model name"),
    ("tenant with an unknown tier", '{ tenants.npc = { apiKeysFile = "/k"; maxTier = "gold"; }; }', "tenants.npc.maxTier: must be one of priority, default, flex"),
    ("tenant keys in the Nix store", '{ tenants.npc.apiKeysFile = ./run.py; }', "tenants.npc.apiKeysFile: must be an absolute path outside the Nix store"),
    ("default tenant with keys of its own", '{ tenants.default.apiKeysFile = "/k"; }', "tenants.default.apiKeysFile: the default tenant's keys are gateway.apiKeysFile"),
    ("unknown tier of a pool", '{ pools.heavy.tiers.gold.maxQueue = 5; }', "pools.heavy.tiers.gold: unknown tier"),
    ("unknown tier setting", '{ pools.heavy.tiers.flex.max_queue = 5; }', "pools.heavy.tiers.flex.max_queue: unknown setting"),
    ("priority reserve out of range", '{ pools.heavy.priorityReserve = 1; }', "pools.heavy.priorityReserve: must be a fraction in [0, 1)"),
    ("bad replica name", '{ replicas = { "heavy 0" = { pool = "heavy"; gpu = 0; }; light-0 = { pool = "light"; gpu = 0; }; }; }', "replicas.heavy 0: replica names use"),
]


def bad_inputs():
    for what, settings, expected in BAD:
        code, _, err = nix_eval(f"(import ./topology.nix).normalise ({settings})")
        hit = code != 0 and expected in err
        ok(hit, f"bad input fails naming the attribute: {what}" + ("" if hit else f" (got: {err.strip()[-300:]})"))


def ssw_configs(t, modules=None):
    ssw = os.environ.get("SSW_BIN") or os.path.join(ROOT, "target", "debug", "ssw")
    if not os.path.exists(ssw):
        ok(False, f"ssw binary for check-config: {ssw} missing (cargo build, or set SSW_BIN)")
        return
    compose = observability.compose_configs()
    cases = []
    for name, topo in t.items():
        cases.append((f"{name} gateway", topo["ssw"]["gateway"], "gateway"))
        cases += [(f"{name} worker {w}", c, "worker") for w, c in topo["ssw"]["workers"].items()]
        cases += [(f"{name} stub {w}", c, "stub") for w, c in topo["ssw"]["stubs"].items()]
    for flavour, configs in compose.items():
        for cname, content in configs.items():
            if cname.startswith("prometheus"):
                continue
            role = cname.split("-")[0]
            cases.append((f"compose {flavour} {cname}", json.loads(content), role))
    for mname, m in (modules or {}).items():
        for unit, svc in module.ssw_units(m["systemd"]["services"]).items():
            start = svc["serviceConfig"]["ExecStart"]
            cases.append((f"module {mname} {unit}", module.unit_config(svc), start.split()[1]))
    with tempfile.TemporaryDirectory() as d:
        for i, (what, config, role) in enumerate(cases):
            path = os.path.join(d, f"c{i}.json")
            with open(path, "w") as f:
                json.dump(config, f)
            p = subprocess.run([ssw, "check-config", path, "--role", role], capture_output=True, text=True)
            ok(p.returncode == 0, f"ssw check-config --role {role}: {what}" + ("" if p.returncode == 0 else f" ({p.stderr.strip()[-300:]})"))


def main():
    update = "--update" in sys.argv
    t = golden(update)
    semantics(t)
    merges()
    bad_inputs()
    modules = module.run()
    observability.run(modules)
    if "--no-ssw" not in sys.argv:
        ssw_configs(t, modules)
    print(f"nix: {len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


main()
