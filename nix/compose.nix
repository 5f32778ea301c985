# The Docker Compose document for a topology (builtins only). Inside compose, services reach each
# other by service name: the ssw configs point at `redis:6379`, `vllm-<replica>:8000`, and the
# gateway listens on 0.0.0.0:8080. vLLM ports are published on 127.0.0.1 only.
{ sswImage ? "ssw:latest", redisImage ? "docker.io/library/redis:7.4-alpine", prometheusImage ? "docker.io/prom/prometheus:v3.5.0" }:
topo:
let
  l = import ./lib.nix;
  t = import ./topology.nix;
  s = topo.settings;
  redisUrl = "redis://redis:6379";
  engineService = r: (if topo.engine == "vllm" then "vllm-" else "stub-") + r.name;
  engineUrl = r: "http://${engineService r}:8000";
  gatewayPort = topo.gateway.port;

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
      command = r.vllmArgs;
      ipc = "host";
      environment = {
        HF_TOKEN = "\${HF_TOKEN:-}";
        VLLM_CACHE_ROOT = "/root/.cache/vllm";
      };
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
      command = [ "stub" "--config" "/etc/ssw/config.json" ];
      configs = [{ source = "stub-${r.name}"; target = "/etc/ssw/config.json"; }];
      ports = [ "127.0.0.1:${toString r.port}:8000" ];
      restart = "unless-stopped";
    };
  };

  workerService = r: {
    name = "worker-${r.name}";
    value = {
      image = sswImage;
      command = [ "worker" "--config" "/etc/ssw/config.json" ];
      configs = [{ source = "worker-${r.name}"; target = "/etc/ssw/config.json"; }];
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
      command = [ "redis-server" "--save" "" "--appendonly" "no" ];
      healthcheck = {
        test = [ "CMD" "redis-cli" "ping" ];
        interval = "5s";
        timeout = "3s";
        retries = 5;
      };
      restart = "unless-stopped";
    };
    gateway = {
      image = sswImage;
      command = [ "gateway" "--config" "/etc/ssw/config.json" ];
      configs = [{ source = "gateway"; target = "/etc/ssw/config.json"; }];
      ports = [ "${gatewayPort}:8080" ];
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
  configs = builtins.listToAttrs ([
    (configFile "gateway" (t.gatewayConfig s redisUrl "0.0.0.0:8080"))
  ]
  # No NVML in compose: the Nix-built image's glibc does not read the libraries the NVIDIA
  # toolkit injects, and workers reserve no GPU (docs/deploy-compose.md, "GPU metrics").
  ++ map (r: configFile "worker-${r.name}" (t.workerConfig s redisUrl (r // { exportsGpu = false; }) (engineUrl r) "0.0.0.0:9300")) topo.replicas
  ++ (if topo.engine == "stub" then map (r: configFile "stub-${r.name}" (t.stubConfig s r "0.0.0.0:8000")) topo.replicas else [ ])
  ++ l.optional topo.prometheus.enable (content "prometheus-alerts" (builtins.readFile ../modules/observability/alerts.yml))
  ++ l.optional topo.prometheus.enable (configFile "prometheus" {
    global.scrape_interval = topo.prometheus.scrapeInterval;
    rule_files = [ "/etc/prometheus/alerts.yml" ];
    scrape_configs = [
      { job_name = "ssw-gateway"; static_configs = [{ targets = [ "gateway:8080" ]; }]; }
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
  volumes = l.optionalAttrs (topo.engine == "vllm") { hf-cache = { }; vllm-cache = { }; };
}
