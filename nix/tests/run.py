"""Tests of the builtins-only Nix functions under nix/, run with plain `nix-instantiate`.

- golden outputs: the A40 default topology and a stub topology (nix/tests/expected/*.json);
  `--update` rewrites them after a deliberate change;
- every bad input fails evaluation with a message naming the attribute;
- every ssw config the functions generate (NixOS and compose flavours) passes
  `ssw check-config` for its role, unless `--no-ssw`.
"""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
NIX = os.path.dirname(HERE)
ROOT = os.path.dirname(NIX)
failures = []


def nix_eval(expr):
    p = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--readonly-mode", "-E", expr],
        cwd=NIX, capture_output=True, text=True,
    )
    return p.returncode, p.stdout, p.stderr


passes = []


def ok(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    (passes if cond else failures).append(what)


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
            ok(sum(r["gpuMemoryUtilization"] for r in on) <= 0.95, f"A40: GPU {gpu} memory fractions sum <= 0.95")
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


BAD = [
    ("unknown pool on a replica", '{ replicas = { x = { pool = "medium"; gpu = 0; }; }; }', "replicas.x.pool: unknown pool \"medium\""),
    ("unknown GPU on a replica", '{ replicas = { heavy-0 = { pool = "heavy"; gpu = 0; }; light-0 = { pool = "light"; gpu = 7; }; }; }', "replicas.light-0.gpu: GPU 7 is not in gpus"),
    ("GPU memory over-committed", '{ pools = { heavy = { servedModel = "a"; gpuMemoryUtilization = 0.6; }; light = { servedModel = "b"; gpuMemoryUtilization = 0.4; }; }; }', "GPU 0 is over-committed: replicas heavy-0 (pools.heavy.gpuMemoryUtilization = 0.6) + light-0 (pools.light.gpuMemoryUtilization = 0.4) = 1 > maxGpuMemoryUtilization 0.95"),
    ("memory fraction out of range", '{ pools = { heavy = { servedModel = "a"; gpuMemoryUtilization = 1.5; }; }; replicas = { h = { pool = "heavy"; gpu = 0; }; }; }', "pools.heavy.gpuMemoryUtilization: must be a fraction"),
    ("duplicate engine ports", '{ replicas = { heavy-0 = { pool = "heavy"; gpu = 0; port = 9000; }; light-0 = { pool = "light"; gpu = 1; port = 9000; }; }; }', "replicas.<name>.port / metricsPort: duplicate port 9000"),
    ("duplicate model names", '{ pools = { heavy = { servedModel = "m"; gpuMemoryUtilization = 0.3; }; light = { servedModel = "m"; gpuMemoryUtilization = 0.3; }; }; }', "duplicate model name"),
    ("alias that names another pool", '{ pools = { heavy = { servedModel = "a"; aliases = [ "light" ]; gpuMemoryUtilization = 0.3; }; light = { servedModel = "b"; gpuMemoryUtilization = 0.3; }; }; }', "duplicate model name (pool name, alias or servedModel) \"light\""),
    ("empty pools", "{ pools = { }; replicas = { }; }", "pools: at least one pool is needed"),
    ("pool without replicas", '{ pools = { heavy = { servedModel = "a"; gpuMemoryUtilization = 0.3; }; light = { servedModel = "b"; gpuMemoryUtilization = 0.3; }; spare = { servedModel = "c"; gpuMemoryUtilization = 0.1; }; }; }', "pools.spare: no replica serves this pool"),
    ("pool without servedModel", "{ pools = { heavy = { }; }; }", "pools.heavy.servedModel: is required"),
    ("unknown engine", '{ engine = "tgi"; }', "engine: must be \"vllm\" or \"stub\""),
    ("bad replica name", '{ replicas = { "heavy 0" = { pool = "heavy"; gpu = 0; }; light-0 = { pool = "light"; gpu = 0; }; }; }', "replicas.heavy 0: replica names use"),
]


def bad_inputs():
    for what, settings, expected in BAD:
        code, _, err = nix_eval(f"(import ./topology.nix).normalise ({settings})")
        hit = code != 0 and expected in err
        ok(hit, f"bad input fails naming the attribute: {what}" + ("" if hit else f" (got: {err.strip()[-300:]})"))


MODULE_CASES = {
    "default": "{}",
    "stub": '{ settings = { engine = "stub"; grafana = { enable = true; secretKeyFile = "/run/secrets/grafana"; }; }; }',
    "secrets": '{ settings = { redis.passwordFile = "/run/secrets/redis"; gateway.apiKeysFile = "/run/secrets/keys"; }; extra.openFirewall = true; }',
    "gpu host": '{ settings = { redis.host = "10.0.0.5"; gpus = [ 0 ]; replicas = { heavy-2 = { pool = "heavy"; gpu = 0; }; light-2 = { pool = "light"; gpu = 0; }; }; }; roles = { redis = false; gateway = false; }; }',
}


def module():
    """The NixOS module's mapping, evaluated with a stand-in lib (nix/tests/module-eval.nix)."""
    out = {}
    for name, args in MODULE_CASES.items():
        code, text, err = nix_eval(f"(import ./tests/module-eval.nix {args}).config")
        ok(code == 0, f"module evaluates: {name}" + ("" if code == 0 else f" ({err.strip()[-400:]})"))
        if code == 0:
            out[name] = json.loads(text)
    d = out.get("default")
    if d:
        cs = d["virtualisation"]["oci-containers"]["containers"]
        ok(sorted(cs) == ["ssw-vllm-heavy-0", "ssw-vllm-heavy-1", "ssw-vllm-light-0", "ssw-vllm-light-1"], "module: one vLLM container per replica")
        for n, c in cs.items():
            gpu = n[-1]
            ok(c["devices"] == [f"nvidia.com/gpu={gpu}"], f"module: {n} pinned to GPU {gpu} through CDI")
            ok(all(p.startswith("127.0.0.1:") for p in c["ports"]), f"module: {n} port bound to 127.0.0.1")
            ok("--ipc=host" in c["extraOptions"] and c["podman"]["sdnotify"] == "healthy", f"module: {n} --ipc=host, ready when healthy")
            ok(any(v.endswith(":/root/.cache/huggingface") for v in c["volumes"]) and any(v.endswith(":/root/.cache/vllm") for v in c["volumes"]), f"module: {n} HF and compile caches on volumes")
        ok(cs["ssw-vllm-light-0"]["dependsOn"] == ["ssw-vllm-heavy-0"] and cs["ssw-vllm-heavy-0"]["dependsOn"] == [], "module: vLLMs on one GPU start one after the other")
        ok(d["hardware"]["nvidia-container-toolkit"]["enable"] is True, "module: NVIDIA container toolkit on with vLLM")
        svc = d["systemd"]["services"]
        ok(sorted(svc) == ["ssw-gateway", "ssw-worker-heavy-0", "ssw-worker-heavy-1", "ssw-worker-light-0", "ssw-worker-light-1"], f"module: gateway and one worker unit per replica ({sorted(svc)})")
        w = svc["ssw-worker-light-1"]
        ok("podman-ssw-vllm-light-1.service" in w["after"] and "redis-ssw.service" in w["after"], "module: a worker starts after its container and Redis")
        sc = w["serviceConfig"]
        ok(sc["DynamicUser"] and sc["Restart"] == "on-failure" and sc["ProtectSystem"] == "strict" and sc["NoNewPrivileges"], "module: hardened DynamicUser units restarting on failure")
        ok(sc["TimeoutStopSec"] == "75s", "module: worker stop timeout covers its drain")
        ok("ssw check-config $out --role worker" in built(sc["ExecStart"]).get("checks", ""), "module: worker config checked at build time")
        ok(d["services"]["redis"]["servers"]["ssw"]["port"] == 6379 and d["services"]["redis"]["servers"]["ssw"]["save"] == [], "module: Redis without persistence on 6379")
        jobs = [j["job_name"] for j in d["services"]["prometheus"]["scrapeConfigs"]]
        ok(jobs == ["ssw-gateway", "vllm", "ssw-workers"], f"module: Prometheus scrapes the gateway, the engines and the workers ({jobs})")
        ok(d["services"]["prometheus"]["ruleFiles"][0].endswith("alerts.yml"), "module: alert rules loaded")
        ok(sc["Type"] == "notify" and sc["WatchdogSec"] == "30s", "module: worker units use sd_notify and a watchdog")
        ok(svc["ssw-gateway"]["serviceConfig"]["Type"] == "notify", "module: gateway unit uses sd_notify")
        gpu_exporters = sorted(n for n, v in svc.items() if re_config(v["serviceConfig"]["ExecStart"]).get("worker", {}).get("gpu_metrics") == "configured")
        ok(gpu_exporters == ["ssw-worker-heavy-0", "ssw-worker-heavy-1"], f"module: one GPU exporter per GPU ({gpu_exporters})")
        ok(svc["ssw-worker-heavy-0"]["serviceConfig"]["PrivateDevices"] is False and svc["ssw-worker-light-0"]["serviceConfig"]["PrivateDevices"] is True, "module: only GPU exporters see the GPU device nodes")
        ok(d["networking"]["firewall"]["allowedTCPPorts"] == [], "module: firewall closed by default")
        ok(d["boot"]["kernel"]["sysctl"]["net.core.somaxconn"] == 65535, "module: deep accept queue for bursts of connections")
    st = out.get("stub")
    if st:
        ok(st.get("virtualisation", {}).get("oci-containers", {}).get("containers", {}) == {}, "module stub: no containers")
        svc = st["systemd"]["services"]
        ok(sorted(k for k in svc if k.startswith("ssw-stub-")) == ["ssw-stub-heavy-0", "ssw-stub-heavy-1", "ssw-stub-light-0", "ssw-stub-light-1"], "module stub: ssw stub units replace vLLM")
        ok("ssw-stub-heavy-0.service" in svc["ssw-worker-heavy-0"]["after"], "module stub: workers start after their stub")
        ok("hardware" not in st or not st["hardware"].get("nvidia-container-toolkit", {}).get("enable"), "module stub: no GPU toolkit")
        gf = st["services"]["grafana"]
        ok(gf["provision"]["dashboards"]["settings"]["providers"][0]["options"]["path"].endswith("-observability"), "module: Grafana provisions the dashboard")
        ok(gf["settings"]["security"]["secret_key"] == "$__file{/run/secrets/grafana}", "module: Grafana secret key from a file")
    se = out.get("secrets")
    if se:
        g = se["systemd"]["services"]["ssw-gateway"]["serviceConfig"]
        ok(sorted(g["LoadCredential"]) == ["api-keys:/run/secrets/keys", "redis-password:/run/secrets/redis"], "module secrets: gateway loads both credentials")
        conf = re_config(g["ExecStart"])
        ok(conf.get("redis", {}).get("password_file") == "/run/credentials/ssw-gateway.service/redis-password", "module secrets: config points at the unit's credential")
        ok(conf.get("gateway", {}).get("api_keys_file") == "/run/credentials/ssw-gateway.service/api-keys", "module secrets: api keys from the credential")
        ok(se["services"]["redis"]["servers"]["ssw"]["requirePassFile"] == "/run/secrets/redis", "module secrets: Redis requires the password")
        ok(se["networking"]["firewall"]["allowedTCPPorts"] == [8080], "module secrets: openFirewall opens the gateway port")
        w = se["systemd"]["services"]["ssw-worker-heavy-0"]["serviceConfig"]
        ok(w["LoadCredential"] == ["redis-password:/run/secrets/redis"], "module secrets: workers load only the Redis password")
    gh = out.get("gpu host")
    if gh:
        svc = gh["systemd"]["services"]
        ok(sorted(svc) == ["ssw-worker-heavy-2", "ssw-worker-light-2"], f"module GPU host: workers only ({sorted(svc)})")
        ok("redis" not in gh.get("services", {}) or "servers" not in gh["services"]["redis"], "module GPU host: no local Redis")
        conf = re_config(svc["ssw-worker-heavy-2"]["serviceConfig"]["ExecStart"])
        ok(conf["redis"]["url"] == "redis://10.0.0.5:6379", "module GPU host: workers use the remote Redis")
    return out


def built(exec_start):
    """What the stand-in runCommand recorded for the config file an ExecStart passes."""
    _, _, recorded = exec_start.partition("#")
    return json.loads(recorded) if recorded else {}


def re_config(exec_start):
    """The config a unit's ExecStart passes."""
    return built(exec_start).get("config", {})


def ssw_configs(t, modules=None):
    ssw = os.environ.get("SSW_BIN") or os.path.join(ROOT, "target", "debug", "ssw")
    if not os.path.exists(ssw):
        ok(False, f"ssw binary for check-config: {ssw} missing (cargo build, or set SSW_BIN)")
        return
    code, out, err = nix_eval("(import ./compose.nix {} ((import ./topology.nix).normalise (import ./tests/stub-topology.nix))).configs")
    compose_stub = json.loads(out) if code == 0 else {}
    code, out, err = nix_eval("(import ./compose.nix {} ((import ./topology.nix).normalise {})).configs")
    compose_a40 = json.loads(out) if code == 0 else {}
    cases = []
    for name, topo in t.items():
        cases.append((f"{name} gateway", topo["ssw"]["gateway"], "gateway"))
        cases += [(f"{name} worker {w}", c, "worker") for w, c in topo["ssw"]["workers"].items()]
        cases += [(f"{name} stub {w}", c, "stub") for w, c in topo["ssw"]["stubs"].items()]
    for flavour, configs in (("compose a40", compose_a40), ("compose stub", compose_stub)):
        ok(bool(configs), f"{flavour}: configs evaluate")
        for cname, c in configs.items():
            if cname.startswith("prometheus"):
                continue
            role = cname.split("-")[0]
            cases.append((f"{flavour} {cname}", json.loads(c["content"]), role))
    for mname, m in (modules or {}).items():
        for unit, svc in m.get("systemd", {}).get("services", {}).items():
            start = svc["serviceConfig"]["ExecStart"]
            role = start.split()[1]
            cases.append((f"module {mname} {unit}", re_config(start), role))
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
    bad_inputs()
    modules = module()
    if "--no-ssw" not in sys.argv:
        ssw_configs(t, modules)
    print(f"nix: {len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


main()
