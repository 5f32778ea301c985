# The platform's topology as pure functions of one attribute set (builtins only).
#
#   normalise : settings -> topology
#
# `settings` is what a user writes (see defaults.nix; anything left out takes its default). The
# topology lists every replica with its GPU, engine port, container name and full vLLM command
# line, the `ssw` configuration of the gateway and of each worker (the schema `ssw check-config`
# validates), and the Prometheus scrape configuration. compose.nix renders it for Docker Compose,
# modules/ssw-inference.nix for NixOS. Bad input throws, naming the attribute.
let
  l = import ./lib.nix;
  defaults = import ./defaults.nix;

  poolDefaults = {
    aliases = [ ];
    image = defaults.pools.heavy.image;
    gpuMemoryUtilization = 0.45;
    maxModelLen = 8192;
    maxNumSeqs = 64;
    extraArgs = [ ];
    requestDefaults = { };
    maxQueue = 10000;
    maxQueueBytes = "256MiB";
    maxCrashRetries = 1;
    queueTimeout = "120s";
    # vLLM's --scheduling-policy: "priority" orders each engine's own queue by the request's
    # tier too (workers send vLLM's `priority`; docs/architecture.md, tiers).
    schedulingPolicy = "fcfs";
    # Share of each worker's maxInflight kept for priority work, and queue settings per service
    # tier: `tiers.flex = { maxQueue = 2000; queueTimeout = "15m"; minShare = 0.1; }` (fields
    # left out take ssw's defaults; docs/configuration.md, `[pools.<p>.tiers.<tier>]`).
    priorityReserve = 0.1;
    tiers = { };
    # LoRA adapters on the pool's base model: `adapters.vampire-personality = { source =
    # "/var/lib/ssw/adapters/vampire-personality"; rank = 16; }` (a local path or a Hugging Face
    # repository). They become vLLM's `--enable-lora --max-loras --max-lora-rank --max-cpu-loras
    # --lora-modules name=source …`, and models clients name (docs/configuration.md).
    adapters = { };
    # Adapters one engine holds in GPU slots (vLLM --max-loras) and in its CPU cache
    # (--max-cpu-loras; null: every adapter of the pool, at least maxLoras).
    maxLoras = 4;
    maxCpuLoras = null;
    # LoRA on the engines (null: when the pool declares adapters; true: also without any, so
    # `ssw adapters load` can add the first at runtime), and the largest rank they accept
    # (vLLM --max-lora-rank; null: the largest adapter's, 16 without adapters).
    lora = null;
    maxLoraRank = null;
    # Adapter-aware pulling's bound (docs/architecture.md).
    adapterWait = "2s";
    # Stub timing of this pool's replicas (engine = "stub"), over the top-level `stub`.
    stub = { };
  };

  # Pools merge by name over the default pools, as NixOS users expect of an attribute set:
  # `pools.heavy.aliases = [ … ]` changes one field of the default heavy pool and keeps light;
  # `pools.medium = { servedModel = …; }` adds a pool; `pools.light = null` removes one. A field
  # set in a pool replaces the default's value (`requestDefaults` too: it is the pool's whole
  # request defaults). Replicas are the host's layout: setting `replicas` replaces the default
  # layout as a whole (a GPU host lists exactly the replicas it runs). Other settings merge
  # recursively.
  mergePools = user:
    let
      merged = defaults.pools // user;
      kept = builtins.filter (n: merged.${n} != null) (builtins.attrNames merged);
    in
    builtins.listToAttrs (map
      (name:
        let p = user.${name} or { }; in {
          inherit name;
          value =
            if !(builtins.isAttrs p) then l.fail "pools.${name}" "must be an attribute set (or null to remove the pool)"
            else (defaults.pools.${name} or { }) // p;
        })
      kept);

  mergeSettings = user:
    let
      merged = l.recursiveUpdate (removeAttrs defaults [ "pools" "replicas" ]) (removeAttrs user [ "pools" "replicas" ]);
      pools = mergePools (user.pools or { });
      replicas = user.replicas or defaults.replicas;
    in
    merged // {
      pools = builtins.mapAttrs
        (name: p:
          if !(p ? servedModel) then l.fail "pools.${name}.servedModel" "is required"
          else poolDefaults // { model = p.servedModel; } // p)
        pools;
      inherit replicas;
    };

  validName = s: builtins.isString s && builtins.match "[A-Za-z0-9_.-]+" s != null;

  # Nix attribute → ssw field, for tiers and tenants; unknown attributes fail evaluation.
  tierFields = { maxQueue = "max_queue"; queueTimeout = "queue_timeout"; minShare = "min_share"; };
  adapterFields = { source = "source"; rank = "rank"; };
  # The ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
  loraRanks = [ 1 8 16 32 64 128 256 320 512 ];
  tenantFields = {
    apiKeysFile = "api_keys_file";
    defaultTier = "default_tier";
    maxTier = "max_tier";
    requestsPerMinute = "requests_per_minute";
    tokensPerMinute = "tokens_per_minute";
    maxConcurrent = "max_concurrent";
    maxQueued = "max_queued";
    requestsPerDay = "requests_per_day";
    tokensPerDay = "tokens_per_day";
  };
  routeFields = { variants = "variants"; sticky = "sticky"; salt = "salt"; shadow = "shadow"; guard = "guard"; };
  # Whether a pool's engines run with LoRA (see the pool defaults' `lora`).
  loraOn = pool: if pool.lora == null then pool.adapters != { } else pool.lora;
  variantFields = { pool = "pool"; adapter = "adapter"; weight = "weight"; name = "name"; };
  shadowFields = { pool = "pool"; share = "share"; };
  guardFields = {
    maxErrorRate = "max_error_rate";
    maxTtftP95Ratio = "max_ttft_p95_ratio";
    window = "window";
    minRequests = "min_requests";
  };
  tierNames = [ "priority" "default" "flex" ];
  imap0 = f: xs: builtins.genList (i: f i (builtins.elemAt xs i)) (builtins.length xs);
  # An attribute set renamed by `fields`, nulls left out (ssw applies its defaults).
  renamed = fields: set: builtins.listToAttrs (map (k: { name = fields.${k}; value = set.${k}; })
    (builtins.filter (k: set.${k} != null) (builtins.attrNames set)));
  unknownIn = fields: set: builtins.filter (k: !(fields ? ${k})) (builtins.attrNames set);

  check = s:
    let
      poolNames = builtins.attrNames s.pools;
      replicaNames = builtins.attrNames s.replicas;
      checks =
        [
          {
            ok = builtins.elem s.engine [ "vllm" "stub" ];
            path = "engine";
            msg = "must be \"vllm\" or \"stub\", got ${builtins.toJSON s.engine}";
          }
          { ok = poolNames != [ ]; path = "pools"; msg = "at least one pool is needed"; }
          {
            ok = builtins.elem s.redis.persistence [ "none" "aof" ];
            path = "redis.persistence";
            msg = "must be \"none\" or \"aof\", got ${builtins.toJSON s.redis.persistence}";
          }
          { ok = replicaNames != [ ]; path = "replicas"; msg = "at least one replica is needed"; }
        ]
        ++ map (n: { ok = validName n; path = "pools.${n}"; msg = "pool names use letters, digits, `-`, `_`, `.`"; }) poolNames
        ++ map
          (n: {
            ok = builtins.elem s.pools.${n}.schedulingPolicy [ "fcfs" "priority" ];
            path = "pools.${n}.schedulingPolicy";
            msg = "must be \"fcfs\" or \"priority\", got ${builtins.toJSON s.pools.${n}.schedulingPolicy}";
          })
          poolNames
        ++ map (n: { ok = validName n; path = "replicas.${n}"; msg = "replica names use letters, digits, `-`, `_`, `.`"; }) replicaNames
        ++ map
          (n:
            let r = s.replicas.${n}; in {
              ok = r ? pool && builtins.elem r.pool poolNames;
              path = "replicas.${n}.pool";
              msg = "unknown pool ${builtins.toJSON (r.pool or null)} (pools: ${builtins.concatStringsSep ", " poolNames})";
            })
          replicaNames
        ++ map
          (n:
            let r = s.replicas.${n}; in {
              ok = r ? gpu && builtins.elem r.gpu s.gpus;
              path = "replicas.${n}.gpu";
              msg = "GPU ${builtins.toJSON (r.gpu or null)} is not in gpus (${builtins.toJSON s.gpus})";
            })
          replicaNames
        ++ map
          (p: {
            ok = builtins.any (n: s.replicas.${n}.pool == p) replicaNames;
            path = "pools.${p}";
            msg = "no replica serves this pool (an empty pool would only ever time out)";
          })
          poolNames
        ++ map
          (p:
            let u = s.pools.${p}.gpuMemoryUtilization; in {
              ok = (builtins.isFloat u || builtins.isInt u) && u > 0 && u < 1;
              path = "pools.${p}.gpuMemoryUtilization";
              msg = "must be a fraction between 0 and 1, got ${builtins.toJSON u}";
            })
          poolNames
        ++ map
          (p: {
            ok = builtins.isInt s.pools.${p}.maxModelLen && s.pools.${p}.maxModelLen > 0;
            path = "pools.${p}.maxModelLen";
            msg = "must be a positive integer";
          })
          poolNames
        ++ map
          (p: {
            ok = builtins.isInt s.pools.${p}.maxLoras && s.pools.${p}.maxLoras > 0;
            path = "pools.${p}.maxLoras";
            msg = "must be a positive integer";
          })
          poolNames
        ++ map
          (p: let v = s.pools.${p}.lora; in {
            ok = v == null || builtins.isBool v;
            path = "pools.${p}.lora";
            msg = "must be null or a boolean, got ${builtins.toJSON v}";
          })
          poolNames
        ++ map
          (p: let
            r = s.pools.${p}.maxLoraRank;
            ranks = map (a: s.pools.${p}.adapters.${a}.rank or 0) (builtins.attrNames s.pools.${p}.adapters);
          in {
            ok = r == null || (builtins.elem r loraRanks && builtins.all (x: !(builtins.isInt x) || x <= r) ranks);
            path = "pools.${p}.maxLoraRank";
            msg = "must be null or one of vLLM's ranks ${builtins.toJSON loraRanks}, at least every adapter's rank, got ${builtins.toJSON r}";
          })
          poolNames
        ++ map
          (p: let c = s.pools.${p}.maxCpuLoras; in {
            # vLLM refuses --max-cpu-loras below --max-loras.
            ok = c == null || (builtins.isInt c && c >= s.pools.${p}.maxLoras);
            path = "pools.${p}.maxCpuLoras";
            msg = "must be null or an integer of at least maxLoras (${toString s.pools.${p}.maxLoras}), got ${builtins.toJSON c}";
          })
          poolNames
        ++ l.concatMap
          (p: l.concatMap
            (a:
              let ad = s.pools.${p}.adapters.${a}; at = "pools.${p}.adapters.${a}"; in
              [
                { ok = builtins.match "[A-Za-z0-9_-]+" a != null && builtins.stringLength a <= 64; path = at; msg = "adapter names use letters, digits, `-`, `_` (at most 64)"; }
                { ok = ad ? source && builtins.isString ad.source && ad.source != ""; path = "${at}.source"; msg = "is required: a local path or a Hugging Face repository"; }
                { ok = ad ? rank && builtins.elem ad.rank loraRanks; path = "${at}.rank"; msg = "must be one of vLLM's ranks ${builtins.toJSON loraRanks}, got ${builtins.toJSON (ad.rank or null)}"; }
              ] ++ map (k: { ok = false; path = "${at}.${k}"; msg = "unknown setting; known: ${builtins.concatStringsSep ", " (builtins.attrNames adapterFields)}"; }) (unknownIn adapterFields ad))
            (builtins.attrNames s.pools.${p}.adapters))
          poolNames;
      # A Nix path literal (`./secrets/redis`) would be copied into the world-readable store
      # the moment it is interpolated: secrets are absolute paths as strings, outside it.
      secret = path: v: {
        ok = v == null || (builtins.isString v && builtins.substring 0 1 v == "/"
          && builtins.substring 0 (builtins.stringLength builtins.storeDir + 1) v != builtins.storeDir + "/");
        inherit path;
        msg = "must be an absolute path outside the Nix store, as a string (\"/run/secrets/…\"), so the secret never enters the store; got ${if builtins.isPath v then "a Nix path literal" else builtins.toJSON v}";
      };
      tenantNames = builtins.attrNames s.tenants;
      tiers = l.concatMap
        (p: [
          {
            ok = let r = s.pools.${p}.priorityReserve; in
              (builtins.isFloat r || builtins.isInt r) && r >= 0 && r < 1;
            path = "pools.${p}.priorityReserve";
            msg = "must be a fraction in [0, 1), got ${builtins.toJSON s.pools.${p}.priorityReserve}";
          }
        ] ++ map
          (t: {
            ok = builtins.elem t tierNames;
            path = "pools.${p}.tiers.${t}";
            msg = "unknown tier; tiers are ${builtins.concatStringsSep ", " tierNames}";
          })
          (builtins.attrNames s.pools.${p}.tiers)
        ++ l.concatMap
          (t: map
            (k: { ok = false; path = "pools.${p}.tiers.${t}.${k}"; msg = "unknown setting; known: ${builtins.concatStringsSep ", " (builtins.attrNames tierFields)}"; })
            (unknownIn tierFields s.pools.${p}.tiers.${t}))
          (builtins.attrNames s.pools.${p}.tiers))
        poolNames;
      tenants = l.concatMap
        (n:
          let t = s.tenants.${n}; in
          [
            { ok = builtins.isAttrs t; path = "tenants.${n}"; msg = "must be an attribute set"; }
            { ok = builtins.match "[A-Za-z0-9_-]+" n != null; path = "tenants.${n}"; msg = "tenant names use letters, digits, `-` and `_`"; }
            {
              ok = n == "default" || (t.apiKeysFile or null) != null;
              path = "tenants.${n}.apiKeysFile";
              msg = "is required: a tenant is known by its keys (only `default` takes gateway.apiKeysFile's)";
            }
            {
              ok = n != "default" || (t.apiKeysFile or null) == null;
              path = "tenants.default.apiKeysFile";
              msg = "the default tenant's keys are gateway.apiKeysFile";
            }
            (secret "tenants.${n}.apiKeysFile" (t.apiKeysFile or null))
          ]
          ++ map (k: { ok = false; path = "tenants.${n}.${k}"; msg = "unknown setting; known: ${builtins.concatStringsSep ", " (builtins.attrNames tenantFields)}"; })
            (unknownIn tenantFields t)
          ++ map
            (k: {
              ok = builtins.elem t.${k} tierNames;
              path = "tenants.${n}.${k}";
              msg = "must be one of ${builtins.concatStringsSep ", " tierNames}, got ${builtins.toJSON t.${k}}";
            })
            (builtins.filter (k: t ? ${k}) [ "defaultTier" "maxTier" ]))
        tenantNames;
      secrets = [
        (secret "redis.passwordFile" s.redis.passwordFile)
        (secret "gateway.apiKeysFile" s.gateway.apiKeysFile)
        (secret "grafana.secretKeyFile" s.grafana.secretKeyFile)
        (secret "engineApiKeyFile" s.engineApiKeyFile)
      ];
      routed = routedNames s;
      routes = l.concatMap
        (n:
          let
            r = s.routes.${n};
            variants = r.variants or null;
            sub = path: fields: v: map
              (k: { ok = false; path = "${path}.${k}"; msg = "unknown setting; known: ${builtins.concatStringsSep ", " (builtins.attrNames fields)}"; })
              (if builtins.isAttrs v then unknownIn fields v else [ ]);
          in
          [
            { ok = builtins.isAttrs r; path = "routes.${n}"; msg = "must be an attribute set"; }
            { ok = validName n; path = "routes.${n}"; msg = "route names use letters, digits, `-`, `_`, `.`"; }
            { ok = !(builtins.elem n routed); path = "routes.${n}"; msg = "already a pool's name, served model or alias"; }
            {
              ok = builtins.isList variants && variants != [ ];
              path = "routes.${n}.variants";
              msg = "a list of one or more { pool; weight; } is needed";
            }
          ]
          ++ sub "routes.${n}" routeFields r
          ++ builtins.concatLists (imap0
            (i: v: [
              {
                ok = builtins.isAttrs v && builtins.elem (v.pool or null) poolNames;
                path = "routes.${n}.variants.${toString i}.pool";
                msg = "unknown pool ${builtins.toJSON (v.pool or null)} (pools: ${builtins.concatStringsSep ", " poolNames})";
              }
              (let known = if builtins.isAttrs v && builtins.isString (v.pool or null) then builtins.attrNames ((s.pools.${v.pool} or { }).adapters or { }) else [ ]; in {
                ok = !(builtins.isAttrs v && v ? adapter) || builtins.elem v.adapter known;
                path = "routes.${n}.variants.${toString i}.adapter";
                msg = "pool ${builtins.toJSON (v.pool or null)} has no adapter ${builtins.toJSON (v.adapter or null)} (adapters: ${builtins.concatStringsSep ", " known})";
              })
            ] ++ sub "routes.${n}.variants.${toString i}" variantFields v)
            (if builtins.isList variants then variants else [ ]))
          ++ (if !(r ? shadow) then [ ] else [
            {
              ok = builtins.elem (r.shadow.pool or null) poolNames;
              path = "routes.${n}.shadow.pool";
              msg = "unknown pool ${builtins.toJSON (r.shadow.pool or null)} (pools: ${builtins.concatStringsSep ", " poolNames})";
            }
          ] ++ sub "routes.${n}.shadow" shadowFields r.shadow)
          ++ (if r ? guard then sub "routes.${n}.guard" guardFields r.guard else [ ]))
        (builtins.attrNames s.routes);
      failed = builtins.filter (c: !c.ok) (checks ++ tiers ++ tenants ++ routes ++ secrets);
    in
    if failed == [ ] then s else let c = builtins.head failed; in l.fail c.path c.msg;

  # Per-GPU memory check: the fractions of vLLM replicas sharing a GPU add up.
  checkMemory = s: replicas:
    let
      perGpu = map
        (gpu:
          let on = builtins.filter (r: r.gpu == gpu) replicas; in {
            inherit gpu on;
            total = l.sum (map (r: r.gpuMemoryUtilization) on);
          })
        s.gpus;
      over = builtins.filter (g: g.total > s.maxGpuMemoryUtilization + 0.000001) perGpu;
      describe = r: "${r.name} (pools.${r.pool}.gpuMemoryUtilization = ${builtins.toJSON r.gpuMemoryUtilization})";
    in
    if s.engine != "vllm" || over == [ ] then replicas
    else
      let g = builtins.head over; in
      l.fail "pools" "GPU ${toString g.gpu} is over-committed: replicas ${builtins.concatStringsSep " + " (map describe g.on)} = ${builtins.toJSON g.total} > maxGpuMemoryUtilization ${builtins.toJSON s.maxGpuMemoryUtilization}";

  checkUnique = what: path: xs:
    let d = l.duplicates xs; in
    if d == [ ] then true else l.fail path "duplicate ${what} ${builtins.toJSON (builtins.head d)}";

  # Every pool's name, served model, aliases and adapters: what `model` may name.
  routedNames = s: l.concatMap (p: [ p s.pools.${p}.servedModel ] ++ s.pools.${p}.aliases ++ builtins.attrNames s.pools.${p}.adapters) (builtins.attrNames s.pools);

  # Every name that routes to a pool must route to one pool only.
  checkRouting = s:
    let names = routedNames s;
    in checkUnique "model name (pool name, alias or servedModel)" "pools" names;

  vllmArgs = pool: [
    pool.model
    "--served-model-name" pool.servedModel
    "--host" "0.0.0.0"
    "--port" "8000"
    "--gpu-memory-utilization" (l.argString pool.gpuMemoryUtilization)
    "--max-model-len" (toString pool.maxModelLen)
    "--max-num-seqs" (toString pool.maxNumSeqs)
  ]
  # vLLM SchedulerConfig.policy: Literal["fcfs", "priority"]
  # (https://docs.vllm.ai/en/v0.11.2/api/vllm/config/scheduler/); --scheduling-policy
  # {fcfs,priority}; with priority, requests are handled by their `priority` field (lower
  # first), then arrival time.
  ++ (if pool.schedulingPolicy == "priority" then [ "--scheduling-policy" "priority" ] else [ ])
  # vLLM LoRAConfig (vllm/config/lora.py): --max-loras adapters per batch (GPU slots),
  # --max-lora-rank the largest rank (buffers are sized for it), --max-cpu-loras at least
  # --max-loras; --lora-modules name=path (research/next-features-anchors.md §4b).
  ++ (let
        names = builtins.attrNames pool.adapters;
        n = builtins.length names;
        ranks = map (a: pool.adapters.${a}.rank) names;
        maxRank = builtins.foldl' (m: r: if r > m then r else m) 0 ranks;
        cpu = if pool.maxCpuLoras != null then pool.maxCpuLoras
              else if n > pool.maxLoras then n else pool.maxLoras;
        rank = if pool.maxLoraRank != null then pool.maxLoraRank
               else if n == 0 then 16 else maxRank;
      in
      if !(loraOn pool) then [ ] else [
        "--enable-lora"
        "--max-loras" (toString pool.maxLoras)
        "--max-lora-rank" (toString rank)
        "--max-cpu-loras" (toString cpu)
      ] ++ (if n > 0 then [ "--lora-modules" ] ++ map (a: "${a}=${pool.adapters.${a}.source}") names else [ ]))
  ++ map l.argString pool.extraArgs;

  mkReplicas = s:
    let
      names = builtins.attrNames s.replicas;
      one = i: name:
        let
          r = s.replicas.${name};
          pool = s.pools.${r.pool};
          port = r.port or (s.ports.engineBase + i);
          # Replicas on one GPU start one after another (vLLM mis-sizes its KV cache when two
          # profile memory at once): each waits for the previous one on its GPU, in name order.
          sameGpu = builtins.filter (n: s.replicas.${n}.gpu == r.gpu) names;
          pos = l.indexOf name sameGpu;
        in
        {
          inherit name port;
          inherit (r) pool gpu;
          metricsPort = r.metricsPort or (s.ports.workerMetricsBase + i);
          # One worker per GPU exports the GPU's NVML metrics, so none is counted twice (stub
          # engines have no GPU).
          exportsGpu = pos == 0 && s.engine == "vllm";
          containerName = "ssw-vllm-${name}";
          engineUrl = "http://127.0.0.1:${toString port}";
          image = r.image or pool.image;
          gpuMemoryUtilization = pool.gpuMemoryUtilization;
          maxInflight = r.maxInflight or (if pool.maxNumSeqs < s.worker.maxInflight then pool.maxNumSeqs else s.worker.maxInflight);
          startAfter = if pos > 0 then builtins.elemAt sameGpu (pos - 1) else null;
          vllmArgs = vllmArgs pool;
          # A pool with adapters loads more at runtime (`ssw adapters load`): vLLM serves
          # /v1/load_lora_adapter only with this set (research/next-features-anchors.md §4b).
          engineEnvironment = l.optionalAttrs (loraOn pool) {
            VLLM_ALLOW_RUNTIME_LORA_UPDATING = "True";
          };
        };
      list = builtins.genList (i: one i (builtins.elemAt names i)) (builtins.length names);
    in
    assert checkUnique "port" "replicas.<name>.port / metricsPort, gateway.listen / opsListen"
      (map (r: r.port) list ++ map (r: r.metricsPort) list
        ++ map (a: builtins.fromJSON (l.last (builtins.split ":" a))) [ s.gateway.listen s.gateway.opsListen ]);
    checkMemory s list;

  # The ssw configuration (same schema as `ssw check-config`), for one role.
  sswPools = s: builtins.mapAttrs
    (_: p: {
      served_model = p.servedModel;
      inherit (p) aliases;
      max_queue = p.maxQueue;
      max_queue_bytes = p.maxQueueBytes;
      max_crash_retries = p.maxCrashRetries;
      queue_timeout = p.queueTimeout;
      scheduling_policy = p.schedulingPolicy;
      priority_reserve = p.priorityReserve;
      defaults = p.requestDefaults;
      max_model_len = p.maxModelLen;
      max_loras = p.maxLoras;
      adapter_wait = p.adapterWait;
    } // l.optionalAttrs (p.adapters != { }) {
      adapters = builtins.mapAttrs (_: renamed adapterFields) p.adapters;
    } // l.optionalAttrs (p.tiers != { }) {
      tiers = builtins.mapAttrs (_: renamed tierFields) p.tiers;
    })
    s.pools;

  # `[tenants]` without the key files: their paths depend on where the deployment puts
  # credentials (modules/ssw-inference.nix, compose.nix add them).
  sswTenants = s: builtins.mapAttrs (_: t: renamed tenantFields (removeAttrs t [ "apiKeysFile" ])) s.tenants;

  # `[routes]`, renamed; ssw check-config validates the rest (weights, shares, bounds).
  sswRoutes = s: builtins.mapAttrs
    (_: r: renamed routeFields r // {
      variants = map (renamed variantFields) r.variants;
    } // l.optionalAttrs (r ? shadow) { shadow = renamed shadowFields r.shadow; }
      // l.optionalAttrs (r ? guard) { guard = renamed guardFields r.guard; })
    s.routes;

  # Secret paths (redis.password_file, gateway.api_keys_file) depend on where the deployment puts
  # credentials; modules/ssw-inference.nix adds them per systemd unit.
  sswBase = s: redisUrl: {
    redis = { url = redisUrl; };
    pools = sswPools s;
  };

  gatewayConfig = s: redisUrl: listen: opsListen: sswBase s redisUrl // {
    gateway = {
      inherit listen;
      ops_listen = opsListen;
      max_body = s.gateway.maxBody;
      stall_timeout = s.gateway.stallTimeout;
      responses_ttl = s.gateway.responsesTtl;
      allow_unauthenticated = s.gateway.allowUnauthenticated;
    };
  } // l.optionalAttrs (s.tenants != { }) { tenants = sswTenants s; }
    // l.optionalAttrs (s.routes != { }) { routes = sswRoutes s; };

  workerConfig = s: redisUrl: r: engineUrl: metricsListen: sswBase s redisUrl // {
    worker = {
      listen = metricsListen;
      gpu_metrics = if r.exportsGpu then "configured" else "off";
      pool = r.pool;
      id = r.name;
      engine_url = engineUrl;
      max_inflight = r.maxInflight;
      drain_timeout = s.worker.drainTimeout;
      gpus = [ r.gpu ];
    };
  };

  stubConfig = s: r: listen:
    let
      pool = s.pools.${r.pool};
      timing = s.stub // pool.stub;
    in
    {
      pools = sswPools s;
      stub = {
        inherit listen;
        served_model = pool.servedModel;
        max_model_len = pool.maxModelLen;
        max_num_seqs = pool.maxNumSeqs;
        scheduling_policy = pool.schedulingPolicy;
        ttft = timing.ttft;
        tpot = timing.tpot;
        output_tokens = timing.outputTokens;
      } // l.optionalAttrs (loraOn pool) {
        # The stub serves the pool's adapters as vLLM would (--lora-modules, --max-loras).
        lora_modules = builtins.mapAttrs (_: a: a.source) pool.adapters;
        max_loras = pool.maxLoras;
      };
    };

  normalise = user:
    let
      s = check (mergeSettings user);
      replicas = assert checkRouting s; mkReplicas s;
      redisUrl = "redis://${s.redis.host}:${toString s.redis.port}";
      gatewayPort = l.last (builtins.split ":" s.gateway.listen);
      opsPort = l.last (builtins.split ":" s.gateway.opsListen);
    in
    {
      inherit (s) engine gpus pools volumes redis stub;
      settings = s;
      inherit replicas;
      gateway = { inherit (s.gateway) listen opsListen publishAddress; port = gatewayPort; inherit opsPort; };
      # systemd TimeoutStopSec / compose stop_grace_period of a worker: its drain plus 15 s to
      # hand back unstarted jobs and deregister before SIGKILL.
      workerStopSeconds = l.seconds "worker.drainTimeout" s.worker.drainTimeout + 15;
      ssw = {
        gateway = gatewayConfig s redisUrl s.gateway.listen s.gateway.opsListen;
        workers = builtins.listToAttrs (map (r: { name = r.name; value = workerConfig s redisUrl r r.engineUrl "127.0.0.1:${toString r.metricsPort}"; }) replicas);
        stubs = builtins.listToAttrs (map (r: { name = r.name; value = stubConfig s r "127.0.0.1:${toString r.port}"; }) replicas);
      };
      prometheus = s.prometheus // {
        scrapeConfigs = [
          {
            job_name = "ssw-gateway";
            scrape_interval = s.prometheus.scrapeInterval;
            static_configs = [{ targets = [ "127.0.0.1:${opsPort}" ]; }];
          }
          {
            job_name = if s.engine == "vllm" then "vllm" else "ssw-stub";
            scrape_interval = s.prometheus.scrapeInterval;
            static_configs = map
              (r: {
                targets = [ "127.0.0.1:${toString r.port}" ];
                labels = { replica = r.name; pool = r.pool; gpu = toString r.gpu; };
              })
              replicas;
          }
          {
            job_name = "ssw-workers";
            scrape_interval = s.prometheus.scrapeInterval;
            static_configs = map
              (r: {
                targets = [ "127.0.0.1:${toString r.metricsPort}" ];
                labels = { replica = r.name; pool = r.pool; gpu = toString r.gpu; };
              })
              replicas;
          }
        ];
      };
      inherit (s) grafana;
    };
in
{
  inherit normalise defaults vllmArgs gatewayConfig workerConfig stubConfig;
  inherit (l) toYAML;
}
