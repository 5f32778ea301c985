# services.ssw-inference: the whole appliance from one attribute set.
#
# The topology logic (replicas, ports, vLLM command lines, ssw configs, Prometheus targets)
# lives in ../nix/topology.nix as builtins-only functions; this module maps it onto NixOS
# options: vLLM OCI containers pinned to GPUs through CDI (or `ssw stub` units when
# `settings.engine = "stub"`), Redis, the gateway and one worker unit per replica, Prometheus.
{ config, lib, pkgs, ... }:
let
  cfg = config.services.ssw-inference;
  topology = import ../nix/topology.nix;
  l = import ../nix/lib.nix;
  topo = topology.normalise cfg.settings;
  s = topo.settings;
  vllm = topo.engine == "vllm";

  inherit (lib) mkOption mkEnableOption mkIf mkMerge mkDefault types optional optionals optionalAttrs
    listToAttrs nameValuePair;

  redisPassword = s.redis.passwordFile;
  apiKeys = s.gateway.apiKeysFile;
  # Tenants' key files, each the gateway's credential `tenant-<name>`.
  tenantKeys = lib.filterAttrs (_: t: (t.apiKeysFile or null) != null) s.tenants;

  # The key workers present to their engines: the user's file, or one the ssw-secrets unit
  # generates on first start (and the VLLM_API_KEY environment file vLLM reads it from).
  secretsDir = "/var/lib/ssw/secrets";
  engineKey = if s.engineApiKeyFile != null then s.engineApiKeyFile else "${secretsDir}/engine-api-key";
  engineEnv = "${secretsDir}/engine.env";

  # A config file for one unit, with the unit's credential paths, checked by `ssw check-config`
  # at build time: a bad setting fails `nixos-rebuild`, not the service.
  configFile = unit: role: value:
    let
      cred = name: "/run/credentials/${unit}.service/${name}";
      withSecrets = lib.foldl' lib.recursiveUpdate value [
        (optionalAttrs (redisPassword != null && role != "stub") { redis.password_file = cred "redis-password"; })
        (optionalAttrs (role == "gateway" && apiKeys != null) { gateway.api_keys_file = cred "api-keys"; })
        (optionalAttrs (role == "gateway") {
          tenants = builtins.mapAttrs (name: _: { api_keys_file = cred "tenant-${name}"; }) tenantKeys;
        })
        (optionalAttrs (role == "worker") { worker.engine_api_key_file = cred "engine-key"; })
        (optionalAttrs (role == "stub") { stub.api_key_file = cred "engine-key"; })
        # ssw rollout's smoke request and /v1/models reads need the engines' key too.
        (optionalAttrs (role == "rollout") { worker.engine_api_key_file = cred "engine-key"; })
      ];
    in
    pkgs.runCommand "${unit}.json"
      {
        nativeBuildInputs = [ cfg.package ];
        value = builtins.toJSON withSecrets;
        passAsFile = [ "value" ];
      } ''
      cp "$valuePath" $out
      ssw check-config $out --role ${if role == "rollout" then "gateway" else role}
    '';

  # The gateway config's routing settings (what SIGHUP re-reads) and the rest (what needs a
  # restart); ssw_config::routing draws the same line.
  routingPart = c: {
    routes = c.routes or { };
    pools = builtins.mapAttrs (_: p: { inherit (p) served_model; aliases = p.aliases or [ ]; defaults = p.defaults or { }; }) c.pools;
    tenants = builtins.mapAttrs (_: t: removeAttrs t [ "api_keys_file" ]) (c.tenants or { });
  };
  restPart = c: removeAttrs c [ "routes" "tenants" ] // {
    pools = builtins.mapAttrs (_: p: removeAttrs p [ "served_model" "aliases" "defaults" ]) c.pools;
    tenants = builtins.mapAttrs (_: t: { api_keys_file = t.api_keys_file or null; }) (c.tenants or { });
  };

  # A worker's config without the pools' served model names: workers send each engine the name
  # it reports, so a model rollout (which renames a pool's model) does not restart them.
  workerRestartPart = c: c // {
    pools = builtins.mapAttrs (_: p: removeAttrs p [ "served_model" ]) c.pools;
  };

  # A replica's vLLM container.
  containerOf = r: {
    image = r.image;
    cmd = r.vllmArgs;
    ports = [ "127.0.0.1:${toString r.port}:8000" ];
    volumes = [
      "${s.volumes.hfCache}:/root/.cache/huggingface"
      "${s.volumes.vllmCache}:/root/.cache/vllm"
    ];
    environment = { VLLM_CACHE_ROOT = "/root/.cache/vllm"; } // r.engineEnvironment;
    environmentFiles = [ engineEnv ] ++ optional (cfg.hfTokenFile != null) cfg.hfTokenFile;
    devices = [ "nvidia.com/gpu=${toString r.gpu}" ];
    extraOptions = [
      "--ipc=host"
      "--health-cmd=python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')\""
      "--health-interval=15s"
      "--health-retries=3"
      "--health-start-period=900s"
      # A vLLM that stays unhealthy (at start, after the start period, or later) is
      # killed, and its unit restarts it: without this podman's `--sdnotify=healthy`
      # waits for "healthy" forever and the unit stays "activating".
      "--health-on-failure=kill"
    ];
    # The unit is up only once vLLM answers /health, and the next vLLM on the same GPU
    # starts only then (After= below): two must not profile GPU memory at the same time.
    podman.sdnotify = "healthy";
  };

  # What a replica's engine runs: its whole container definition, or its stub settings. A
  # change rolls that replica (ssw-rollout below) instead of restarting it with the switch.
  engineRevision = r: builtins.hashString "sha256" (builtins.toJSON
    (if vllm then containerOf r else topo.ssw.stubs.${r.name}.stub));

  # Run by an engine unit once it is up (`+`: with full privileges, also from a stub's
  # DynamicUser unit): records the revision it was started with in /run/ssw-engines/<replica>,
  # which ssw-rollout compares with the revision wanted.
  engineStarted = r: "+${pkgs.writeShellScript "ssw-engine-started-${r.name}" ''
    ${pkgs.coreutils}/bin/mkdir -p /run/ssw-engines
    echo ${engineRevision r} > /run/ssw-engines/${r.name}
  ''}";

  # Replicas GPU by GPU, in start order on each GPU.
  rolloutOrder = lib.sort (a: b: a.gpu < b.gpu || (a.gpu == b.gpu && a.name < b.name)) topo.replicas;

  hardening = {
    DynamicUser = true;
    Restart = "on-failure";
    # Back off from 2 s to 30 s over 5 restarts, and never give up (startLimitIntervalSec = 0
    # below): a unit that fails because Redis or its engine is not up yet comes back by itself.
    RestartSec = "2s";
    RestartSteps = 5;
    RestartMaxDelaySec = "30s";
    # Thousands of client connections (gateway) or engine connections (workers): systemd's
    # default soft limit is 1024 (systemd/systemd#25478), and NixOS does not raise it for
    # services. The processes also raise their soft limit to this hard limit at start.
    LimitNOFILE = 65536;
    UMask = "0077";
    CapabilityBoundingSet = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateUsers = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectKernelLogs = true;
    ProtectKernelModules = true;
    ProtectKernelTunables = true;
    ProtectControlGroups = true;
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" ];
    # A call outside the filter fails with EPERM instead of killing the process.
    SystemCallErrorNumber = "EPERM";
  };

  redisUnit = optional cfg.roles.redis "redis-ssw.service";
  engineUnit = r: if vllm then "${containerUnit r.containerName}.service" else "ssw-stub-${r.name}.service";
  credentials = role:
    optional (redisPassword != null && role != "stub") "redis-password:${redisPassword}"
    ++ optional (role == "gateway" && apiKeys != null) "api-keys:${apiKeys}"
    ++ optionals (role == "gateway") (lib.mapAttrsToList (name: t: "tenant-${name}:${t.apiKeysFile}") tenantKeys)
    ++ optional (role == "worker" || role == "stub") "engine-key:${engineKey}";

  # gateway and worker speak sd_notify (READY=1 once serving, WATCHDOG=1 while healthy).
  notifyUnit = {
    Type = "notify";
    NotifyAccess = "main";
    WatchdogSec = "30s";
  };

  secretsUnit = r: optional (r == "worker" || r == "stub") "ssw-secrets.service";

  sswService = { unit, role, config, after ? [ ], extra ? { } }: {
    description = "SSW ${role} (${unit})";
    wantedBy = [ "multi-user.target" ];
    startLimitIntervalSec = 0;
    after = [ "network-online.target" ] ++ redisUnit ++ secretsUnit role ++ after;
    wants = [ "network-online.target" ] ++ redisUnit ++ after;
    requires = secretsUnit role;
    environment = { RUST_LOG = cfg.logLevel; };
    serviceConfig = hardening // {
      ExecStart = "${lib.getExe cfg.package} ${role} --config ${configFile unit role config}";
      LoadCredential = credentials role;
    } // extra;
  };

  # Engine units of the container backend (oci-containers names them `<backend>-<name>`).
  cdiGenerator = "nvidia-container-toolkit-cdi-generator.service";
  containerUnit = name: "podman-${name}";

  # A secret file: an absolute path as a string, never a Nix path literal (which would be copied
  # into the world-readable store).
  secretPath = types.pathWith { absolute = true; inStore = false; };
in
{
  options.services.ssw-inference = {
    enable = mkEnableOption "the SSW inference platform (gateway, workers, engines, Redis, Prometheus)";

    package = mkOption {
      type = types.package;
      description = "The ssw package (the flake's `nixosModules.default` sets it).";
    };

    settings = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      description = ''
        The platform's topology: GPUs, pools, replicas, engine kind, Redis, gateway, workers,
        Prometheus. Anything left out takes the A40 default (nix/defaults.nix); settings merge
        recursively, pools by name over the default pools (`null` removes one), and `replicas`
        replaces the default layout. The same attribute set generates compose.yaml. Invalid
        settings fail evaluation naming the attribute.
      '';
      example = lib.literalExpression ''{ engine = "stub"; pools.heavy.aliases = [ "npc-boss" ]; }'';
    };

    roles = {
      redis = mkOption { type = types.bool; default = true; description = "Run Redis on this host (off: `settings.redis.host` is remote)."; };
      gateway = mkOption { type = types.bool; default = true; description = "Run the gateway on this host."; };
      workers = mkOption { type = types.bool; default = true; description = "Run the engines and their workers on this host."; };
    };

    hfTokenFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      description = "Environment file with `HF_TOKEN=…` for the vLLM containers (outside the Nix store).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the gateway's port in the firewall.";
    };

    logLevel = mkOption {
      type = types.str;
      default = "info";
      description = "RUST_LOG of the ssw units.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.roles.redis || s.redis.host != "127.0.0.1" || !(cfg.roles.gateway || cfg.roles.workers);
          message = "services.ssw-inference: roles.redis is off but settings.redis.host is 127.0.0.1; point it at the Redis host.";
        }
        {
          assertion = !cfg.roles.gateway || apiKeys != null || tenantKeys != { } || s.gateway.allowUnauthenticated
            || lib.hasPrefix "127." s.gateway.listen || lib.hasPrefix "[::1]" s.gateway.listen;
          message = "services.ssw-inference.settings.gateway: the gateway listens on ${s.gateway.listen} without API keys; set gateway.apiKeysFile (or tenants.<name>.apiKeysFile), listen on loopback, or set gateway.allowUnauthenticated = true to serve anyone who can reach it.";
        }
      ];
    }

    (mkIf cfg.roles.redis {
      services.redis.servers.ssw = {
        enable = true;
        port = s.redis.port;
        bind = if s.redis.host == "127.0.0.1" then "127.0.0.1" else null;
        # The queue holds requests in flight only: no snapshots. Without persistence a restarted
        # Redis starts empty and each gateway enqueues again the requests it still holds;
        # `settings.redis.persistence = "aof"` makes Redis keep the queue itself (fsync every
        # second: a crash of the host may lose the last second of it).
        save = [ ];
        appendOnly = s.redis.persistence == "aof";
        appendFsync = "everysec";
        requirePassFile = redisPassword;
        maxclients = mkDefault 10000;
        # Bounded by configuration: a full Redis refuses new jobs (503 queue_memory_full) and
        # never evicts a queued one (https://redis.io/docs/latest/develop/reference/eviction/).
        settings = {
          maxmemory = toString (l.bytes "redis.maxMemory" s.redis.maxMemory);
          maxmemory-policy = "noeviction";
        };
      };
    })

    (mkIf cfg.roles.gateway {
      # A region waking up opens thousands of connections at once: deep accept and SYN queues
      # keep the kernel from dropping them before the gateway accepts.
      boot.kernel.sysctl = {
        "net.core.somaxconn" = mkDefault 65535;
        "net.ipv4.tcp_max_syn_backlog" = mkDefault 65535;
      };
      # The gateway reads its config from a stable path, so a change of the routing settings only
      # (routes, pools' aliases and request defaults, tenants' tiers and limits) changes its
      # reload trigger, not its unit: `nixos-rebuild switch` reloads it (SIGHUP: it re-reads the
      # file and swaps the routing settings between two requests), and restarts it for anything
      # else (docs/configuration.md, "Changing settings without a restart").
      environment.etc."ssw/gateway.json".source = configFile "ssw-gateway" "gateway" topo.ssw.gateway;
      systemd.services.ssw-gateway = lib.recursiveUpdate
        (sswService {
          unit = "ssw-gateway";
          role = "gateway";
          config = topo.ssw.gateway;
          extra = notifyUnit // {
            TimeoutStopSec = "45s";
            ExecStart = "${lib.getExe cfg.package} gateway --config /etc/ssw/gateway.json";
            ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
          };
        })
        {
          reloadTriggers = [ (builtins.toJSON (routingPart topo.ssw.gateway)) ];
          restartTriggers = [ (builtins.toJSON (restPart topo.ssw.gateway)) ];
        };
      networking.firewall.allowedTCPPorts = optional cfg.openFirewall (lib.toInt topo.gateway.port);
    })

    (mkIf cfg.roles.workers {
      # The engine key, generated on first start unless settings.engineApiKeyFile names one, and
      # the environment file vLLM reads it from (VLLM_API_KEY, vllm/entrypoints/openai/api_server.py:
      # `args.api_key or envs.VLLM_API_KEY`); only root reads them, units get them as credentials.
      systemd.services.ssw-secrets = {
        description = "SSW engine key";
        wantedBy = [ "multi-user.target" ];
        serviceConfig = { Type = "oneshot"; RemainAfterExit = true; UMask = "0077"; };
        path = [ pkgs.coreutils ];
        script = ''
          mkdir -p ${secretsDir}
          key=${lib.escapeShellArg engineKey}
          ${lib.optionalString (s.engineApiKeyFile == null) ''
            if [ ! -s "$key" ]; then
              head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key.tmp"
              mv "$key.tmp" "$key"
            fi
          ''}
          printf 'VLLM_API_KEY=%s\n' "$(head -n 1 "$key")" > ${engineEnv}.tmp
          mv ${engineEnv}.tmp ${engineEnv}
        '';
      };
    })

    (mkIf cfg.roles.workers {
      # Workers read their config from a stable path, restarted only when more than the pools'
      # served model names changed (see workerRestartPart).
      environment.etc = listToAttrs (map
        (r: nameValuePair "ssw/worker-${r.name}.json" {
          source = configFile "ssw-worker-${r.name}" "worker" topo.ssw.workers.${r.name};
        })
        topo.replicas);
      systemd.services = listToAttrs (map
        (r: nameValuePair "ssw-worker-${r.name}" (lib.recursiveUpdate (sswService {
          unit = "ssw-worker-${r.name}";
          role = "worker";
          config = topo.ssw.workers.${r.name};
          after = [ (engineUnit r) ];
          extra = notifyUnit // {
            ExecStart = "${lib.getExe cfg.package} worker --config /etc/ssw/worker-${r.name}.json";
            TimeoutStopSec = "${toString topo.workerStopSeconds}s";
          } // optionalAttrs r.exportsGpu {
            # NVML needs the GPU device nodes; only the worker that exports the GPU's metrics.
            # It opens /dev/nvidiactl read-write (NVIDIA's own cgroup rules grant rw).
            PrivateDevices = false;
            DeviceAllow = [ "/dev/nvidiactl rw" "/dev/nvidia${toString r.gpu} rw" ];
            # libnvidia-ml.so lives where NixOS puts the driver's user-space libraries.
            Environment = [ "LD_LIBRARY_PATH=/run/opengl-driver/lib" ];
          };
        }) { restartTriggers = [ (builtins.toJSON (workerRestartPart topo.ssw.workers.${r.name})) ]; }))
        topo.replicas)
      // optionalAttrs (!vllm) (listToAttrs (map
        (r: nameValuePair "ssw-stub-${r.name}" (lib.recursiveUpdate
          (sswService {
            unit = "ssw-stub-${r.name}";
            role = "stub";
            config = topo.ssw.stubs.${r.name};
          })
          {
            # Changed by a switch, a stub is rolled (ssw-rollout), not restarted with the others.
            restartIfChanged = false;
            serviceConfig.ExecStartPost = [ (engineStarted r) ];
          }))
        topo.replicas));
    })

    (mkIf cfg.roles.workers {
      # Model swap without a failed request (docs/deploy-nixos.md, "Swapping a model"): engine
      # units are not restarted by a switch (restartIfChanged = false); this unit, restarted by
      # the switch whenever an engine's revision changed, rolls each changed replica in turn,
      # GPU by GPU: drain its worker, restart its engine unit (which now runs the new model),
      # wait until it serves and answers, resume. A failure stops there with the other replicas
      # serving, fails this unit, and `nixos-rebuild switch` reports it.
      environment.etc."ssw/rollout.json".source = configFile "ssw-rollout" "rollout" {
        inherit (topo.ssw.gateway) redis pools;
        worker = { drain_timeout = s.worker.drainTimeout; };
      };
      systemd.services.ssw-rollout = {
        description = "SSW model rollout: changed engines replaced one replica at a time";
        wantedBy = [ "multi-user.target" ];
        after = [ "network-online.target" ] ++ redisUnit
          ++ map engineUnit topo.replicas ++ map (r: "ssw-worker-${r.name}.service") topo.replicas;
        wants = [ "network-online.target" ];
        restartTriggers = map engineRevision topo.replicas;
        # systemctl: NixOS puts systemd on every service's PATH (nixos/modules/system/boot/
        # systemd.nix: `path = mkAfter [ … systemd ]`).
        path = [ cfg.package ];
        requires = [ "ssw-secrets.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          # Each replica: its drain (worker.drainTimeout) and its engine's load (vLLM: minutes).
          TimeoutStartSec = "2h";
          LoadCredential = optional (redisPassword != null) "redis-password:${redisPassword}"
            ++ [ "engine-key:${engineKey}" ];
        };
        script = ''
          set -eu
          # roll REPLICA POOL REVISION MODEL UNIT: rolls REPLICA unless its engine runs REVISION
          # (what the engine unit recorded when it started: /run/ssw-engines/REPLICA).
          roll() {
            if [ "$(cat "/run/ssw-engines/$1" 2>/dev/null || true)" = "$3" ]; then return 0; fi
            echo "rolling $1 (pool $2) to $4"
            ssw rollout --config /etc/ssw/rollout.json --pool "$2" --worker "$1" --model "$4" \
              --restart-cmd "systemctl restart $5"
          }
          ${lib.concatMapStrings (r: ''
            roll ${r.name} ${r.pool} ${engineRevision r} ${lib.escapeShellArg s.pools.${r.pool}.servedModel} ${engineUnit r}
          '') rolloutOrder}
        '';
      };
    })

    (mkIf (cfg.roles.workers && vllm) {
      assertions = [{
        assertion = config.virtualisation.oci-containers.backend == "podman";
        message = "services.ssw-inference runs vLLM with podman (readiness through `podman.sdnotify`, units `podman-*`); virtualisation.oci-containers.backend is \"${config.virtualisation.oci-containers.backend}\".";
      }];
      hardware.nvidia-container-toolkit.enable = true;
      virtualisation.oci-containers.backend = mkDefault "podman";
      systemd.tmpfiles.rules = [
        "d ${s.volumes.hfCache} 0750 root root -"
        "d ${s.volumes.vllmCache} 0750 root root -"
      ];
      virtualisation.oci-containers.containers = listToAttrs (map
        (r: nameValuePair r.containerName (containerOf r))
        topo.replicas);
      systemd.services = listToAttrs (map
        (r:
          let
            # Started after the replica before it on the GPU is up. Not oci-containers'
            # `dependsOn`: its Requires= would restart this replica whenever a rollout restarts
            # that one (systemd.unit(5), Requires=), without draining it first; and Wants= does
            # not fail this start when that one's failed.
            before = optional (r.startAfter != null) "${containerUnit "ssw-vllm-${r.startAfter}"}.service";
            # After= orders this start after that one's start job only: if that one failed and
            # retries 10 s later, the two would profile GPU memory at once. Wait until it is up
            # (as long as its health start period), then start anyway.
            waitBefore = pkgs.writeShellScript "ssw-wait-${r.name}" ''
              for _ in $(${pkgs.coreutils}/bin/seq 900); do
                systemctl is-active -q ${lib.concatStringsSep " " before} && exit 0
                ${pkgs.coreutils}/bin/sleep 1
              done
              echo "${lib.concatStringsSep " " before} not up after 15 min: starting anyway"
            '';
          in
          nameValuePair (containerUnit r.containerName) {
            # CDI specs (/run/cdi) are written by the generator; without the ordering a container
            # can start first and fail "unresolvable CDI devices" (NixOS/nixpkgs#420638). `wants`,
            # not `requires`: a udev-triggered restart of the generator must not restart every vLLM.
            after = [ cdiGenerator "ssw-secrets.service" ] ++ before;
            wants = [ cdiGenerator ] ++ before;
            requires = [ "ssw-secrets.service" ];
            # vLLM that fails (GPU not ready, OOM at start) retries every 10 s forever instead of
            # hitting systemd's start limit (5 starts in 10 s) and staying down.
            startLimitIntervalSec = 0;
            serviceConfig = {
              RestartSec = "10s";
              ExecStartPost = [ (engineStarted r) ];
            } // optionalAttrs (r.startAfter != null) { ExecStartPre = [ "${waitBefore}" ]; };
            # Changed by a switch, an engine is rolled (ssw-rollout), not restarted with the others.
            restartIfChanged = false;
          })
        topo.replicas);
    })

    (mkIf (s.prometheus.enable && (cfg.roles.gateway || cfg.roles.workers)) {
      services.prometheus = {
        enable = true;
        listenAddress = mkDefault "127.0.0.1";
        port = s.prometheus.port;
        scrapeConfigs =
          optionals cfg.roles.gateway [ (builtins.elemAt topo.prometheus.scrapeConfigs 0) ]
          ++ optionals cfg.roles.workers (lib.drop 1 topo.prometheus.scrapeConfigs);
        ruleFiles = [ ./observability/alerts.yml ];
      };
    })

    (mkIf s.grafana.enable {
      assertions = [{
        assertion = s.grafana.secretKeyFile != null;
        message = "services.ssw-inference.settings.grafana.secretKeyFile: Grafana needs a secret key file (outside the Nix store).";
      }];
      services.grafana = {
        enable = true;
        settings.server = { http_addr = "127.0.0.1"; http_port = s.grafana.port; };
        settings.security.secret_key = "$__file{${toString s.grafana.secretKeyFile}}";
        provision.datasources.settings.datasources = [{
          name = "Prometheus";
          type = "prometheus";
          url = "http://127.0.0.1:${toString s.prometheus.port}";
          isDefault = true;
        }];
        provision.dashboards.settings.providers = [{
          name = "ssw";
          options.path = ./observability;
          disableDeletion = true;
        }];
      };
    })
  ]);
}
