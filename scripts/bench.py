"""The benchmark suite: runs every scenario of docs/benchmarks.md on this machine and rewrites
that file. One command: `python3 scripts/bench.py` (or `scripts/bench.sh`). `--quick` runs
shorter scenarios; `--only NAME` runs one scenario and prints its figures as JSON instead.

Every platform figure is measured in the same run as its baseline and given as a ratio to it:
absolute numbers move between machines, ratios much less. Processes are real: release-built
`ssw` (stub, worker, gateway), redis-server; CPU time comes from /proc/<pid>/stat.
"""

import datetime
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSW = os.path.join(ROOT, "target", "release", "ssw")
# `--base-bin PATH`: an earlier build to compare section 1's CPU against in the same run.
BASE_BIN = sys.argv[sys.argv.index("--base-bin") + 1] if "--base-bin" in sys.argv else None
HEAVY = "Qwen/Qwen2.5-14B-Instruct-AWQ"
LIGHT = "Qwen/Qwen3-8B-AWQ"
HZ = os.sysconf("SC_CLK_TCK")
QUICK = "--quick" in sys.argv
TMP = tempfile.mkdtemp(prefix="ssw-bench-")
procs = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    try:
        rest = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / HZ
    except (OSError, IndexError):
        return 0.0


def children(pid):
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in open(f"/proc/{pid}/task/{tid}/children").read().split()]
        except OSError:
            pass
    return out


def wait_http(url, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"not ready: {url}")


def start(args, env=None, log_name="proc"):
    e = dict(os.environ, RUST_LOG="warn")
    e.update(env or {})
    path = os.path.join(TMP, log_name + ".log")
    p = subprocess.Popen(args, env=e, stdout=open(path, "w"), stderr=subprocess.STDOUT)
    p.log_path = path
    procs.append(p)
    return p


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()


def stub(served, **knobs):
    port = free_port()
    env = {f"SSW_STUB__{k.upper()}": str(v) for k, v in knobs.items()}
    p = start([SSW, "stub", "--listen", f"127.0.0.1:{port}", "--served-model", served], env, f"stub-{port}")
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, f"http://127.0.0.1:{port}"


def up(engines, config=None, ssw=None):
    """`ssw up` with workers in front of the given engines (`ssw`: another build's binary);
    returns (proc, gateway url)."""
    port = free_port()
    args = [ssw or SSW, "up", "--listen", f"127.0.0.1:{port}"]
    for pool, url in engines:
        args += ["--engine", f"{pool}={url}"]
    if config:
        path = os.path.join(TMP, f"cfg-{port}.toml")
        open(path, "w").write(config)
        args += ["--config", path]
    p = start(args, None, f"up-{port}")
    wait_http(f"http://127.0.0.1:{port}/readyz", 60)
    return p, f"http://127.0.0.1:{port}"


def bench(url, *args):
    path = os.path.join(TMP, "r.json")
    cmd = [SSW, "bench", "--url", url + "/v1", "-q", "--json", path] + [str(a) for a in args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(path))


def platform_pids(up_proc):
    """gateway, workers and redis-server: every child of `ssw up` (stubs are external here)."""
    return children(up_proc.pid)


def role(pid):
    """gateway, worker or redis, from the command line."""
    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    if b"redis" in cmd[0]:
        return "redis"
    return cmd[1].decode() if len(cmd) > 1 else "?"


def measured(pids, fn):
    before = {p: cpu(p) for p in pids}
    r = fn()
    return r, sum(cpu(p) - before[p] for p in pids)


def fmt(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


# ---------------------------------------------------------------------------------------------
C1_ROUNDS = 3 if QUICK else 5


def overhead():
    """Zero-delay stub: direct vs through `ssw up` (gateway -> Redis -> 2 workers -> the same stub).
    Rows for concurrency 1..256 with the default gateway, then concurrency 1 again with a
    one-thread gateway (`one_thread`: the `gateway.threads = 1` trade-off, for the report)."""
    log("1. overhead")
    s, surl = stub(HEAVY)
    pools = f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "light-unused"\n'
    rows = []
    for one_thread in (False, True):
        u, gurl = up([("heavy", surl), ("heavy", surl), ("light", surl)],
                     config=pools + ("[gateway]\nthreads = 1\n" if one_thread else ""))
        for stream in (False, True):
            for c in ((1,) if one_thread else (1, 16, 64, 256)):
                row = overhead_point(surl, gurl, stream, c)
                row["one_thread"] = one_thread
                rows.append(row)
                log(f"   stream={stream} c={c}{' one-thread gateway' if one_thread else ''}: "
                    f"direct {row['direct']['requests_per_s']:.0f} req/s, platform {row['platform']['requests_per_s']:.0f} req/s")
        stop(u)
    stop(s)
    return rows


def overhead_point(surl, gurl, stream, c):
    n = (300 if c == 1 else 2000) if QUICK else (1000 if c == 1 else 6000)
    common = ["-c", c, "-n", n, "--warmup", 50, "--max-tokens", 16, "--prompt-words", 32, "--metrics-url", "none"]
    if stream:
        common.append("--stream")
    # At concurrency 1 the added latency is a fraction of a millisecond, less than this machine's
    # drift between runs: alternate direct and platform runs and keep the pair whose difference is
    # the median.
    key = "ttft_ms" if stream else "e2e_ms"
    pairs = []
    for _ in range(C1_ROUNDS if c == 1 else 1):
        d = bench(surl, "--mix", HEAVY, *common)
        g = bench(gurl, "--mix", "heavy", *common)
        pairs.append((g[key]["p50"] - d[key]["p50"], d, g))
    pairs.sort(key=lambda x: x[0])
    _, d, g = pairs[len(pairs) // 2]
    return {"stream": stream, "c": c, "direct": d, "platform": g, "added": [x[0] for x in pairs]}


def overhead_cpu_split():
    """CPU per request of the platform processes and of the stub, for non-streaming and
    16-token streams at concurrency 16, measured separately in one run; under "one_thread" the
    same with `gateway.threads = 1`."""
    s, surl = stub(HEAVY)
    out = {}
    for one_thread in (False, True):
        config = f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "light-unused"\n'
        if one_thread:
            config += "[gateway]\nthreads = 1\n"
        u, gurl = up([("heavy", surl), ("heavy", surl), ("light", surl)], config=config)
        pids = platform_pids(u)
        res = {}
        for stream in (False, True):
            args = ["-c", 16, "-n", 2000 if QUICK else 5000, "--warmup", 50, "--max-tokens", 16, "--mix", "heavy", "--metrics-url", "none"]
            if stream:
                args.append("--stream")
            before = {p: cpu(p) for p in pids + [s.pid]}
            r = bench(gurl, *args)
            plat = sum(cpu(p) - before[p] for p in pids)
            st = cpu(s.pid) - before[s.pid]
            by_role = {}
            for p in pids:
                by_role[role(p)] = by_role.get(role(p), 0) + (cpu(p) - before[p]) * 1000 / r["requests"]
            res[stream] = {"platform_ms": plat * 1000 / r["requests"], "stub_ms": st * 1000 / r["requests"],
                           "bench_ms": r["bench_cpu"]["per_request_ms"], "by_role": by_role}
        stop(u)
        if one_thread:
            out["one_thread"] = res
        else:
            out.update(res)
    stop(s)
    return out


# ---------------------------------------------------------------------------------------------
# Workers pull a little beyond the engine's batch (64 sequences) so the next sequence is already
# in the engine when a slot frees; the engine-waiting rule keeps it from hoarding more.
# max_inflight a little above the engines' 64 sequences; the connection cap above the burst's
# 10 000 connections plus the load generator's metrics poller (the default cap is 10 000).
HEADROOM = "[worker]\nmax_inflight = 72\n[gateway]\nmax_connections = 20000\n"

PRESETS = {"heavy": ("a40-qwen2.5-14b-awq", 0.028, 0.001, 0.00035), "light": ("a40-qwen3-8b-awq", 0.016, 0.0006, 0.0002),
           "lora": ("a40-qwen2.5-7b-awq", 0.0148, 0.00056, 0.000185)}

BASE7B = "Qwen/Qwen2.5-7B-Instruct-AWQ"
# The archetype adapters of issue 15: 7 per archetype, Vampire and Zombie first.
ADAPTERS = [f"{kind}-{trait}" for kind in ("vampire", "zombie")
            for trait in ("personality", "dialogue-style", "action-policy", "emotional-response", "world-knowledge",
                          "social-dynamics", "goal-prioritisation")]


def capacity(pool, out_tokens, prompt_tokens, seqs=64):
    _, base, per_seq, prefill = PRESETS[pool]
    step = base + per_seq * seqs + (seqs / out_tokens) * prompt_tokens * prefill
    return seqs / step  # tokens/s of one engine with a full batch


class Sampler(threading.Thread):
    """Samples, every 100 ms, each engine's running count and the gateway's backlog."""

    def __init__(self, stubs, gurl, pool, seqs=64):
        super().__init__(daemon=True)
        self.stubs, self.gurl, self.pool, self.seqs = stubs, gurl, pool, seqs
        self.samples, self.stop_flag = [], False

    def metric(self, url, name, label=None):
        txt = urllib.request.urlopen(url + "/metrics", timeout=2).read().decode()
        tot = 0.0
        for line in txt.splitlines():
            if line.startswith(name) and (label is None or label in line):
                tot += float(line.rsplit(" ", 1)[1])
        return tot

    def run(self):
        t0 = time.time()
        while not self.stop_flag:
            try:
                running = [self.metric(u, "vllm:num_requests_running") for u in self.stubs]
                backlog = self.metric(self.gurl, "ssw_queue_backlog", f'pool="{self.pool}"') if self.gurl else 0.0
                generated = sum(self.metric(u, "vllm:generation_tokens_total") for u in self.stubs)
                self.samples.append((running, backlog, time.time() - t0, generated))
            except Exception:
                pass
            time.sleep(0.1)

    def steady_tokens_per_s(self, start, end):
        """Tokens/s the engines report between two moments of the run (the steady part, without
        ramp-up and the drain of the last answers)."""
        window = [s for s in self.samples if start <= s[2] <= end]
        if len(window) < 2:
            return None
        return (window[-1][3] - window[0][3]) / (window[-1][2] - window[0][2])

    def occupancy(self, start, end):
        """Mean share of the engines' sequence slots running between two moments of the run
        (vLLM's num_requests_running / max_num_seqs, summed over engines)."""
        window = [s for s in self.samples if start <= s[2] <= end]
        if not window:
            return None
        return sum(sum(s[0]) / (self.seqs * len(s[0])) for s in window) / len(window)

    def idle_while_queued(self):
        """Share of samples where jobs waited in Redis while some engine had a free slot."""
        queued = [s for s in self.samples if s[1] > 0]
        if not queued:
            return 0.0, 0
        bad = [s for s in queued if any(r < self.seqs for r in s[0])]
        return len(bad) / len(queued), len(queued)


def saturation():
    log("2. saturation")
    out_tokens, prompt_words = 64, 32
    stubs = [stub(HEAVY, preset=PRESETS["heavy"][0], output_tokens=100000) for _ in range(2)]
    light = stub(LIGHT, preset=PRESETS["light"][0], output_tokens=100000)
    u, gurl = up([("heavy", stubs[0][1]), ("heavy", stubs[1][1]), ("light", light[1])], config=HEADROOM)
    cap_tok = 2 * capacity("heavy", out_tokens, prompt_words + 4)
    cap_req = cap_tok / out_tokens
    rows = []
    levels = (0.5, 1.0, 1.5)
    for level in levels:
        dur = 8 if QUICK else 20
        sampler = Sampler([s[1] for s in stubs], gurl, "heavy")
        sampler.start()
        r = bench(gurl, "--mode", "open", "--rate", cap_req * level, "--duration", f"{dur}s", "--max-tokens", out_tokens,
                  "--prompt-words", prompt_words, "--mix", "heavy", "--stream", "--warmup", 0)
        sampler.stop_flag = True
        sampler.join()
        share, n = sampler.idle_while_queued()
        steady = sampler.steady_tokens_per_s(0.25 * dur, 0.9 * dur)
        rows.append({"level": level, "r": r, "idle_share": share, "queued_samples": n, "cap_tok": cap_tok, "steady": steady, "offered_tok": cap_tok * level})
        log(f"   {level:.0%}: {r['output_tokens_per_s']:.0f} tok/s of {cap_tok:.0f}")
    # Closed loop well above the batch size: the engines never lack work.
    sampler = Sampler([s[1] for s in stubs], gurl, "heavy")
    sampler.start()
    dur = 10 if QUICK else 30
    r = bench(gurl, "-c", 256, "--duration", f"{dur}s", "--max-tokens", out_tokens, "--prompt-words", prompt_words,
              "--mix", "heavy", "--stream", "--warmup", 0)
    sampler.stop_flag = True
    sampler.join()
    share, n = sampler.idle_while_queued()
    steady = sampler.steady_tokens_per_s(0.25 * dur, 0.9 * dur)
    rows.append({"level": "closed-256", "r": r, "idle_share": share, "queued_samples": n, "cap_tok": cap_tok, "steady": steady, "offered_tok": None})
    log(f"   closed 256: {r['output_tokens_per_s']:.0f} tok/s of {cap_tok:.0f}")
    stop(u)
    for s in stubs + [light]:
        stop(s[0])
    return rows


def burst():
    log("3. burst")
    n = 2000 if QUICK else 10000
    out_tokens = 8
    engines = []
    stubs = []
    for pool in ("heavy", "light"):
        for _ in range(2):
            s = stub(HEAVY if pool == "heavy" else LIGHT, preset=PRESETS[pool][0], output_tokens=100000)
            stubs.append(s)
            engines.append((pool, s[1]))
    u, gurl = up(engines, config=HEADROOM)
    t0 = time.time()
    r = bench(gurl, "--mode", "burst", "-n", n, "--max-tokens", out_tokens, "--prompt-words", 16, "--mix", "light=0.7,heavy=0.3",
              "--timeout", "600s")
    drain = time.time() - t0
    # Theoretical: each pool's tokens over its two engines' capacity; the slower pool decides.
    per_pool = {}
    for pool, share in (("heavy", 0.3), ("light", 0.7)):
        tokens = n * share * out_tokens
        per_pool[pool] = tokens / (2 * capacity(pool, out_tokens, 20))
    stop(u)
    for s in stubs:
        stop(s[0])
    failed = sorted(x["e2e_s"] for x in r["samples"] if x["error"] is not None)
    return {"n": n, "r": r, "drain": r["duration_s"], "theory": max(per_pool.values()), "per_pool": per_pool,
            "failed_after_s": [failed[0], failed[-1]] if failed else None}


def keys_file(name, key):
    path = os.path.join(TMP, f"{name}.keys")
    open(path, "w").write(key + "\n")
    return path


def tiers():
    """Tiers under overload: two heavy replicas (A40 preset), 150 % of their capacity offered,
    20 % priority / 30 % default / 50 % flex, streamed. The same offered load with tiers off
    (a tenant whose every request is served at one tier: plain FIFO) is the baseline, and
    priority's TTFT on an idle platform (10 % load, priority only) its reference."""
    log("7. tiers")
    out_tokens, prompt_words = 64, 32
    # The engines schedule by priority too (vLLM --scheduling-policy priority; the stub's timing
    # model does the same): a priority job the worker pulls into a reserved slot of a full engine
    # preempts the last lower-tier sequence instead of waiting for one to end.
    stubs = [stub(HEAVY, preset=PRESETS["heavy"][0], output_tokens=100000, scheduling_policy="priority") for _ in range(2)]
    light = stub(LIGHT, preset=PRESETS["light"][0], output_tokens=100000)
    pools = (f'[pools.heavy]\nserved_model = "{HEAVY}"\nscheduling_policy = "priority"\n'
             f'[pools.light]\nserved_model = "{LIGHT}"\n')
    # The workers keep 8 of their slots for priority work (priority_reserve 0.1 of 80): the
    # other 72 fill the engine's 64 sequences with 8 waiting in it, so a sequence that ends is
    # replaced at the next step, not after the worker's next pull.
    config = HEADROOM.replace("max_inflight = 72", "max_inflight = 80") + pools + (f'[tenants.tiered]\napi_keys_file = "{keys_file("tiered", "tiered-key")}"\n'
                         f'[tenants.fifo]\napi_keys_file = "{keys_file("fifo", "fifo-key")}"\nmax_tier = "flex"\ndefault_tier = "flex"\n')
    cap_tok = 2 * capacity("heavy", out_tokens, prompt_words + 4)
    cap_req = cap_tok / out_tokens
    dur = 12 if QUICK else 30
    # The steady part: from when the engines have filled (128 sequences at the offered rate, with
    # room to spare) to 90 % of the run.
    start = max(0.25 * dur, 1.3 * 128 / (1.5 * cap_req))
    u, gurl = up([("heavy", stubs[0][1]), ("heavy", stubs[1][1]), ("light", light[1])], config=config)
    mix = "priority=0.2,default=0.3,flex=0.5"
    common = ["--mode", "open", "--max-tokens", out_tokens, "--prompt-words", prompt_words, "--mix", "heavy", "--stream",
              "--warmup", 0, "--timeout", "900s"]
    idle = bench(gurl, *common, "--rate", cap_req * 0.1, "--duration", f"{dur // 2}s", "--tier-mix", "priority=1",
                 "--api-key", "tiered-key")
    log(f"   idle priority TTFT p99 {idle['by_tier']['priority']['ttft_ms']['p99']:.0f} ms")
    runs = {}
    for name in ("tiered", "fifo"):
        sampler = Sampler([x[1] for x in stubs], gurl, "heavy")
        sampler.start()
        r = bench(gurl, *common, "--rate", cap_req * 1.5, "--duration", f"{dur}s", "--tier-mix", mix, "--api-key", f"{name}-key")
        sampler.stop_flag = True
        sampler.join()
        steady = sampler.steady_tokens_per_s(start, 0.9 * dur)
        # Picks per tier while the overload lasted: requests whose first token came in the
        # steady part.
        served = {}
        for x in r["samples"]:
            if x["error"] is None and start <= x["start_s"] + x["ttft_s"] <= 0.9 * dur:
                served[x["tier"]] = served.get(x["tier"], 0) + 1
        occupancy = sampler.occupancy(start, 0.9 * dur)
        runs[name] = {"r": r, "steady": steady, "idle_share": sampler.idle_while_queued()[0], "served": served,
                      "occupancy": occupancy}
        t = r["by_tier"]
        log(f"   {name}: priority TTFT p99 {t['priority']['ttft_ms']['p99']:.0f} ms, {steady or 0:.0f} tok/s of {cap_tok:.0f}, "
            f"slots running {100 * (occupancy or 0):.2f} %")
        # Let the backlog drain before the next run.
        while sampler.metric(gurl, "ssw_queue_backlog", 'pool="heavy"') > 0:
            time.sleep(0.5)
    stop(u)
    for x in stubs + [light]:
        stop(x[0])
    return {"idle": idle, "runs": runs, "cap_tok": cap_tok, "cap_req": cap_req, "dur": dur, "mix": mix,
            "start": start}


def tenants():
    """Tenant fairness: tenant A releases a burst of default requests at once, tenant B sends
    2 req/s of the same tier meanwhile. B's wait, against the same with both on one tenant."""
    log("8. tenants")
    n = 2000 if QUICK else 10000
    out_tokens = 8
    stubs = [stub(HEAVY, preset=PRESETS["heavy"][0], output_tokens=100000) for _ in range(2)]
    light = stub(LIGHT, preset=PRESETS["light"][0], output_tokens=100000)
    config = HEADROOM + "".join(
        f'[tenants.{t}]\napi_keys_file = "{keys_file(t, t + "-key")}"\n' for t in ("burst", "steady"))
    u, gurl = up([("heavy", stubs[0][1]), ("heavy", stubs[1][1]), ("light", light[1])], config=config)
    drain = n * out_tokens / (2 * capacity("heavy", out_tokens, 20))
    out = {"n": n, "drain_theory": drain}
    for name, b_key in (("fair", "steady-key"), ("one_tenant", "burst-key")):
        path = os.path.join(TMP, f"burst-{name}.json")
        a = subprocess.Popen([SSW, "bench", "--url", gurl + "/v1", "-q", "--json", path, "--mode", "burst", "-n", str(n),
                              "--max-tokens", str(out_tokens), "--prompt-words", "16", "--mix", "heavy", "--api-key", "burst-key",
                              "--timeout", "900s", "--metrics-url", "none"], stdout=subprocess.DEVNULL)
        time.sleep(1.0)  # the burst is queued
        b = bench(gurl, "--mode", "open", "--rate", 2, "--duration", f"{max(5, int(drain * 0.6))}s", "--max-tokens", out_tokens,
                  "--prompt-words", 16, "--mix", "heavy", "--api-key", b_key, "--warmup", 0, "--timeout", "900s",
                  "--metrics-url", "none")
        a.wait()
        out[name] = {"b": b, "a": json.load(open(path))}
        log(f"   {name}: B's TTFT p99 {b['ttft_ms']['p99']:.0f} ms while A's {n} drained in {out[name]['a']['duration_s']:.1f} s")
    stop(u)
    for x in stubs + [light]:
        stop(x[0])
    return out


def admission():
    """Admission cost: platform CPU per non-streaming request at concurrency 16 (as section 1's
    split), plain against a rate-limited tenant (limits far above the load, so every request
    runs the rate-limit script and its settlement) asking for tiers."""
    log("9. admission cost")
    s, surl = stub(HEAVY)
    config = (f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "light-unused"\n'
              f'[tenants.plain]\napi_keys_file = "{keys_file("plain", "plain-key")}"\n'
              f'[tenants.metered]\napi_keys_file = "{keys_file("metered", "metered-key")}"\n'
              'requests_per_minute = 100000000\ntokens_per_minute = 100000000000\nmax_concurrent = 100000\n')
    u, gurl = up([("heavy", surl), ("heavy", surl), ("light", surl)], config=config)
    pids = platform_pids(u)
    out = {}
    plain = ["-c", 16, "-n", 2000 if QUICK else 5000, "--warmup", 50, "--max-tokens", 16, "--mix", "heavy", "--metrics-url", "none"]
    # Alternate, three rounds each, to see the drift between runs.
    for _ in range(3):
        for name, extra in (("plain", ["--api-key", "plain-key"]),
                            ("tiered_limited", ["--api-key", "metered-key", "--tier-mix", "priority=0.2,default=0.3,flex=0.5"])):
            before = {p: cpu(p) for p in pids}
            r = bench(gurl, *plain, *extra)
            ms = sum(cpu(p) - before[p] for p in pids) * 1000 / r["requests"]
            out.setdefault(name, []).append(ms)
            by_role = {}
            for p in pids:
                by_role[role(p)] = by_role.get(role(p), 0) + (cpu(p) - before[p]) * 1000 / r["requests"]
            out.setdefault("by_role", {}).setdefault(name, []).append(by_role)
            log(f"   {name}: {ms:.3f} ms platform CPU per request "
                f"({', '.join(f'{k} {v:.3f}' for k, v in sorted(by_role.items()))})")
    stop(u)
    stop(s)
    return out


def lora():
    """Archetype adapters: a 7B AWQ base (A40 preset) serving the 14 adapters (7 Vampire, 7 Zombie) on two
    replicas with `max_loras` 4 and a 50 ms swap-in, Zipf popularity (s = 1: the k-th adapter gets 1/k of the
    weight), 80 % of the engines' capacity offered, streamed. Adapter-aware pulling (`adapter_wait` 8 s; another with
    BENCH_ADAPTER_WAIT) against
    plain FIFO (a 1 ms bound: every job is past it at once and taken oldest first), the same load, each on a
    fresh platform and fresh engines."""
    log("10. lora")
    out_tokens, prompt_words = 64, 32
    weights = [1 / (k + 1) for k in range(len(ADAPTERS))]
    mix = ",".join(f"{a}={w / sum(weights):.5f}" for a, w in zip(ADAPTERS, weights))
    modules = "{" + ",".join(f'{a}="/adapters/{a}"' for a in ADAPTERS) + "}"
    adapters = "".join(f'[pools.heavy.adapters.{a}]\nsource = "/adapters/{a}"\nrank = 16\n' for a in ADAPTERS)
    # Every request runs an adapter: each step takes the stub's lora_step_overhead (9 %) longer.
    cap_tok = 2 * capacity("lora", out_tokens, prompt_words + 4) / 1.09
    cap_req = cap_tok / out_tokens
    dur = 15 if QUICK else 40
    runs = {}
    for name, wait in (("aware", os.environ.get("BENCH_ADAPTER_WAIT", "8s")), ("fifo", "1ms")):
        stubs = [stub(BASE7B, preset=PRESETS["lora"][0], output_tokens=100000, lora_modules=modules, max_loras=4,
                      lora_swap_time="50ms") for _ in range(2)]
        light = stub(LIGHT, preset=PRESETS["light"][0], output_tokens=100000)
        pools = (f'[pools.heavy]\nserved_model = "{BASE7B}"\nmax_loras = 4\nadapter_wait = "{wait}"\n{adapters}'
                 f'[pools.light]\nserved_model = "{LIGHT}"\n')
        u, gurl = up([("heavy", s[1]) for s in stubs] + [("light", light[1])], config=HEADROOM + pools)
        r = bench(gurl, "--mode", "open", "--rate", cap_req * 0.8, "--duration", f"{dur}s", "--max-tokens", out_tokens,
                  "--prompt-words", prompt_words, "--mix", mix, "--stream", "--warmup", 0, "--timeout", "900s")
        swaps = sum(Sampler.metric(None, s[1], "ssw_stub_lora_swap_ins_total") for s in stubs)
        ok = r["ok"]
        runs[name] = {"r": r, "swaps": swaps, "per_1000": 1000 * swaps / max(ok, 1)}
        log(f"   {name}: {ok} ok, {r['output_tokens_per_s']:.0f} tok/s of {cap_tok:.0f}, TTFT p99 "
            f"{r['ttft_ms']['p99']:.0f} ms, {swaps:.0f} swap-ins ({runs[name]['per_1000']:.0f} per 1000)")
        stop(u)
        for s in stubs + [light]:
            stop(s[0])
    return {"runs": runs, "cap_tok": cap_tok, "cap_req": cap_req, "dur": dur, "adapters": len(ADAPTERS),
            "wait": os.environ.get("BENCH_ADAPTER_WAIT", "8s")}


def overhead_ab(base):
    """Section 1's CPU split for this build against `base` (an earlier build's ssw binary, e.g.
    the commit before a feature), alternating, three rounds each, in one run: what the feature
    costs, free of the drift between runs. Same stub, same load; non-streaming and 16-token
    streams at concurrency 16."""
    log("1b. overhead: this build against " + base)
    s, surl = stub(HEAVY)
    config = f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "light-unused"\n'
    out = {"base": base, "rounds": []}
    for _ in range(3):
        for name, binary in (("base", base), ("head", SSW)):
            u, gurl = up([("heavy", surl), ("heavy", surl), ("light", surl)], config=config, ssw=binary)
            pids = platform_pids(u)
            row = {"build": name}
            for stream in (False, True):
                args = ["-c", 16, "-n", 2000 if QUICK else 5000, "--warmup", 50, "--max-tokens", 16, "--mix", "heavy",
                        "--metrics-url", "none"] + (["--stream"] if stream else [])
                before = {p: cpu(p) for p in pids}
                r = bench(gurl, *args)
                key = "stream" if stream else "plain"
                row[key] = sum(cpu(p) - before[p] for p in pids) * 1000 / r["requests"]
                by_role = {}
                for p in pids:
                    by_role[role(p)] = by_role.get(role(p), 0) + (cpu(p) - before[p]) * 1000 / r["requests"]
                row[key + "_by_role"] = by_role
            stop(u)
            out["rounds"].append(row)
            split = lambda k: ", ".join(f"{r} {v:.3f}" for r, v in sorted(row[k + "_by_role"].items()))
            log(f"   {name}: {row['plain']:.3f} ms non-streaming ({split('plain')}), "
                f"{row['stream']:.3f} ms streaming ({split('stream')}) (platform CPU per request)")
    stop(s)
    return out


def ab_test():
    """An A/B test between the pools: route `npc-dialogue` at heavy 50 / light 50 over 1 000
    sticky users, streamed 64-token answers, open loop at 60 % of the two engines' capacity
    (A40 presets, one replica each): the per-variant figures a team reads to decide. Then the
    client's cost of shadow traffic: the route at heavy 100 % with and without a shadow copy of
    every request to light, same load."""
    log("10. A/B test and shadow traffic")
    out_tokens, prompt_words = 64, 32
    heavy = stub(HEAVY, preset=PRESETS["heavy"][0], output_tokens=100000)
    light = stub(LIGHT, preset=PRESETS["light"][0], output_tokens=100000)
    cap = {p: capacity(p, out_tokens, prompt_words + 4) / out_tokens for p in ("heavy", "light")}
    # 50/50 split: each engine gets half the rate; 60 % of the slower one's capacity, doubled.
    rate = 2 * 0.6 * min(cap.values())
    dur = 15 if QUICK else 40
    common = ["--mode", "open", "--max-tokens", out_tokens, "--prompt-words", prompt_words, "--mix", "npc-dialogue",
              "--stream", "--warmup", 0, "--timeout", "300s", "--users", 1000, "--duration", f"{dur}s"]
    route = lambda variants, shadow="": (f'[routes.npc-dialogue]\nvariants = [{variants}]\n{shadow}')
    pools = f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "{LIGHT}"\n'
    out = {"rate": rate, "cap": cap, "dur": dur}
    u, gurl = up([("heavy", heavy[1]), ("light", light[1])],
                 config=HEADROOM + pools + route('{ pool = "heavy", weight = 50 }, { pool = "light", weight = 50 }'))
    r = bench(gurl, *common, "--rate", rate)
    out["split"] = {k: v for k, v in r.items() if k != "samples"}
    for v, f in sorted(r["by_variant"].items()):
        log(f"   {v}: {f['requests']} requests, {f['ok']} ok, TTFT p50/p95 {f['ttft_ms']['p50']:.0f}/{f['ttft_ms']['p95']:.0f} ms, "
            f"ITL p50 {f['itl_ms']['p50']:.1f} ms, {f['output_tokens'] / r['duration_s']:.0f} tok/s")
    stop(u)
    # Shadow: the client's TTFT with every request copied to light, against none; heavy at 60 %.
    shadow = {}
    for name, extra in (("none", ""), ("shadow", 'shadow = { pool = "light", share = 1.0 }\n')):
        u, gurl = up([("heavy", heavy[1]), ("light", light[1])],
                     config=HEADROOM + pools + route('{ pool = "heavy", weight = 1 }', extra))
        x = bench(gurl, *common, "--rate", 0.6 * cap["heavy"])
        text = urllib.request.urlopen(gurl + "/metrics", timeout=5).read().decode()
        ran = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                  if l.startswith("ssw_gateway_requests_total{") and 'variant="shadow"' in l and 'code="ok"' in l)
        shadow[name] = {"ttft_ms": x["ttft_ms"], "e2e_ms": x["e2e_ms"], "requests": x["requests"], "ok": x["ok"],
                        "shadow_ok": ran}
        log(f"   shadow {name}: client TTFT p50/p99 {x['ttft_ms']['p50']:.0f}/{x['ttft_ms']['p99']:.0f} ms, "
            f"{int(ran)} shadow copies answered")
        stop(u)
    out["shadow"] = shadow
    for x in (heavy, light):
        stop(x[0])
    return out


def rollout():
    """Model rollout under load: two heavy replicas (A40 preset), streamed 64-token answers at 60 %
    of their joint capacity (120 % of one), open loop. After a steady spell, `ssw rollout --pool
    heavy --model new --engine-api` replaces them one by one, each stub taking `load_s` to load
    (a 14B AWQ vLLM restart takes 40–90 s on an A40: research/next-features-anchors.md §1). While a
    replica is out the other runs over capacity and the queue holds the rest; the figures are TTFT
    before, during and after, requests failed, the backlog's peak, and `ssw bench --plot`."""
    log("11. model rollout")
    out_tokens, prompt_words = 64, 32
    load_s = 15 if QUICK else 60
    stubs = [stub(HEAVY, preset=PRESETS["heavy"][0], output_tokens=100000) for _ in range(2)]
    light = stub(LIGHT, preset=PRESETS["light"][0], output_tokens=100000)
    pools = f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "{LIGHT}"\n'
    u, gurl = up([("heavy", stubs[0][1]), ("heavy", stubs[1][1]), ("light", light[1])], config=HEADROOM + pools)
    cap_req = 2 * capacity("heavy", out_tokens, prompt_words + 4) / out_tokens
    rate = 0.6 * cap_req
    before_s, after_s = (10, 20) if QUICK else (30, 45)
    # Two loads, each drain, plus the checks: the run outlasts the rollout.
    dur = before_s + 2 * (load_s + 10) + after_s
    plot = os.path.join(ROOT, "docs", "benchmarks-rollout.svg")
    path = os.path.join(TMP, "rollout.json")
    cmd = [SSW, "bench", "--url", gurl + "/v1", "-q", "--json", path, "--plot", plot, "--mode", "open", "--rate", str(rate),
           "--max-tokens", str(out_tokens), "--prompt-words", str(prompt_words), "--mix", "heavy", "--stream",
           "--warmup", "0", "--timeout", "600s", "--duration", f"{dur}s"]
    t0 = time.time()
    b = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    time.sleep(before_s)
    t_start = time.time() - t0
    ro = subprocess.run([SSW, "rollout", "--redis-url", redis_url(u), "--pool", "heavy", "--model", "new-model",
                         "--engine-api", "--load-time", f"{load_s}s"], capture_output=True, text=True)
    t_end = time.time() - t0
    log("   " + ro.stdout.strip().replace("\n", "\n   "))
    if ro.returncode != 0:
        log("   rollout failed: " + ro.stderr.strip())
    b.wait()
    r = json.load(open(path))
    stop(u)
    for x in stubs + [light]:
        stop(x[0])
    # Bench time starts when its measured run starts (just after launch): windows by send time.
    ok_samples = [x for x in r["samples"] if x["status"] == 200 and not x.get("error")]
    def window(a, z):
        xs = [x["ttft_s"] * 1000 for x in ok_samples if a <= x["start_s"] < z]
        return {"n": len(xs), "p50": pct(xs, 0.5) or 0.0, "p99": pct(xs, 0.99) or 0.0}
    out = {
        "rate": rate, "cap_req": cap_req, "load_s": load_s, "dur": dur, "ok": ro.returncode == 0,
        "rollout_s": t_end - t_start, "requests": r["requests"], "failed": r["requests"] - r["ok"],
        "errors": r["errors"], "peak_backlog": (r.get("queue") or {}).get("max_depth"),
        "before": window(0, t_start), "during": window(t_start, t_end), "after": window(t_end + 10, dur),
    }
    log(f"   {out['requests']} requests, {out['failed']} failed; rollout {out['rollout_s']:.0f} s; peak backlog "
        f"{out['peak_backlog']}; TTFT p99 before/during/after {out['before']['p99']:.0f}/{out['during']['p99']:.0f}/"
        f"{out['after']['p99']:.0f} ms")
    return out


def redis_url(up_proc):
    """The Redis URL `ssw up` printed."""
    for line in open(up_proc.log_path):
        if line.startswith("redis: "):
            return line.split()[1]
    raise RuntimeError(f"no redis URL in {up_proc.log_path}")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(q * len(xs) + 0.5) - 1))] if xs else None


BALANCE_TOKENS = "16:9,1000:1"  # 90 % short answers, 10 % very long ones


def balance():
    log("4. balance")
    # 8 slots per replica, so a few long answers fill a replica; fast steps keep the run short.
    seqs, step_base, step_per_seq = 8, 0.005, 0.0005
    knobs = dict(batching="true", step_base="5ms", step_per_seq="0.5ms", prefill_per_token="0ms", max_num_seqs=seqs,
                 kv_tokens=1000000)
    a, b = stub(HEAVY, output_tokens=100000, **knobs), stub(HEAVY, output_tokens=100000, **knobs)
    # max_inflight = max_num_seqs: a worker takes no job its engine would have to queue.
    u, gurl = up([("heavy", a[1]), ("heavy", b[1]), ("light", a[1])],
                 config=f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "light-unused"\n'
                        f'[worker]\nmax_inflight = {seqs}\n')
    dur = 15 if QUICK else 40
    parts = [(float(n), float(w)) for n, w in (p.split(":") for p in BALANCE_TOKENS.split(","))]
    mean_tokens = sum(n * w for n, w in parts) / sum(w for _, w in parts)
    cap_req = 2 * seqs / (step_base + step_per_seq * seqs) / mean_tokens
    rate = 0.9 * cap_req
    common = ["--mode", "open", "--poisson", "--stream", "--duration", f"{dur}s", "--max-tokens", BALANCE_TOKENS,
              "--prompt-words", 8, "--timeout", "600s"]

    def busy(sampler):
        tot = [0.0, 0.0]
        for running, *_ in sampler.samples:
            for i, r in enumerate(running):
                tot[i] += r
        s = sum(tot) or 1
        return [t / s for t in tot]

    def figures(samples):
        ok = [x for x in samples if x["error"] is None]
        short = [x["e2e_s"] * 1000 for x in ok if x["output_tokens"] <= 16]
        return {"requests": len(samples), "errors": len(samples) - len(ok),
                "ttft_p50": pct([x["ttft_s"] * 1000 for x in ok], 0.5),
                "ttft_p99": pct([x["ttft_s"] * 1000 for x in ok], 0.99),
                "short_p99": pct(short, 0.99), "e2e_p99": pct([x["e2e_s"] * 1000 for x in ok], 0.99)}

    sp = Sampler([a[1], b[1]], gurl, "heavy", seqs)
    sp.start()
    pull = bench(gurl, "--mix", "heavy", "--rate", rate, *common)
    sp.stop_flag = True
    sp.join()
    # Push: each arrival goes to a replica chosen at random (two independent Poisson streams of
    # half the rate), as a router without a shared queue does; each engine queues what it cannot run.
    sq = Sampler([a[1], b[1]], gurl, "heavy", seqs)
    sq.start()
    results = {}

    def push(url, key):
        results[key] = bench(url, "--mix", HEAVY, "--metrics-url", "none", "--rate", rate / 2, *common)

    ts = [threading.Thread(target=push, args=(a[1], "a")), threading.Thread(target=push, args=(b[1], "b"))]
    [t.start() for t in ts]
    [t.join() for t in ts]
    sq.stop_flag = True
    sq.join()
    stop(u)
    stop(a[0])
    stop(b[0])
    return {"pull": figures(pull["samples"]), "push": figures(results["a"]["samples"] + results["b"]["samples"]),
            "pull_busy": busy(sp), "push_busy": busy(sq), "rate": rate, "capacity": cap_req, "tokens": BALANCE_TOKENS,
            "duration": dur}


def fanout():
    log("5. streaming fan-out")
    s, surl = stub(HEAVY, tpot="1ms", ttft="1ms")
    u, gurl = up([("heavy", surl), ("heavy", surl), ("light", surl)],
                 config=f'[pools.heavy]\nserved_model = "{HEAVY}"\n[pools.light]\nserved_model = "light-unused"\n')
    pids = platform_pids(u)
    before = {p: cpu(p) for p in pids}
    r = bench(gurl, "-c", 128, "--duration", f"{5 if QUICK else 15}s", "--max-tokens", 256, "--mix", "heavy", "--stream", "--metrics-url", "none")
    plat = sum(cpu(p) - before[p] for p in pids)
    d = bench(surl, "-c", 128, "--duration", f"{5 if QUICK else 15}s", "--max-tokens", 256, "--mix", HEAVY, "--stream", "--metrics-url", "none")
    stop(u)
    stop(s)
    chunks = r["output_tokens_per_s"]
    return {"chunks_per_s": chunks, "direct_chunks_per_s": d["output_tokens_per_s"], "cpu_per_chunk_us": plat * 1e6 / (chunks * r["duration_s"]),
            "platform_cores": plat / r["duration_s"]}


# ---------------------------------------------------------------------------------------------
def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """The highest VmRSS of a process while the block runs (sampled every 10 ms)."""

    def __init__(self, pid):
        self.pid, self.peak, self.done = pid, rss_kib(pid), False

    def __enter__(self):
        def sample():
            while not self.done:
                self.peak = max(self.peak, rss_kib(self.pid))
                time.sleep(0.01)
        self.t = threading.Thread(target=sample, daemon=True)
        self.t.start()
        return self

    def __exit__(self, *_):
        self.done = True
        self.t.join()


def gateway_pid(u):
    return next(p for p in platform_pids(u) if role(p) == "gateway")


EDGE_CONFIG = """
[gateway]
max_connections = 20000
[pools.heavy]
served_model = "Qwen/Qwen2.5-14B-Instruct-AWQ"
max_model_len = 32768
[pools.light]
served_model = "Qwen/Qwen3-8B-AWQ"
max_model_len = 32768
"""


def edge():
    """The gateway's bounds under careless clients: a normal request's latency with 10 000
    connections held open (2 000 of them half-way through a head) against none; the gateway's
    peak memory for 64 concurrent 2 MB bodies, 10 000 queued requests and 1 000 streams whose
    clients never read, against its idle baseline."""
    log("7. edge")
    out = {}
    engines, stubs = [], []
    for pool in ("heavy", "light"):
        for _ in range(2):
            s = stub(HEAVY if pool == "heavy" else LIGHT, output_tokens=4000, max_model_len=32768)
            stubs.append(s)
            engines.append((pool, s[1]))
    u, gurl = up(engines, config=EDGE_CONFIG)
    gw = gateway_pid(u)
    n = 200 if QUICK else 500
    common = ["-c", 1, "-n", n, "--mix", "light", "--max-tokens", 16, "--prompt-words", 16, "--metrics-url", "none"]
    bench(gurl, *common)  # warm
    out["idle_rss_kib"] = rss_kib(gw)
    out["latency_alone"] = bench(gurl, *common)
    with PeakRss(gw) as m:
        out["bodies"] = bench(gurl, "-c", 64, "-n", 64, "--body-bytes", 2_000_000, "--max-tokens", 1, "--mix", "light",
                              "--metrics-url", "none")
    out["bodies_rss_kib"] = m.peak
    time.sleep(2)
    out["bodies_after_rss_kib"] = rss_kib(gw)
    # The unread streams go to heavy; the measured requests to light.
    with PeakRss(gw) as m:
        out["unread"] = bench(gurl, *common, "--hold-unread", 1000, "--hold-unread-tokens", 4000, "--hold-model", "heavy")
        time.sleep(3)  # the streams fill their buffers, overflow, hit the write timeout
    out["unread_rss_kib"] = m.peak
    time.sleep(2)
    out["unread_after_rss_kib"] = rss_kib(gw)
    with PeakRss(gw) as m:
        out["latency_held"] = bench(gurl, *common, "--hold-idle", 10000, "--hold-slow", 2000)
    out["held_rss_kib"] = m.peak
    time.sleep(2)
    out["after_rss_kib"] = rss_kib(gw)
    stop(u)
    for s in stubs:
        stop(s[0])
    # 10 000 requests queued: engines that take a minute to answer, so the burst waits in Redis.
    engines, stubs = [], []
    for _ in range(2):
        s = stub(HEAVY, ttft="60s", max_num_seqs=4)
        stubs.append(s)
        engines.append(("heavy", s[1]))
    for _ in range(2):
        s = stub(LIGHT)
        stubs.append(s)
        engines.append(("light", s[1]))
    u, gurl = up(engines, config=EDGE_CONFIG)
    gw = gateway_pid(u)
    out["queue_idle_rss_kib"] = rss_kib(gw)
    q = 2000 if QUICK else 10000
    with PeakRss(gw) as m:
        out["queued"] = bench(gurl, "--mode", "burst", "-n", q, "--mix", "heavy", "--timeout", "15s", "--max-tokens", 16)
    out["queued_n"] = q
    out["queued_rss_kib"] = m.peak
    stop(u)
    for s in stubs:
        stop(s[0])
    return out


def sysctl(name, value=None):
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        if value is not None:
            open(path, "w").write(str(value))
        return int(open(path).read().split()[0])
    except OSError:
        return None


def main():
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    # A burst of 10 000 connects needs deep accept and SYN queues (the NixOS module sets the same),
    # and on loopback a deep per-CPU input queue: with the default 1000 the burst's packets are
    # dropped (/proc/net/softnet_stat) and connections stall in retransmits. Without root the
    # current values stay, and the report says which were in force.
    for name in ("net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.core.netdev_max_backlog"):
        if (sysctl(name) or 0) < 65535:
            sysctl(name, 65535)
    if "--render" in sys.argv:
        # Renders docs/benchmarks.md again from a kept run (after a change to the report only).
        render_saved(json.load(open(sys.argv[sys.argv.index("--render") + 1])))
        return
    subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "ssw"], cwd=ROOT, check=True)
    if "--only" in sys.argv:
        # One scenario, its figures as JSON on stdout; the report is left alone.
        name = sys.argv[sys.argv.index("--only") + 1]
        scenarios = {f.__name__: f for f in (overhead, overhead_cpu_split, saturation, burst, balance, fanout, edge,
                                             tiers, tenants, admission, ab_test, rollout, lora)}
        if BASE_BIN:
            scenarios["overhead_ab"] = lambda: overhead_ab(BASE_BIN)
        if name not in scenarios:
            sys.exit(f"--only: unknown scenario {name!r}; one of {', '.join(scenarios)}")
        result = scenarios[name]()
        print(json.dumps(without_samples(result), indent=1, default=str))
        if "--into-report" in sys.argv:
            # Puts this scenario's figures into the kept full run and renders docs/benchmarks.md
            # from it (a scenario added or changed since that run).
            saved = os.path.join(tempfile.gettempdir(), "ssw-bench-results.json")
            d = json.load(open(saved))
            d.setdefault("extra", {})[name] = result
            json.dump(d, open(saved, "w"), default=str)
            render_saved(d)
            log(f"wrote docs/benchmarks.md with {name} from this run, the rest from {saved}")
        return
    ov = overhead()
    split = overhead_cpu_split()
    sat = saturation()
    bu = burst()
    ba = balance()
    fo = fanout()
    ed = edge()
    ti = tiers()
    te = tenants()
    ad = admission()
    if BASE_BIN:
        ad["ab"] = overhead_ab(BASE_BIN)
    abt = ab_test()
    extra = {"rollout": rollout(), "lora": lora()}
    # Kept, so the report can be rendered again without running (`--render FILE`).
    saved = os.path.join(tempfile.gettempdir(), "ssw-bench-results.json")
    json.dump({"sections": [ov, split, sat, bu, ba, fo, ed, [ti, te, ad, abt]], "machine": machine(), "extra": extra},
              open(saved, "w"), default=str)
    log(f"results kept in {saved}")
    write_report(ov, split, sat, bu, ba, fo, ed, (ti, te, ad, abt), extra)
    log("wrote docs/benchmarks.md")


def render_saved(d):
    """docs/benchmarks.md from a kept run (its JSON: split's keys are strings there)."""
    from bench_report import render
    ov, split, sat, bu, ba, fo, ed, tiered = d["sections"]
    split = {k if k in ("one_thread",) else k == "true": v for k, v in split.items()}
    if "one_thread" in split:
        split["one_thread"] = {k == "true": v for k, v in split["one_thread"].items()}
    text = render(ov, split, sat, bu, ba, fo, ed, tuple(tiered), d["machine"], d.get("extra", {}))
    open(os.path.join(ROOT, "docs", "benchmarks.md"), "w").write(text)


def without_samples(x):
    if isinstance(x, dict):
        return {k: without_samples(v) for k, v in x.items() if k != "samples"}
    if isinstance(x, (list, tuple)):
        return [without_samples(v) for v in x]
    return x


def write_report(ov, split, sat, bu, ba, fo, ed, tiered, extra):
    from bench_report import render  # scripts/bench_report.py
    text = render(ov, split, sat, bu, ba, fo, ed, tiered, machine(), extra)
    open(os.path.join(ROOT, "docs", "benchmarks.md"), "w").write(text)


def machine():
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    ver = subprocess.run([SSW, "--version"], capture_output=True, text=True).stdout.strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return {"somaxconn": sysctl("net.core.somaxconn"), "syn_backlog": sysctl("net.ipv4.tcp_max_syn_backlog"),
            "netdev_backlog": sysctl("net.core.netdev_max_backlog"),
            "date": datetime.date.today().isoformat(), "cpu": cpu_model, "cores": os.cpu_count(),
            "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30), "kernel": platform.release(),
            "ssw": ver, "rustc": rustc, "redis": redis, "quick": QUICK}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        main()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
