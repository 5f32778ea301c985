"""modules/ssw-inference.nix through the real NixOS module system.

Every scenario is a list of NixOS modules evaluated with the real nixpkgs `lib.evalModules` on
top of nix/tests/nixos/options.nix (the NixOS options the module touches, declared with
nixpkgs' types). A scenario must evaluate with zero failed assertions and zero warnings, and
its generated units, containers and configs are asserted. The code blocks of
docs/deploy-nixos.md and the module's option examples are scenarios too, and misspelled or
mistyped options must fail.
"""

import json
import os
import re
import shutil
import tempfile

from common import NIX, ROOT, nix_eval, nixpkgs_lib, ok

# The rest of a host: a root file system and a boot loader (a real host has them from its
# hardware-configuration.nix), its state version, and for GPU hosts the NVIDIA driver.
BASE = '{ fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; }; boot.loader.systemd-boot.enable = true; system.stateVersion = "26.05"; }'
GPU = '{ services.xserver.videoDrivers = [ "nvidia" ]; hardware.nvidia.open = true; }'
SSW = "e0.flake.nixosModules.default"


def ssw(cfg):
    return f"{{ services.ssw-inference = {cfg}; }}"


SCENARIOS = {
    "a40": [SSW, BASE, GPU, ssw("{ enable = true; }")],
    "stub": [SSW, BASE, ssw('{ enable = true; settings.engine = "stub"; }')],
    "grafana": [SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; grafana = { enable = true; secretKeyFile = "/run/secrets/grafana"; }; }; }')],
    "secrets": [SSW, BASE, GPU, ssw(
        '{ enable = true; openFirewall = true; hfTokenFile = "/run/secrets/hf-token.env"; '
        'settings = { gateway = { listen = "0.0.0.0:8080"; apiKeysFile = "/run/secrets/keys"; }; redis.passwordFile = "/run/secrets/redis"; }; }')],
    "gpu host": [SSW, BASE, GPU, ssw(
        '{ enable = true; roles = { redis = false; gateway = false; }; '
        'settings = { redis = { host = "10.0.0.5"; passwordFile = "/run/secrets/redis"; }; gpus = [ 0 ]; '
        'replicas = { heavy-2 = { pool = "heavy"; gpu = 0; }; light-2 = { pool = "light"; gpu = 0; }; }; }; }')],
    "gateway host": [SSW, BASE, ssw(
        '{ enable = true; openFirewall = true; roles = { redis = false; workers = false; }; '
        'settings = { redis = { host = "10.0.0.5"; passwordFile = "/run/secrets/redis"; }; '
        'gateway = { listen = "0.0.0.0:8080"; apiKeysFile = "/run/secrets/keys"; }; }; }')],
    "own engine key and more Redis clients": [SSW, BASE, GPU, ssw('{ enable = true; settings.engineApiKeyFile = "/run/secrets/engine"; }'),
                                               "{ services.redis.servers.ssw.maxclients = 20000; }"],
    "tenants": [SSW, BASE, ssw(
        '{ enable = true; openFirewall = true; settings = { engine = "stub"; gateway.listen = "0.0.0.0:8080"; '
        'tenants = { npc = { apiKeysFile = "/run/secrets/npc-keys"; defaultTier = "flex"; requestsPerMinute = 6000; }; '
        'default.maxTier = "default"; }; '
        'pools.heavy = { schedulingPolicy = "priority"; priorityReserve = 0.2; tiers.flex = { maxQueue = 500; queueTimeout = "15m"; }; }; }; }')],
    # Only routing settings differ from "stub": the gateway reloads instead of restarting.
    "routes": [SSW, BASE, ssw(
        '{ enable = true; settings = { engine = "stub"; pools.light.aliases = [ "chatter" ]; '
        'routes.npc-dialogue = { variants = [ { pool = "heavy"; weight = 90; } { pool = "light"; weight = 10; name = "small"; } ]; '
        'shadow = { pool = "light"; share = 0.05; }; guard = { maxErrorRate = 0.05; window = "5m"; minRequests = 200; }; }; }; }')],
    # The heavy pool's model swapped (served name and engine): a rollout, no restart.
    "stub, new heavy model": [SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; pools.heavy.servedModel = "new-model"; }; }')],
    # vLLM arguments changed on the A40: the containers are rolled, not restarted.
    "a40, new heavy arguments": [SSW, BASE, GPU, ssw('{ enable = true; settings.pools.heavy.extraArgs = [ "--enable-prefix-caching" ]; }')],
    # A setting that needs a restart differs from "stub".
    "stub, longer queue": [SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; pools.heavy.maxQueue = 20000; }; }')],
    "redis host": [SSW, BASE, ssw(
        '{ enable = true; roles = { gateway = false; workers = false; }; '
        'settings.redis = { host = "10.0.0.5"; passwordFile = "/run/secrets/redis"; persistence = "aof"; maxMemory = "4GiB"; }; }')],
}

# VM-test nodes: each vm-tests/<name>.nix's machine, as the test driver builds it.
VM_TESTS = sorted(
    f[:-4] for f in os.listdir(os.path.join(ROOT, "vm-tests")) if f.endswith(".nix") and f != "common.nix"
)
for name in VM_TESTS:
    SCENARIOS[f"vm-test {name}"] = [f"(import ../vm-tests/{name}.nix {{ self = e0.flake; }}).nodes.machine", BASE]
# The configuration model-swap switches to: the node with its specialisation's module on top.
SCENARIOS["vm-test model-swap, specialisation"] = SCENARIOS["vm-test model-swap"] + ["(import ../vm-tests/specialisations/new-heavy-model.nix)"]

# Each must fail with this text (in a failed assertion or the evaluation error).
MUST_FAIL = {
    "docker backend": ([SSW, BASE, GPU, ssw("{ enable = true; }"), '{ virtualisation.oci-containers.backend = "docker"; }'],
                       "services.ssw-inference runs vLLM with podman"),
    "a swapped-in model whose memory plan does not fit": ([SSW, BASE, GPU, ssw(
        '{ enable = true; settings.pools.heavy = { servedModel = "Qwen/Qwen2.5-32B-Instruct-AWQ"; gpuMemoryUtilization = 0.7; }; }')],
        "GPU 0 is over-committed"),
    "GPU host without NVIDIA driver": ([SSW, BASE, ssw("{ enable = true; }")], "`nvidia-container-toolkit` requires nvidia drivers"),
    "secret as a Nix path literal": ([SSW, BASE, ssw('{ enable = true; settings.engine = "stub"; settings.redis.passwordFile = ./run.py; }')],
                                     "redis.passwordFile: must be an absolute path outside the Nix store"),
    "HF token in the store": ([SSW, BASE, GPU, ssw('{ enable = true; hfTokenFile = builtins.storeDir + "/00000000000000000000000000000000-hf.env"; }')],
                              "hfTokenFile"),
    "open gateway without keys": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; gateway.listen = "0.0.0.0:8080"; }; }')],
                                  "without API keys"),
    "unknown Redis persistence": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; redis.persistence = "rdb"; }; }')],
                                  "redis.persistence: must be \"none\" or \"aof\""),
    "Redis memory that is not a size": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; redis.maxMemory = "lots"; }; }')],
                                        "redis.maxMemory: must be a size"),
    "option of the wrong type": ([SSW, BASE, ssw('{ enable = true; openFirewall = "yes"; }')], "openFirewall' is not of type `boolean'"),
    "unknown module option": ([SSW, BASE, ssw("{ enable = true; openFirewalls = true; }")], "services.ssw-inference.openFirewalls' does not exist"),
    "tenant without keys": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; tenants.npc.requestsPerMinute = 60; }; }')],
                            "tenants.npc.apiKeysFile: is required"),
    "route to an unknown pool": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; routes.r.variants = [ { pool = "medium"; weight = 1; } ]; }; }')],
                                 "routes.r.variants.0.pool: unknown pool \"medium\""),
    "route with an unknown setting": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; routes.r = { variants = [ { pool = "heavy"; weight = 1; } ]; guard.maxErrors = 3; }; }; }')],
                                      "routes.r.guard.maxErrors: unknown setting"),
    "route named like a pool": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; routes.light.variants = [ { pool = "heavy"; weight = 1; } ]; }; }')],
                                "routes.light: already a pool"),
    "grafana without secret key": ([SSW, BASE, ssw('{ enable = true; settings = { engine = "stub"; grafana.enable = true; }; }')],
                                   "settings.grafana.secretKeyFile: Grafana needs a secret key file"),
}

# Planted defects in a copy of the module: the check must catch each.
PLANTED = {
    "misspelled container option": ("    cmd = r.vllmArgs;", "    cmdd = r.vllmArgs;",
                                    "containers.ssw-vllm-heavy-0.cmdd' does not exist"),
    "unit name that is not a unit": ('    wantedBy = [ "multi-user.target" ];', '    wantedBy = [ "multi-user" ];',
                                     "wantedBy"),
    "bad systemd Type": ('    Type = "notify";', '    Type = "notifyy";', "Systemd Service field `Type' cannot have value `notifyy'"),
}


def evaluate(modules, cwd=NIX, lib=None):
    lib = lib or nixpkgs_lib()
    mods = " ".join(f"({m})" for m in modules)
    expr = (
        f"let lib = import {lib}; e0 = import ./tests/nixos/eval.nix {{ inherit lib; }}; "
        f"in (import ./tests/nixos/eval.nix {{ inherit lib; modules = [ {mods} ]; }}).result"
    )
    code, out, err = nix_eval(expr, cwd=cwd)
    return (json.loads(out) if code == 0 else None), err


def built(exec_start):
    """What the fake runCommand recorded for the config file an ExecStart passes."""
    _, _, recorded = exec_start.partition("#")
    return json.loads(recorded) if recorded else {}


def unit_config(unit):
    """The config a unit runs with: the file its ExecStart passes, or the /etc file it names."""
    return built(unit.get("configSource") or unit["serviceConfig"]["ExecStart"]).get("config", {})


def ssw_units(services):
    """The ssw processes' units (gateway, workers, stubs), by name."""
    return {n: u for n, u in services.items() if n.startswith("ssw-") and "ExecStart" in u["serviceConfig"]}


def clean(name, r, err):
    good = r is not None and not r["failedAssertions"] and not r["warnings"]
    detail = err.strip()[-600:] if r is None else f"assertions {r['failedAssertions']}, warnings {r['warnings']}"
    return ok(good, f"module scenario evaluates with no failed assertion or warning: {name}" + ("" if good else f" ({detail})"))


def a40(r, firewall=()):
    cs = r["containers"]
    svc = r["systemd"]["services"]
    ok(sorted(cs) == ["ssw-vllm-heavy-0", "ssw-vllm-heavy-1", "ssw-vllm-light-0", "ssw-vllm-light-1"], "A40: one vLLM container per replica")
    ok(r["containerBackend"] == "podman" and r["nvidiaToolkit"] is True, "A40: podman and the NVIDIA container toolkit")
    for n, c in cs.items():
        gpu = n[-1]
        ok(c["devices"] == [f"nvidia.com/gpu={gpu}"], f"A40: {n} pinned to GPU {gpu} through CDI")
        ok(all(p.startswith("127.0.0.1:") for p in c["ports"]), f"A40: {n} port bound to 127.0.0.1")
        ok("--ipc=host" in c["extraOptions"] and c["podman"]["sdnotify"] == "healthy", f"A40: {n} --ipc=host, ready when healthy")
        ok(any(v.endswith(":/root/.cache/huggingface") for v in c["volumes"]) and any(v.endswith(":/root/.cache/vllm") for v in c["volumes"]),
           f"A40: {n} HF and compile caches on volumes")
        u = svc[f"podman-{n}"]
        gen = "nvidia-container-toolkit-cdi-generator.service"
        ok(gen in u["after"] and gen in u["wants"] and gen not in u["requires"], f"A40: {n} ordered after (and wants) the CDI generator")
        ok(u["startLimitIntervalSec"] == 0 and u["serviceConfig"]["RestartSec"] == "10s" and u["serviceConfig"]["Restart"] == "on-failure",
           f"A40: {n} restarts every 10 s without a start limit")
    rs = r["redis"]["ssw"]
    ok(rs["settings"]["maxmemory"] == str(1 << 30) and rs["settings"]["maxmemory-policy"] == "noeviction" and rs["appendOnly"] is False,
       "A40: Redis bounded (maxmemory 1 GiB, noeviction), no persistence by default")
    ok(unit_config(svc["ssw-gateway"])["pools"]["heavy"]["max_queue_bytes"] == "256MiB", "A40: the queue's byte limit reaches the gateway")
    l0, h0 = svc["podman-ssw-vllm-light-0"], svc["podman-ssw-vllm-heavy-0"]
    ok("podman-ssw-vllm-heavy-0.service" in l0["after"] and "podman-ssw-vllm-heavy-0.service" in l0["wants"]
       and not any("vllm" in u for u in h0["after"]), "A40: vLLMs on one GPU start one after the other")
    ok(all(not any("vllm" in u for u in svc[f"podman-{n}"]["requires"]) for n in cs) and all(c["dependsOn"] == [] for c in cs.values()),
       "A40: no vLLM requires another (a rollout restarting one must not restart the next on its GPU)")
    ok(all(svc[f"podman-{n}"]["restartIfChanged"] is False for n in cs), "A40: a switch does not restart vLLM containers (ssw-rollout rolls them)")
    ok("podman.service" in svc["nvidia-container-toolkit-cdi-generator"]["requiredBy"], "A40: the CDI generator runs (stand-in of the toolkit module)")
    units = sorted(ssw_units(svc))
    ok(units == ["ssw-gateway", "ssw-worker-heavy-0", "ssw-worker-heavy-1", "ssw-worker-light-0", "ssw-worker-light-1"], f"A40: gateway and one worker unit per replica ({units})")
    sec = svc["ssw-secrets"]
    ok(sec["serviceConfig"]["Type"] == "oneshot" and "head -c 32 /dev/urandom" in sec["script"] and "VLLM_API_KEY=" in sec["script"],
       "A40: ssw-secrets generates the engine key and vLLM's environment file")
    for n, c in cs.items():
        ok(c["environmentFiles"][0] == "/var/lib/ssw/secrets/engine.env", f"A40: {n} gets its API key from the engine environment file")
        ok("--health-on-failure=kill" in c["extraOptions"], f"A40: {n} is killed (and restarted) when it stays unhealthy")
        ok("ssw-secrets.service" in svc[f"podman-{n}"]["requires"], f"A40: {n} starts after its key exists")
    w = svc["ssw-worker-light-1"]
    ok("podman-ssw-vllm-light-1.service" in w["after"] and "redis-ssw.service" in w["after"], "A40: a worker starts after its container and Redis")
    sc = w["serviceConfig"]
    ok(sc["DynamicUser"] and sc["Restart"] == "on-failure" and sc["ProtectSystem"] == "strict" and sc["NoNewPrivileges"], "A40: hardened DynamicUser units restarting on failure")
    ok(w["startLimitIntervalSec"] == 0 and sc["RestartMaxDelaySec"] == "30s", "A40: ssw units back off up to 30 s and never hit a start limit")
    ok(sc["TimeoutStopSec"] == "75s", "A40: worker stop timeout covers its drain (60 s + 15 s)")
    ok("ssw check-config $out --role worker" in built(w["configSource"]).get("checks", ""), "A40: worker config checked at build time")
    ok(sc["ExecStart"].endswith("worker --config /etc/ssw/worker-light-1.json") and w["restartTriggers"],
       "A40: a worker reads /etc/ssw/worker-<name>.json and restarts on its restart trigger")
    ro = svc["ssw-rollout"]
    ok(ro["serviceConfig"]["Type"] == "oneshot" and ro["serviceConfig"]["RemainAfterExit"] is True and len(ro["restartTriggers"]) == 4
       and "podman-ssw-vllm-heavy-0.service" in ro["after"] and "ssw-worker-light-1.service" in ro["after"],
       "A40: ssw-rollout runs after the engines and workers, restarted when an engine's revision changes")
    order = re.findall(r"^\s*roll (\S+) (\S+) \S+ (\S+) (\S+)$", ro["script"], re.M)
    ok(order == [("heavy-0", "heavy", "Qwen/Qwen2.5-14B-Instruct-AWQ", "podman-ssw-vllm-heavy-0.service"),
                 ("light-0", "light", "Qwen/Qwen3-8B-AWQ", "podman-ssw-vllm-light-0.service"),
                 ("heavy-1", "heavy", "Qwen/Qwen2.5-14B-Instruct-AWQ", "podman-ssw-vllm-heavy-1.service"),
                 ("light-1", "light", "Qwen/Qwen3-8B-AWQ", "podman-ssw-vllm-light-1.service")],
       f"A40: ssw-rollout rolls changed replicas GPU by GPU ({order})")
    ok("ssw rollout --config /etc/ssw/rollout.json" in ro["script"] and '--restart-cmd "systemctl restart $5"' in ro["script"],
       "A40: ssw-rollout drains, restarts and checks each replica with ssw rollout")
    rc = built(r["etc"]["ssw/rollout.json"]).get("config", {})
    ok(rc["worker"]["engine_api_key_file"] == "/run/credentials/ssw-rollout.service/engine-key"
       and "engine-key:/var/lib/ssw/secrets/engine-api-key" in ro["serviceConfig"]["LoadCredential"]
       and "ssw-secrets.service" in ro["requires"] and rc["worker"]["drain_timeout"] == "60s",
       "A40: ssw-rollout presents the engine key (its smoke request and /v1/models reads)")
    revisions = dict(re.findall(r"^\s*roll (\S+) \S+ (\S+) ", ro["script"], re.M))
    for n in cs:
        post = svc[f"podman-{n}"]["serviceConfig"]["ExecStartPost"]
        text = next((t for t in post if "ssw-engine-started" in t), "")
        ok(text.startswith("+") and revisions[n[len("ssw-vllm-"):]] in ro["restartTriggers"],
           f"A40: {n} records the revision it started with, and ssw-rollout's trigger has it")
    wait = svc["podman-ssw-vllm-light-0"]["serviceConfig"].get("ExecStartPre", [])
    ok(any("ssw-wait-light-0" in w for w in wait) and "ExecStartPre" not in svc["podman-ssw-vllm-heavy-0"]["serviceConfig"],
       "A40: light-0 waits until heavy-0 is up before it starts (even when heavy-0's start failed and retries)")
    gw = svc["ssw-gateway"]
    ok("ssw check-config $out --role gateway" in built(gw["configSource"]).get("checks", ""), "A40: gateway config checked at build time")
    ok(gw["serviceConfig"]["ExecStart"].endswith("gateway --config /etc/ssw/gateway.json")
       and "kill -HUP $MAINPID" in gw["serviceConfig"]["ExecReload"],
       "A40: the gateway reads /etc/ssw/gateway.json and reloads on SIGHUP")
    ok(gw["reloadTriggers"] and gw["restartTriggers"], "A40: the gateway has reload and restart triggers")
    wc = unit_config(w)["worker"]
    ok(wc["engine_api_key_file"] == "/run/credentials/ssw-worker-light-1.service/engine-key"
       and sc["LoadCredential"] == ["engine-key:/var/lib/ssw/secrets/engine-api-key"]
       and "ssw-secrets.service" in w["requires"], "A40: workers present the engine key, loaded as a credential")
    gc = unit_config(svc["ssw-gateway"])["gateway"]
    ok(gc["ops_listen"] == "127.0.0.1:9300" and "LoadCredential" in svc["ssw-gateway"]["serviceConfig"], "A40: /metrics and /readyz on the operators' listener")
    g = svc["ssw-gateway"]["serviceConfig"]
    ok(g["LimitNOFILE"] == 65536 and sc["LimitNOFILE"] == 65536, "A40: gateway and workers may open 65536 files (systemd's default soft limit is 1024)")
    ok(g["Type"] == "notify" and sc["Type"] == "notify" and sc["WatchdogSec"] == "30s", "A40: ssw units use sd_notify and a watchdog")
    exporters = sorted(n for n, v in ssw_units(svc).items() if unit_config(v).get("worker", {}).get("gpu_metrics") == "configured")
    ok(exporters == ["ssw-worker-heavy-0", "ssw-worker-heavy-1"], f"A40: one GPU exporter per GPU ({exporters})")
    h0 = svc["ssw-worker-heavy-0"]["serviceConfig"]
    ok(h0["PrivateDevices"] is False and h0["DeviceAllow"] == ["/dev/nvidiactl rw", "/dev/nvidia0 rw"] and sc["PrivateDevices"] is True,
       "A40: only GPU exporters see the GPU device nodes, read-write as NVML opens them")
    redis = r["redis"]["ssw"]
    ok(redis["port"] == 6379 and redis["save"] == [] and redis["settings"]["maxclients"] == 10000 and redis["settings"]["save"] == '""',
       "A40: Redis without persistence on 6379, maxclients through the module's own option")
    ok(svc["redis-ssw"]["serviceConfig"]["LimitNOFILE"] == "10032", "A40: the Redis unit's file limit follows maxclients")
    p = r["prometheus"]
    ok(p["listenAddress"] == "127.0.0.1", "A40: Prometheus listens on localhost only")
    jobs = [j["job_name"] for j in p["yml"]["scrape_configs"]]
    ok(jobs == ["ssw-gateway", "vllm", "ssw-workers"], f"A40: Prometheus scrapes the gateway, the engines and the workers ({jobs})")
    ok(p["yml"]["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9300"], "A40: Prometheus scrapes the gateway's operators' listener")
    ok(p["yml"]["rule_files"][0].endswith("alerts.yml"), "A40: alert rules loaded")
    ok(r["firewall"] == list(firewall), f"A40: firewall open for {list(firewall)} only")
    ok(r["sysctl"]["net.core.somaxconn"] == 65535, "A40: deep accept queue for bursts of connections")


def stub(r):
    svc = r["systemd"]["services"]
    ok(r["containers"] == {} and not r["nvidiaToolkit"], "stub: no containers, no GPU toolkit")
    ok(sorted(k for k in svc if k.startswith("ssw-stub-")) == ["ssw-stub-heavy-0", "ssw-stub-heavy-1", "ssw-stub-light-0", "ssw-stub-light-1"], "stub: ssw stub units replace vLLM")
    ok("ssw-stub-heavy-0.service" in svc["ssw-worker-heavy-0"]["after"], "stub: workers start after their stub")
    ok(all(svc[f"ssw-stub-{n}"]["serviceConfig"]["ExecStartPost"][0].startswith("+/nix/store/") for n in ("heavy-0", "light-1"))
       and "/run/ssw-engines/$1" in svc["ssw-rollout"]["script"],
       "stub: stubs record the revision they started with; ssw-rollout compares it with the one wanted")
    stub_unit = svc["ssw-stub-heavy-0"]
    ok(unit_config(stub_unit)["stub"]["api_key_file"] == "/run/credentials/ssw-stub-heavy-0.service/engine-key"
       and stub_unit["serviceConfig"]["LoadCredential"] == ["engine-key:/var/lib/ssw/secrets/engine-api-key"],
       "stub: stub engines require the engine key as vLLM does")
    exporters = [n for n, v in ssw_units(svc).items() if unit_config(v).get("worker", {}).get("gpu_metrics") == "configured"]
    ok(exporters == [], f"stub: no worker exports GPU metrics without GPUs ({exporters})")


def grafana(r):
    gf = r["grafana"]
    ok(gf["provision"]["dashboards"][0]["options"]["path"].endswith("-observability") or gf["provision"]["dashboards"][0]["options"]["path"].endswith("/observability"),
       "grafana: the dashboard is provisioned")
    ok(gf["settings"]["security"]["secret_key"] == "$__file{/run/secrets/grafana}", "grafana: secret key from a file")
    ok(gf["settings"]["server"]["http_addr"] == "127.0.0.1", "grafana: on localhost")


def secrets(r):
    svc = r["systemd"]["services"]
    g = svc["ssw-gateway"]["serviceConfig"]
    ok(sorted(g["LoadCredential"]) == ["api-keys:/run/secrets/keys", "redis-password:/run/secrets/redis"], "secrets: gateway loads both credentials")
    conf = unit_config(svc["ssw-gateway"])
    ok(conf.get("redis", {}).get("password_file") == "/run/credentials/ssw-gateway.service/redis-password", "secrets: config points at the unit's credential")
    ok(conf.get("gateway", {}).get("api_keys_file") == "/run/credentials/ssw-gateway.service/api-keys", "secrets: API keys from the credential")
    ok(r["redis"]["ssw"]["requirePassFile"] == "/run/secrets/redis", "secrets: Redis requires the password")
    ok(r["firewall"] == [8080], "secrets: openFirewall opens the gateway port")
    ok(svc["ssw-worker-heavy-0"]["serviceConfig"]["LoadCredential"] == ["redis-password:/run/secrets/redis", "engine-key:/var/lib/ssw/secrets/engine-api-key"],
       "secrets: workers load the Redis password and the engine key, not the API keys")
    ok(r["containers"]["ssw-vllm-heavy-0"]["environmentFiles"] == ["/var/lib/ssw/secrets/engine.env", "/run/secrets/hf-token.env"],
       "secrets: the HF token file reaches the containers, as a path outside the store")


def tenants(r):
    svc = r["systemd"]["services"]
    g = svc["ssw-gateway"]["serviceConfig"]
    ok(g["LoadCredential"] == ["tenant-npc:/run/secrets/npc-keys"], "tenants: the gateway loads the tenant's keys as a credential")
    conf = unit_config(svc["ssw-gateway"])
    ok(conf.get("tenants") == {
        "npc": {"api_keys_file": "/run/credentials/ssw-gateway.service/tenant-npc", "default_tier": "flex", "requests_per_minute": 6000},
        "default": {"max_tier": "default"},
    }, f"tenants: the gateway's [tenants] (got {conf.get('tenants')})")
    ok(conf["pools"]["heavy"].get("tiers") == {"flex": {"max_queue": 500, "queue_timeout": "15m"}}
       and conf["pools"]["heavy"]["priority_reserve"] == 0.2, "tenants: the pool's tiers and reserve reach the gateway")
    w = unit_config(svc["ssw-worker-heavy-0"])
    ok(w["pools"]["heavy"]["priority_reserve"] == 0.2 and "tenants" not in w, "tenants: workers get the reserve, not the tenants")
    ok("tenant-npc" not in " ".join(svc["ssw-worker-heavy-0"]["serviceConfig"].get("LoadCredential", [])),
       "tenants: workers do not load the tenants' keys")


def gpu_host(r):
    svc = r["systemd"]["services"]
    mine = sorted(ssw_units(svc))
    ok(mine == ["ssw-worker-heavy-2", "ssw-worker-light-2"], f"GPU host: workers only ({mine})")
    ok(r["redis"] == {} and "prometheus" in r and r["prometheus"]["yml"]["scrape_configs"][0]["job_name"] == "vllm", "GPU host: no local Redis; Prometheus scrapes engines and workers only")
    conf = unit_config(svc["ssw-worker-heavy-2"])
    ok(conf["redis"]["url"] == "redis://10.0.0.5:6379" and conf["redis"]["password_file"].startswith("/run/credentials/"), "GPU host: workers use the remote Redis with its password")


def gateway_host(r):
    svc = r["systemd"]["services"]
    mine = sorted(ssw_units(svc))
    ok(mine == ["ssw-gateway"] and "ssw-secrets" not in svc and r["containers"] == {} and r["redis"] == {}, f"gateway host: the gateway only ({mine})")
    ok(r["firewall"] == [8080] and r["sysctl"]["net.core.somaxconn"] == 65535, "gateway host: its port opened, deep accept queue")


def redis_host(r):
    svc = r["systemd"]["services"]
    ok(sorted(ssw_units(svc)) == [] and r["redis"]["ssw"]["bind"] is None, "Redis host: Redis on every interface (host is remote), no ssw units")
    rs = r["redis"]["ssw"]
    ok(rs["appendOnly"] is True and rs["settings"]["appendfsync"] == "everysec" and rs["settings"]["maxmemory"] == str(4 << 30),
       "Redis host: persistence = aof keeps the queue (fsync every second), maxMemory sized by the settings")
    ok("prometheus" not in r or r["prometheus"] == {}, "Redis host: no Prometheus without gateway or workers")


def vm_overload(r):
    svc = r["systemd"]["services"]
    heavy = unit_config(svc["ssw-stub-heavy-0"])["stub"]
    light = unit_config(svc["ssw-stub-light-0"])["stub"]
    ok(heavy["ttft"] == "20s" and light["ttft"] == "10ms", "vm-test overload: slow heavy stubs, fast light stubs (per-pool stub timing)")
    w = unit_config(svc["ssw-worker-heavy-0"])["worker"]
    ok(w["max_inflight"] == 1 and w["drain_timeout"] == "20s", "vm-test overload: the test's settings merge over the common ones (drain_timeout kept)")
    ok(unit_config(svc["ssw-gateway"])["pools"]["heavy"]["max_queue"] == 4, "vm-test overload: heavy max_queue 4 reaches the gateway")


def vm_worker_restart(r):
    svc = r["systemd"]["services"]
    ok(unit_config(svc["ssw-stub-heavy-1"])["stub"]["ttft"] == "3s", "vm-test worker-restart: heavy answers take 3 s to start")


def own_key(r):
    svc = r["systemd"]["services"]
    script = svc["ssw-secrets"]["script"]
    ok("/dev/urandom" not in script and "/run/secrets/engine" in script, "own engine key: used, not generated")
    ok(svc["ssw-worker-heavy-0"]["serviceConfig"]["LoadCredential"] == ["engine-key:/run/secrets/engine"], "own engine key: workers load it")
    ok(r["redis"]["ssw"]["settings"]["maxclients"] == 20000 and svc["redis-ssw"]["serviceConfig"]["LimitNOFILE"] == "20032",
       "Redis maxclients can be raised (the module's value is only a default)")


def routes(r):
    conf = unit_config(r["systemd"]["services"]["ssw-gateway"])
    ok(conf.get("routes") == {"npc-dialogue": {
        "variants": [{"pool": "heavy", "weight": 90}, {"pool": "light", "weight": 10, "name": "small"}],
        "shadow": {"pool": "light", "share": 0.05},
        "guard": {"max_error_rate": 0.05, "window": "5m", "min_requests": 200},
    }}, f"routes: the gateway's [routes] (got {conf.get('routes')})")


def routes_reload(out):
    """A switch that changes only routing settings reloads the gateway; anything else restarts it."""
    if not all(n in out for n in ("stub", "routes", "stub, longer queue")):
        return
    gw = {n: out[n]["systemd"]["services"]["ssw-gateway"] for n in ("stub", "routes", "stub, longer queue")}
    same = lambda a, b, k: gw[a][k] == gw[b][k] and gw[a]["serviceConfig"]["ExecStart"] == gw[b]["serviceConfig"]["ExecStart"]
    ok(same("stub", "routes", "restartTriggers") and gw["stub"]["reloadTriggers"] != gw["routes"]["reloadTriggers"],
       "routes: changing routes and aliases only changes the gateway's reload trigger (nixos-rebuild reloads it)")
    ok(gw["stub"]["restartTriggers"] != gw["stub, longer queue"]["restartTriggers"],
       "a pool's maxQueue changes the gateway's restart trigger (nixos-rebuild restarts it)")


def vm_model_swap(out):
    """The VM test's switch: the specialisation changes the heavy stubs, the gateway's reload
    trigger and ssw-rollout's trigger, and nothing that would restart a worker or the gateway."""
    a, b = out.get("vm-test model-swap"), out.get("vm-test model-swap, specialisation")
    if not (a and b):
        return
    sa, sb = a["systemd"]["services"], b["systemd"]["services"]
    ok(unit_config(sb["ssw-stub-heavy-0"])["stub"]["served_model"] == "new-model"
       and unit_config(sa["ssw-stub-heavy-0"])["stub"]["ttft"] == "150ms"
       and sa["ssw-rollout"]["restartTriggers"] != sb["ssw-rollout"]["restartTriggers"]
       and sa["ssw-gateway"]["restartTriggers"] == sb["ssw-gateway"]["restartTriggers"]
       and all(sa[w]["restartTriggers"] == sb[w]["restartTriggers"] for w in sa if w.startswith("ssw-worker-")),
       "vm-test model-swap: the specialisation rolls the heavy stubs and restarts no worker or gateway")


def model_swap(out):
    """A switch to another model restarts no engine, worker or gateway: ssw-rollout rolls the
    changed replicas, the gateway reloads."""
    pairs = [("stub", "stub, new heavy model"), ("a40", "a40, new heavy arguments")]
    if not all(a in out and b in out for a, b in pairs):
        return
    old, new = (out[n]["systemd"]["services"] for n in pairs[0])
    ok(old["ssw-gateway"]["restartTriggers"] == new["ssw-gateway"]["restartTriggers"]
       and old["ssw-gateway"]["reloadTriggers"] != new["ssw-gateway"]["reloadTriggers"]
       and unit_config(new["ssw-gateway"])["pools"]["heavy"]["served_model"] == "new-model",
       "model swap: the gateway reloads (the new served name routes) and is not restarted")
    ok(all(old[w]["serviceConfig"]["ExecStart"] == new[w]["serviceConfig"]["ExecStart"] and old[w]["restartTriggers"] == new[w]["restartTriggers"]
           for w in old if w.startswith("ssw-worker-")),
       "model swap: no worker restarts (workers send each engine the name it reports)")
    stubs = [u for u in old if u.startswith("ssw-stub-")]
    ok(all(new[u]["restartIfChanged"] is False for u in stubs)
       and unit_config(new["ssw-stub-heavy-0"])["stub"]["served_model"] == "new-model",
       "model swap: the heavy stub's unit changes, and a switch does not restart it")
    # ssw-rollout's triggers: one engine revision per replica, in name order (heavy-0, heavy-1,
    # light-0, light-1).
    ok(old["ssw-rollout"]["restartTriggers"][:2] != new["ssw-rollout"]["restartTriggers"][:2]
       and old["ssw-rollout"]["restartTriggers"][2:] == new["ssw-rollout"]["restartTriggers"][2:],
       "model swap: the heavy replicas' engine revisions change, the light ones' do not")
    ok(old["ssw-rollout"]["restartTriggers"] != new["ssw-rollout"]["restartTriggers"]
       and "roll heavy-0 heavy " in new["ssw-rollout"]["script"] and " new-model ssw-stub-heavy-0.service" in new["ssw-rollout"]["script"],
       "model swap: ssw-rollout is restarted by the switch and rolls heavy to new-model")
    a, b = (out[n]["systemd"]["services"] for n in pairs[1])
    ca, cb = (out[n]["containers"] for n in pairs[1])
    ok(ca["ssw-vllm-heavy-0"]["cmd"] != cb["ssw-vllm-heavy-0"]["cmd"] and "--enable-prefix-caching" in cb["ssw-vllm-heavy-0"]["cmd"]
       and ca["ssw-vllm-light-0"]["cmd"] == cb["ssw-vllm-light-0"]["cmd"]
       and a["ssw-rollout"]["restartTriggers"][:2] != b["ssw-rollout"]["restartTriggers"][:2]
       and a["ssw-rollout"]["restartTriggers"][2:] == b["ssw-rollout"]["restartTriggers"][2:]
       and all(a[w]["restartTriggers"] == b[w]["restartTriggers"] for w in a if w.startswith("ssw-worker-")),
       "new vLLM arguments: only the heavy engines' revisions change; workers are not restarted")


CHECKS = {"a40": a40, "routes": routes, "own engine key and more Redis clients": own_key, "stub": stub, "grafana": grafana, "secrets": secrets, "gpu host": gpu_host,
          "tenants": tenants,
          "gateway host": gateway_host, "redis host": redis_host,
          "vm-test overload": vm_overload, "vm-test worker-restart": vm_worker_restart}


def docs_blocks():
    """The ```nix blocks of docs/deploy-nixos.md: (title, text)."""
    text = open(os.path.join(ROOT, "docs", "deploy-nixos.md")).read()
    return [(m.group(1).strip().splitlines()[0], m.group(1)) for m in re.finditer(r"```nix\n(.*?)```", text, re.S)]


# What nixos-generate-config writes for a host: the docs' flake imports it.
HARDWARE = BASE.replace("system.stateVersion = \"26.05\"; ", "")


def docs(lib):
    """Every ```nix block of docs/deploy-nixos.md evaluates: the /etc/nixos flake with its
    configuration.nix (through the flake's own nixosModules.default), and every module fragment
    on top of a host."""
    blocks = docs_blocks()
    ok(len(blocks) >= 3, f"docs/deploy-nixos.md: {len(blocks)} nix blocks found")
    files = {t.split()[1]: b for t, b in blocks if t.startswith("# /etc/nixos/")}
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for name, b in files.items():
            with open(os.path.join(d, os.path.basename(name)), "w") as f:
                f.write(b)
        with open(os.path.join(d, "hardware-configuration.nix"), "w") as f:
            f.write(f"{{ ... }}: {HARDWARE}\n")
        if ok("/etc/nixos/flake.nix" in files and "/etc/nixos/configuration.nix" in files, "docs: the A40 flake and configuration.nix are there"):
            expr = (
                f"let lib = import {lib}; e0 = import ./tests/nixos/eval.nix {{ inherit lib; }}; "
                f"flake = (import {d}/flake.nix).outputs (e0.inputs // {{ self = flake; }}); "
                f"in e0.summary (builtins.head (builtins.attrValues flake.nixosConfigurations)).config"
            )
            code, out, err = nix_eval(expr)
            r = json.loads(out) if code == 0 else None
            if clean("docs /etc/nixos/flake.nix + configuration.nix", r, err):
                results["docs a40"] = r
                a40(r, firewall=[8080])
                ok(unit_config(r["systemd"]["services"]["ssw-gateway"])["pools"]["heavy"]["aliases"] == ["npc-boss"]
                   and "light" in unit_config(r["systemd"]["services"]["ssw-gateway"])["pools"],
                   "docs: pools.heavy.aliases changes the heavy pool and keeps light")
    for title, b in blocks:
        if title.startswith("# /etc/nixos/"):
            continue
        body = b.strip()
        module = body if body.startswith("{") else f"{{ ... }}: {{ {body} }}"
        r, err = evaluate([SSW, BASE, GPU, module], lib=lib)
        if clean(f"docs block {title!r}", r, err):
            results[f"docs {title}"] = r
    return results


def flake_hosts(lib):
    """nix/hosts.nix, what `nix flake check` builds to the system derivation, through the
    stand-in nixosSystem: every host's toplevel evaluates (no failed assertion, no warning)."""
    code, out, err = nix_eval(
        f"let lib = import {lib}; e0 = import ./tests/nixos/eval.nix {{ inherit lib; }}; "
        "hosts = import ./hosts.nix { inherit (e0) nixosSystem; sswModule = e0.flake.nixosModules.default; }; "
        "in builtins.mapAttrs (_: h: h.config.system.build.toplevel.name) hosts",
        writable_store=True,
    )
    hosts = json.loads(out) if code == 0 else {}
    ok(code == 0 and "a40" in hosts and "stub" in hosts and any(h.startswith("docs-fragment-") for h in hosts),
       f"nix/hosts.nix (checks.nixos-hosts): every host's system evaluates ({sorted(hosts) or err.strip()[-400:]})")


def examples(lib):
    """The module's option `example`s, as settings of a stub host."""
    code, out, err = nix_eval(
        f"let lib = import {lib}; e0 = import ./tests/nixos/eval.nix {{ inherit lib; }}; "
        "opts = (lib.evalModules { modules = [ ../modules/ssw-inference.nix { _module.check = false; } ]; }).options.services.ssw-inference; "
        "in map (o: { name = lib.concatStringsSep \".\" (lib.drop 2 o.loc); "
        "text = if (o.example._type or null) == \"literalExpression\" then o.example.text else lib.generators.toPretty { } o.example; }) "
        "(builtins.filter (o: o ? example) (lib.collect lib.isOption opts))"
    )
    if not ok(code == 0, "module option examples read" + ("" if code == 0 else f" ({err.strip()[-300:]})")):
        return
    found = json.loads(out)
    ok(any(e["name"] == "settings" for e in found), "the settings option has an example")
    for e in found:
        if e["name"] == "enable":
            continue
        r, err = evaluate([SSW, BASE, GPU, ssw(f"{{ enable = true; {e['name']} = {e['text']}; }}")], lib=lib)
        clean(f"option example services.ssw-inference.{e['name']} = {e['text']}", r, err)


def must_fail(lib):
    for name, (modules, expected) in MUST_FAIL.items():
        r, err = evaluate(modules, lib=lib)
        said = " ".join(r["failedAssertions"]) if r else err
        ok(expected in said, f"module refuses: {name}" + ("" if expected in said else f" (got: {said.strip()[-400:]})"))
    # Planted defects in a copy of the module: the real module system catches what the old
    # stand-in (options as plain records, no types) let through.
    for name, (old, new, expected) in PLANTED.items():
        with tempfile.TemporaryDirectory() as d:
            for part in ("nix", "modules", "flake.nix", "vm-tests"):
                src = os.path.join(ROOT, part)
                (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(d, part))
            path = os.path.join(d, "modules", "ssw-inference.nix")
            text = open(path).read()
            if not ok(old in text, f"planted defect applies: {name}"):
                continue
            open(path, "w").write(text.replace(old, new, 1))
            r, err = evaluate([SSW, BASE, GPU, ssw("{ enable = true; }")], cwd=os.path.join(d, "nix"), lib=lib)
            said = " ".join(r["failedAssertions"]) if r else err
            ok(r is None and expected in said, f"a planted defect fails the check: {name}" + ("" if r is None and expected in said else f" (got: {said.strip()[-300:]})"))


def run():
    """Runs every scenario; returns {name: result} of those that evaluated."""
    lib = nixpkgs_lib()
    out = {}
    for name, modules in SCENARIOS.items():
        r, err = evaluate(modules, lib=lib)
        if clean(name, r, err):
            out[name] = r
            if name in CHECKS:
                CHECKS[name](r)
    routes_reload(out)
    model_swap(out)
    vm_model_swap(out)
    out.update(docs(lib))
    flake_hosts(lib)
    examples(lib)
    must_fail(lib)
    return out
