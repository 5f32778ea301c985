# The Docker Compose document for a topology (builtins only). Inside compose, services reach each
# other by service name: the ssw configs point at `redis:6379`, `vllm-<replica>:8000`, and the
# gateway listens on 0.0.0.0:8080 (its /metrics, /readyz on 9300, not published). Published ports
# bind to 127.0.0.1 (the gateway's to `gateway.publishAddress`). Secrets come from files beside
# the compose file (`secrets/api-keys`, `secrets/redis-password`, `secrets/engine-api-key`,
# docs/deploy-compose.md); ssw containers run as uid 65534.
{ sswImage ? "ssw:latest", redisImage ? "docker.io/library/redis:7.4-alpine", prometheusImage ? "docker.io/prom/prometheus:v3.5.0" }:
topo:
let
  l = import ./lib.nix;
  t = import ./topology.nix;
  s = topo.settings;
  redisUrl = "redis://redis:6379";
  aof = s.redis.persistence == "aof";
  engineService = r: (if topo.engine == "vllm" then "vllm-" else "stub-") + r.name;
  engineUrl = r: "http://${engineService r}:8000";
  gatewayPort = topo.gateway.port;
  # An unprivileged user for the ssw containers (the image has no /etc/passwd; any uid works).
  user = "65534:65534";
  secretPath = name: "/run/secrets/${name}";
  # Tenants with keys: each file is the secret `tenant-<name>` (./secrets/tenant-<name>).
  tenantsWithKeys = builtins.filter (n: (s.tenants.${n}.apiKeysFile or null) != null) (builtins.attrNames s.tenants);
  tenantSecrets = map (n: "tenant-${n}") tenantsWithKeys;

  # Compose interpolates `$NAME`/`${NAME}` in every value, inline config `content` included, and
  # `$$` is its escape for a literal `$` (docs.docker.com/reference/compose-file/interpolation).
  # Config contents are files to deliver byte for byte (the alert rules' `{{ $labels.pool }}`).
  escape = builtins.replaceStrings [ "$" ] [ "$$" ];
  content = name: text: { inherit name; value.content = escape text; };
  configFile = name: value: content name (builtins.toJSON value);

  vllmService = r: {
    name = engineService r;
    value = {
      image = r.image;
      # vLLM reads its key from VLLM_API_KEY (vllm/entrypoints/openai/api_server.py:
      # `args.api_key or envs.VLLM_API_KEY`); the secret file is read into it at start, so the
      # key is neither in this file nor on the command line. `$$` is Compose's literal `$`.
      entrypoint = [ "/bin/sh" "-c" "export VLLM_API_KEY=\"$$(cat ${secretPath "engine-api-key"})\"; exec vllm serve \"$$@\"" "vllm" ];
      command = r.vllmArgs;
      secrets = [ "engine-api-key" ];
      ipc = "host";
      environment = {
        HF_TOKEN = "\${HF_TOKEN:-}";
        VLLM_CACHE_ROOT = "/root/.cache/vllm";
      } // r.engineEnvironment;
      volumes = [ "hf-cache:/root/.cache/huggingface" "vllm-cache:/root/.cache/vllm" ];
      ports = [ "127.0.0.1:${toString r.port}:8000" ];
      deploy.resources.reservations.devices = [{
        driver = "nvidia";
        device_ids = [ (toString r.gpu) ];
        capabilities = [ "gpu" ];
      }];
      healthcheck = {
        test = [ "CMD" "python3" "-c" "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')" ];
        interval = "15s";
        timeout = "5s";
        retries = 3;
        # Download, weight load, torch.compile and CUDA graphs take minutes on first start.
        start_period = "900s";
      };
      restart = "unless-stopped";
    } // l.optionalAttrs (r.startAfter != null) {
      # Two vLLMs on one GPU must not profile memory at the same time.
      depends_on.${"vllm-" + r.startAfter}.condition = "service_healthy";
    };
  };

  stubService = r: {
    name = engineService r;
    value = {
      image = sswImage;
      inherit user;
      command = [ "stub" "--config" "/etc/ssw/config.json" ];
      configs = [{ source = "stub-${r.name}"; target = "/etc/ssw/config.json"; }];
      secrets = [ "engine-api-key" ];
      ports = [ "127.0.0.1:${toString r.port}:8000" ];
      restart = "unless-stopped";
    };
  };

  workerService = r: {
    name = "worker-${r.name}";
    value = {
      image = sswImage;
      inherit user;
      command = [ "worker" "--config" "/etc/ssw/config.json" ];
      configs = [{ source = "worker-${r.name}"; target = "/etc/ssw/config.json"; }];
      secrets = [ "redis-password" "engine-api-key" ];
      depends_on = {
        redis.condition = "service_healthy";
        ${engineService r}.condition = if topo.engine == "vllm" then "service_healthy" else "service_started";
      };
      restart = "unless-stopped";
      stop_grace_period = "${toString topo.workerStopSeconds}s";
    };
  };

  engineServices = map (r: if topo.engine == "vllm" then vllmService r else stubService r) topo.replicas;
in
{
  name = "ssw";
  services = builtins.listToAttrs (engineServices ++ map workerService topo.replicas) // {
    redis = {
      image = redisImage;
      # The image's entrypoint drops to the redis user; the password file is read before it.
      # maxmemory with noeviction: a full Redis refuses new jobs (503 queue_memory_full) and never
      # evicts a queued one. AOF (settings.redis.persistence = "aof") keeps the queue in a volume.
      entrypoint = [ "/bin/sh" "-c" "exec docker-entrypoint.sh redis-server --save '' --appendonly ${if aof then "yes --appendfsync everysec" else "no"} --maxmemory ${toString (l.bytes "redis.maxMemory" s.redis.maxMemory)} --maxmemory-policy noeviction --requirepass \"$$(cat ${secretPath "redis-password"})\"" ];
    } // l.optionalAttrs aof { volumes = [ "redis-data:/data" ]; } // {
      secrets = [ "redis-password" ];
      # On loopback (password required) for the operators' commands on the host: `ssw status`,
      # `ssw drain`, `ssw rollout` (docs/deploy-compose.md, "Swapping a model").
      ports = [ "127.0.0.1:${toString s.redis.port}:6379" ];
      healthcheck = {
        test = [ "CMD-SHELL" "redis-cli -a \"$$(cat ${secretPath "redis-password"})\" --no-auth-warning ping | grep -q PONG" ];
        interval = "5s";
        timeout = "3s";
        retries = 5;
      };
      restart = "unless-stopped";
    };
    gateway = {
      image = sswImage;
      inherit user;
      command = [ "gateway" "--config" "/etc/ssw/config.json" ];
      configs = [{ source = "gateway"; target = "/etc/ssw/config.json"; }];
      secrets = [ "api-keys" "redis-password" ] ++ tenantSecrets;
      ports = [ "${topo.gateway.publishAddress}:${gatewayPort}:8080" ];
      depends_on.redis.condition = "service_healthy";
      restart = "unless-stopped";
    };
  } // l.optionalAttrs topo.prometheus.enable {
    prometheus = {
      image = prometheusImage;
      command = [ "--config.file=/etc/prometheus/prometheus.yml" ];
      configs = [
        { source = "prometheus"; target = "/etc/prometheus/prometheus.yml"; }
        { source = "prometheus-alerts"; target = "/etc/prometheus/alerts.yml"; }
      ];
      ports = [ "127.0.0.1:${toString topo.prometheus.port}:9090" ];
      restart = "unless-stopped";
    };
  };
  secrets = builtins.listToAttrs (map (name: { inherit name; value.file = "./secrets/${name}"; }) ([ "api-keys" "redis-password" "engine-api-key" ] ++ tenantSecrets));
  configs = builtins.listToAttrs ([
    (configFile "gateway" (l.recursiveUpdate (t.gatewayConfig s redisUrl "0.0.0.0:8080" "0.0.0.0:9300") {
      redis.password_file = secretPath "redis-password";
      gateway.api_keys_file = secretPath "api-keys";
      tenants = builtins.listToAttrs (map (name: { inherit name; value.api_keys_file = secretPath "tenant-${name}"; }) tenantsWithKeys);
    }))
  ]
  # No NVML in compose: the Nix-built image's glibc does not read the libraries the NVIDIA
  # toolkit injects, and workers reserve no GPU (docs/deploy-compose.md, "GPU metrics").
  ++ map
    (r: configFile "worker-${r.name}" (l.recursiveUpdate (t.workerConfig s redisUrl (r // { exportsGpu = false; }) (engineUrl r) "0.0.0.0:9300") {
      redis.password_file = secretPath "redis-password";
      worker.engine_api_key_file = secretPath "engine-api-key";
    }))
    topo.replicas
  ++ (if topo.engine == "stub" then map (r: configFile "stub-${r.name}" (l.recursiveUpdate (t.stubConfig s r "0.0.0.0:8000") { stub.api_key_file = secretPath "engine-api-key"; })) topo.replicas else [ ])
  ++ l.optional topo.prometheus.enable (content "prometheus-alerts" (builtins.readFile ../modules/observability/alerts.yml))
  ++ l.optional topo.prometheus.enable (configFile "prometheus" {
    global.scrape_interval = topo.prometheus.scrapeInterval;
    rule_files = [ "/etc/prometheus/alerts.yml" ];
    scrape_configs = [
      { job_name = "ssw-gateway"; static_configs = [{ targets = [ "gateway:9300" ]; }]; }
      {
        job_name = if topo.engine == "vllm" then "vllm" else "ssw-stub";
        static_configs = map (r: { targets = [ "${engineService r}:8000" ]; labels = { replica = r.name; pool = r.pool; gpu = toString r.gpu; }; }) topo.replicas;
      }
      {
        job_name = "ssw-workers";
        static_configs = map (r: { targets = [ "worker-${r.name}:9300" ]; labels = { replica = r.name; pool = r.pool; gpu = toString r.gpu; }; }) topo.replicas;
      }
    ];
  }));
  volumes = l.optionalAttrs (topo.engine == "vllm") { hf-cache = { }; vllm-cache = { }; }
    // l.optionalAttrs aof { redis-data = { }; };
}
