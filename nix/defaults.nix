# The A40 host: two GPUs, each running one heavy (Qwen2.5-14B-Instruct-AWQ) and one light
# (Qwen3-8B-AWQ) vLLM replica. Memory fractions per GPU: 0.50 + 0.38 = 0.88 (≤ 0.92 enforced),
# leaving headroom for the CUDA context of two processes. See docs/deploy-nixos.md for the figures.
{
  engine = "vllm"; # or "stub": `ssw stub` processes instead of vLLM containers (no GPU needed)
  gpus = [ 0 1 ];

  pools = {
    heavy = {
      servedModel = "Qwen/Qwen2.5-14B-Instruct-AWQ";
      # `model` (what the engine loads: a Hugging Face repo or a path) defaults to servedModel.
      aliases = [ ];
      image = "docker.io/vllm/vllm-openai:v0.31.0";
      gpuMemoryUtilization = 0.50;
      maxModelLen = 32768;
      maxNumSeqs = 64;
      extraArgs = [ "--enable-auto-tool-choice" "--tool-call-parser" "hermes" ];
      requestDefaults = { };
      maxQueue = 10000;
      maxQueueBytes = "256MiB";
      maxCrashRetries = 1;
      queueTimeout = "120s";
    };
    light = {
      servedModel = "Qwen/Qwen3-8B-AWQ";
      aliases = [ ];
      image = "docker.io/vllm/vllm-openai:v0.31.0";
      gpuMemoryUtilization = 0.38;
      maxModelLen = 32768;
      maxNumSeqs = 64;
      extraArgs = [ "--enable-auto-tool-choice" "--tool-call-parser" "hermes" "--reasoning-parser" "qwen3" ];
      # Qwen3 thinks unless told not to; light is the fast tier.
      requestDefaults = { chat_template_kwargs = { enable_thinking = false; }; };
      maxQueue = 10000;
      maxQueueBytes = "256MiB";
      maxCrashRetries = 1;
      queueTimeout = "120s";
    };
  };

  # Replica name -> pool and GPU. Engine ports are assigned from `ports.engineBase` in name order
  # unless a replica sets `port`.
  replicas = {
    heavy-0 = { pool = "heavy"; gpu = 0; };
    light-0 = { pool = "light"; gpu = 0; };
    heavy-1 = { pool = "heavy"; gpu = 1; };
    light-1 = { pool = "light"; gpu = 1; };
  };

  ports = {
    engineBase = 8001;
    workerMetricsBase = 9301; # each worker's /metrics, in replica name order
  };

  # vLLM sizes each instance as a fraction of the whole GPU, and each process also holds a
  # CUDA context and CUDA graphs outside its fraction (about 1.5-2.5 GiB): two instances fit
  # when their fractions sum to about 0.94 or less on a 44.5 GiB A40 (docs/deploy-nixos.md).
  maxGpuMemoryUtilization = 0.92;

  redis = {
    host = "127.0.0.1";
    port = 6379;
    passwordFile = null; # a file outside the Nix store, e.g. from sops/agenix
    # "none": a restarted Redis starts empty and each gateway enqueues again the requests it
    # still holds; "aof": Redis keeps the queue itself (appendfsync everysec).
    persistence = "none";
    # Redis's maxmemory (with noeviction: a full Redis refuses writes, requests get 503
    # queue_memory_full, nothing queued is evicted). At least the pools' maxQueueBytes summed.
    maxMemory = "1GiB";
  };

  gateway = {
    listen = "127.0.0.1:8080";
    # /metrics and /readyz (operators only); /healthz is on both listeners.
    opsListen = "127.0.0.1:9300";
    # compose only: the host address its gateway port is published on ("0.0.0.0" to open it).
    publishAddress = "127.0.0.1";
    maxBody = "2MiB";
    apiKeysFile = null; # required when `listen` is not loopback, unless allowUnauthenticated
    allowUnauthenticated = false;
    stallTimeout = "30s";
    # How long /v1/responses answers are kept for previous_response_id ("0s": none).
    responsesTtl = "1h";
  };

  # The key workers present to their engines (`vllm serve` reads VLLM_API_KEY), so nothing else
  # on the host can call an engine. null: the NixOS module generates one under /var/lib/ssw
  # (compose takes it from secrets/engine-api-key).
  engineApiKeyFile = null;

  # Tenants: who shares the platform, known by its API keys (docs/configuration.md, `[tenants]`):
  #   tenants.npc-pipeline = { apiKeysFile = "/run/secrets/npc-keys"; defaultTier = "flex";
  #     maxTier = "default"; requestsPerMinute = 6000; tokensPerMinute = 2000000;
  #     maxConcurrent = 200; maxQueued = 5000; tokensPerDay = 500000000; };
  # `tenants.default` (no keys file of its own) sets the tiers and limits of gateway.apiKeysFile's
  # keys.
  tenants = { };

  # Routes: public model names spread over weighted variants (docs/configuration.md,
  # `[routes]`; docs/runbook-ab-test.md):
  #   routes.npc-dialogue = {
  #     variants = [ { pool = "heavy"; weight = 90; } { pool = "light"; weight = 10; } ];
  #     shadow = { pool = "light"; share = 0.05; };
  #     guard = { maxErrorRate = 0.05; maxTtftP95Ratio = 1.5; window = "5m"; minRequests = 200; };
  #   };
  # Changing only routes, pools' aliases and requestDefaults, or tenants' tiers and limits
  # reloads the gateway (SIGHUP) instead of restarting it. `ssw routes apply` changes them
  # at run time without a rebuild.
  routes = { };

  # Defaults for every worker.
  worker = {
    maxInflight = 64;
    drainTimeout = "60s";
  };

  stub = {
    ttft = "20ms";
    tpot = "5ms";
    outputTokens = 16;
  };

  prometheus = {
    enable = true;
    port = 9090;
    scrapeInterval = "15s";
  };

  grafana = {
    enable = false;
    port = 3000;
    secretKeyFile = null; # required by Grafana on nixos-26.05 when enabled
  };

  volumes = {
    hfCache = "/var/lib/ssw/hf-cache";
    vllmCache = "/var/lib/ssw/vllm-cache";
  };
}
