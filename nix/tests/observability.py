"""The generated observability configs, checked with the real tools.

- compose.yaml: Compose interpolates `$NAME` in every value, inline config `content` included
  (docs.docker.com/reference/compose-file/interpolation); each config must reach its container
  byte for byte, so the alert rules' `{{ $labels.pool }}` survive;
- `promtool check config` on every generated prometheus.yml (compose flavours, and the NixOS
  module's as nixpkgs assembles and checks it at build time);
- `promtool check rules` on the alert rules (also as compose delivers them), `promtool test
  rules` on their unit tests (modules/observability/alerts.test.yml);
- every query of the Grafana dashboard parses as PromQL (promtool parses it as a recording rule).
"""

import json
import os
import re
import subprocess
import tempfile

import yaml

from common import ROOT, need, nix_eval, ok

OBS = os.path.join(ROOT, "modules", "observability")
ALERTS = os.path.join(OBS, "alerts.yml")

COMPOSE_FLAVOURS = {
    "a40": "{}",
    "stub": "import ./tests/stub-topology.nix",
}


def interpolate(text, env=None):
    """What Compose makes of a value: `$$` is a literal `$`; `${VAR}`, `${VAR:-default}`,
    `${VAR-default}` and `$VAR` are substituted (unset: empty, as Compose does with a warning)."""
    env = env or {}

    def sub(m):
        token = m.group(1)
        if token == "$":
            return "$"
        if token.startswith("{"):
            inner = token[1:-1]
            name, sep, default = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?-)?(.*)", inner).groups()
            value = env.get(name)
            if sep == ":-" and not value:
                return default
            if sep == "-" and value is None:
                return default
            return value or ""
        return env.get(token, "")

    return re.sub(r"\$(\$|\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)", sub, text)


def compose_configs():
    """{flavour: {config name: content as the container receives it}} for the generated
    compose documents."""
    out = {}
    for flavour, settings in COMPOSE_FLAVOURS.items():
        code, text, err = nix_eval(f"(import ./compose.nix {{}} ((import ./topology.nix).normalise ({settings}))).configs")
        if ok(code == 0, f"compose {flavour}: configs evaluate" + ("" if code == 0 else f" ({err.strip()[-300:]})")):
            out[flavour] = {n: interpolate(c["content"]) for n, c in json.loads(text).items()}
    return out


def compose_checks(configs):
    committed = yaml.safe_load(open(os.path.join(ROOT, "compose.yaml")))
    alerts = open(ALERTS).read()
    for name, c in committed["configs"].items():
        raw = c["content"]
        ok(interpolate(raw) == raw.replace("$$", "$"), f"compose.yaml: config {name} has no `$` that Compose would substitute")
    ok(interpolate(committed["configs"]["prometheus-alerts"]["content"]) == alerts,
       "compose.yaml: the alert rules reach Prometheus exactly as modules/observability/alerts.yml")
    for name, s in committed["services"].items():
        if name.startswith("worker-"):
            conf = json.loads(interpolate(committed["configs"][name]["content"]))
            ok(conf["worker"]["gpu_metrics"] == "off", f"compose.yaml: {name} does not try NVML (no GPU in its container)")
            ok(s["stop_grace_period"] == "75s", f"compose.yaml: {name} gets its drain (60 s) + 15 s before SIGKILL")
    ok(committed["services"]["vllm-heavy-0"]["environment"]["HF_TOKEN"] == "${HF_TOKEN:-}", "compose.yaml: HF_TOKEN still comes from the environment")
    services = committed["services"]
    ok(committed["secrets"] == {n: {"file": f"./secrets/{n}"} for n in ["api-keys", "redis-password", "engine-api-key"]},
       "compose.yaml: API keys, Redis password and engine key come from secret files")
    gw = services["gateway"]
    ok(gw["ports"] == ["127.0.0.1:8080:8080"], f"compose.yaml: the gateway is published on loopback unless opted in ({gw['ports']})")
    ok(all(services[n].get("user") == "65534:65534" for n in services if n == "gateway" or n.startswith("worker-")),
       "compose.yaml: ssw containers run as an unprivileged user")
    gconf = json.loads(interpolate(committed["configs"]["gateway"]["content"]))
    ok(gconf["gateway"]["api_keys_file"] == "/run/secrets/api-keys" and gconf["redis"]["password_file"] == "/run/secrets/redis-password"
       and gconf["gateway"]["ops_listen"] == "0.0.0.0:9300", "compose.yaml: the gateway reads its keys and Redis password from secrets, ops on 9300")
    vllm = services["vllm-heavy-0"]
    ok(interpolate(vllm["entrypoint"][2]) == 'export VLLM_API_KEY="$(cat /run/secrets/engine-api-key)"; exec vllm serve "$@"'
       and vllm["secrets"] == ["engine-api-key"] and all(p.startswith("127.0.0.1:") for p in vllm["ports"]),
       "compose.yaml: vLLM takes its API key from the secret, at start (Compose leaves the shell's $ alone)")
    redis = services["redis"]
    ok('--requirepass "$(cat /run/secrets/redis-password)"' in interpolate(redis["entrypoint"][2]) and redis["ports"] == ["127.0.0.1:6379:6379"],
       "compose.yaml: Redis requires the password from its secret and is published on loopback only (for ssw status, drain, rollout on the host)")
    for name in services:
        if name.startswith("worker-"):
            wconf = json.loads(interpolate(committed["configs"][name]["content"]))["worker"]
            ok(wconf["engine_api_key_file"] == "/run/secrets/engine-api-key", f"compose.yaml: {name} presents the engine key")


def promtool(args, what):
    p = subprocess.run(["promtool", *args], capture_output=True, text=True)
    return ok(p.returncode == 0, what + ("" if p.returncode == 0 else f" ({(p.stdout + p.stderr).strip()[-500:]})"))


def check_config(config, what, d):
    """`promtool check config` on a prometheus.yml whose rule files point at this checkout."""
    config = dict(config)
    rules = os.path.join(d, "alerts.yml")
    config["rule_files"] = [rules for _ in config.get("rule_files", [])]
    path = os.path.join(d, f"prometheus-{re.sub(r'[^a-z0-9]+', '-', what)}.yml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    promtool(["check", "config", path], f"promtool check config: {what}")


def dashboard_queries(d):
    """Every `expr` of the dashboard as a recording rule: promtool parses each as PromQL."""
    dash = json.load(open(os.path.join(OBS, "dashboard.json")))
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    ok(len(exprs) >= 10, f"dashboard: {len(exprs)} queries found")
    # Grafana's own variables are not PromQL; the dashboard uses none but $__rate_interval style
    # ones would be replaced here.
    rules = [{"record": f"ssw:dashboard_query_{i}", "expr": re.sub(r"\$__\w+", "5m", e)} for i, e in enumerate(exprs)]
    path = os.path.join(d, "dashboard-queries.yml")
    with open(path, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    promtool(["check", "rules", path], "promtool: every dashboard query is valid PromQL")


def run(modules):
    """`modules`: the module scenarios that evaluated (module.run())."""
    configs = compose_configs()
    compose_checks(configs)
    if not need("promtool", "sudo apt-get install prometheus"):
        return
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "alerts.yml"), "w") as f:
            f.write(open(ALERTS).read())
        promtool(["check", "rules", ALERTS], "promtool check rules: modules/observability/alerts.yml")
        promtool(["test", "rules", os.path.join(OBS, "alerts.test.yml")], "promtool test rules: every alert fires and stays silent when it should")
        for flavour, c in configs.items():
            if "prometheus-alerts" in c:
                path = os.path.join(d, f"compose-{flavour}-alerts.yml")
                with open(path, "w") as f:
                    f.write(c["prometheus-alerts"])
                promtool(["check", "rules", path], f"promtool check rules: compose {flavour}, as Compose delivers them")
            if "prometheus" in c:
                check_config(yaml.safe_load(c["prometheus"]), f"compose {flavour}", d)
        for name, r in modules.items():
            if r.get("prometheus"):
                check_config(r["prometheus"]["yml"], f"module {name}", d)
        dashboard_queries(d)
