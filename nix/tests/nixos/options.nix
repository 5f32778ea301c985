# Declarations of the NixOS options that modules/ssw-inference.nix, the VM-test nodes and the
# docs' configurations touch, each with the type nixpkgs gives it, plus the few pieces of those
# modules' `config` whose behaviour our module relies on (oci-containers' units and assertions,
# the CDI generator unit and the toolkit's driver assertion, redis' settings, the systemd
# service checks and warnings). Evaluated through the real nixpkgs `lib.evalModules`
# (../shared/vendor/nixpkgs-lib here, nixpkgs.lib under `nix flake check`), so a misspelled
# option or a value of the wrong type fails exactly as it would on a NixOS host.
#
# Sources: nixpkgs 26.05 era. Where not said otherwise the file is from Swarsel/nixpkgs @
# 4aa6836a648ca76c68866decf0c8965e36ec2a3b (a 26.05-era tree: redis 8.8.0, nvidia production
# 595.84, grafana citing the 26.05 changelog; the NixOS/nixpkgs snapshot itself is too large to
# read here). systemd unit option types: NixOS/nixpkgs nixos/lib/systemd-lib.nix @
# 013635633ffe11f70df1d639f563f21c42c1f778 and nixos/lib/systemd-types.nix @
# 2faec4eca3b0717c3e754e5858e006cd14d288c1; systemd-unit-options.nix as in the nixfmt-era copies
# (kalmenn/nixpkgs @ 32a8ba75d2b403b879564ff32323821a45300396).
{ lib, pkgs }:
let
  inherit (lib) mkOption types mkIf mkMerge mkDefault optional optionals concatLists mapAttrsToList;
  opt = type: default: mkOption { inherit type default; };
  req = type: mkOption { inherit type; };

  # nixos/lib/systemd-lib.nix: unitNameType, assertValueOneOf, checkUnitConfig.
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  assertValueOneOf = name: values: group: attr:
    optional (attr ? ${name} && !(builtins.elem attr.${name} values))
      "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";
  checkUnitConfig = group: checks: attrs:
    let
      defs = builtins.mapAttrs (_: v: if (v._type or "") == "override" || (v._type or "") == "if" then v.content else v) attrs;
      errors = builtins.concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else builtins.trace (builtins.concatStringsSep "\n" errors) false;
  # nixos/lib/systemd-unit-options.nix: unitOption, checkService.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      if builtins.any (def: builtins.isList def.value) defs
      then builtins.concatMap (def: lib.toList def.value) defs
      else lib.mergeEqualOption loc defs;
  };
  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ])
    (assertValueOneOf "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ])
  ];
  units = opt (types.listOf unitNameType) [ ];

  # nixos/lib/systemd-unit-options.nix (commonUnitOptions, serviceOptions, stage2ServiceOptions).
  serviceModule = { name, ... }: {
    options = {
      enable = opt types.bool true;
      description = opt types.singleLineStr "";
      documentation = opt (types.listOf types.str) [ ];
      wantedBy = units;
      requiredBy = units;
      upheldBy = units;
      aliases = units;
      after = units;
      before = units;
      wants = units;
      requires = units;
      upholds = units;
      bindsTo = units;
      partOf = units;
      conflicts = units;
      requisite = units;
      onFailure = units;
      onSuccess = units;
      overrideStrategy = opt (types.enum [ "asDropinIfExists" "asDropin" ]) "asDropinIfExists";
      unitConfig = opt (types.attrsOf unitOption) { };
      # No default: rendered only when defined (systemd-lib.nix `options.startLimitIntervalSec.isDefined`).
      startLimitIntervalSec = req types.int;
      startLimitBurst = req types.int;
      restartTriggers = opt (types.listOf types.unspecified) [ ];
      reloadTriggers = opt (types.listOf unitOption) [ ];
      environment = opt (types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]))) { };
      path = opt (types.listOf (types.oneOf [ types.package types.str ])) [ ];
      serviceConfig = opt (types.addCheck (types.attrsOf unitOption) checkService) { };
      script = opt types.lines "";
      scriptArgs = opt types.str "";
      preStart = opt types.lines "";
      postStart = opt types.lines "";
      reload = opt types.lines "";
      preStop = opt types.lines "";
      postStop = opt types.lines "";
      restartIfChanged = opt types.bool true;
      reloadIfChanged = opt types.bool false;
      stopIfChanged = opt types.bool true;
      notSocketActivated = opt types.bool false;
      startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; apply = v: if builtins.isList v then v else [ v ]; };
    };
  };

  # nixos/modules/services/monitoring/prometheus/default.nix (promTypes).
  promOpt = type: opt (types.nullOr type) null;
  staticConfig = types.submodule {
    options = {
      targets = req (types.listOf types.str);
      labels = opt (types.attrsOf types.str) { };
    };
  };
  scrapeConfig = types.submodule {
    options = {
      job_name = req types.str;
      honor_labels = promOpt types.bool;
      honor_timestamps = promOpt types.bool;
      scrape_interval = promOpt types.str;
      scrape_timeout = promOpt types.str;
      metrics_path = promOpt types.str;
      scheme = promOpt (types.enum [ "http" "https" ]);
      params = promOpt (types.attrsOf (types.listOf types.str));
      authorization = promOpt types.attrs;
      bearer_token_file = promOpt types.str;
      static_configs = promOpt (types.listOf staticConfig);
      sample_limit = promOpt types.int;
    };
  };
  globalConfig = types.submodule {
    options = {
      scrape_interval = promOpt types.str;
      scrape_timeout = promOpt types.str;
      evaluation_interval = promOpt types.str;
      external_labels = promOpt (types.attrsOf types.str);
      query_log_file = promOpt types.str;
    };
  };

  # pkgs/pkgs-lib/formats.nix: `formats.yaml {}`'s type, and grafana's INI atoms.
  yamlValue = types.serializableValueWith { typeName = "YAML 1.1"; };
  iniAtom = types.nullOr (types.oneOf [ types.bool types.int types.float types.str ]);
  iniSettings = types.attrsOf (types.attrsOf (types.either iniAtom (types.nonEmptyListOf iniAtom)));
in
[
  # nixos/modules/misc/assertions.nix
  {
    options.assertions = opt (types.listOf types.unspecified) [ ];
    options.warnings = opt (types.listOf types.str) [ ];
  }

  # nixos/modules/misc/version.nix: stateVersion, with the warning when it is left unset.
  ({ options, ... }: {
    options.system.stateVersion = mkOption {
      type = types.str;
      default = "26.05";
      apply = v: lib.warnIf (options.system.stateVersion.highestPrio == (lib.mkOptionDefault { }).priority)
        "system.stateVersion is not set, defaulting to ${v}." v;
    };
  })

  # nixos/modules/misc/nixpkgs.nix (configType: attrs or a function, merged recursively).
  {
    options.nixpkgs.config = mkOption {
      type = lib.mkOptionType {
        name = "nixpkgs-config";
        check = x: builtins.isAttrs x || builtins.isFunction x;
        merge = _: lib.foldr (def: acc: lib.recursiveUpdate acc def.value) { };
      };
      default = { };
    };
  }

  # nixos/modules/config/system-path.nix, tasks/filesystems.nix, system/boot/loader/…
  {
    options.environment.systemPackages = opt (types.listOf types.package) [ ];
    # nixos/modules/system/activation/specialisation.nix: `configuration` has the type of the
    # system extended by it (extendModules); a deferred module here, which nix/tests/module.py
    # evaluates on top of the node (scenario "vm-test model-swap, specialisation").
    options.specialisation = opt (types.attrsOf (types.submodule {
      options.inheritParentConfig = opt types.bool true;
      options.configuration = opt types.deferredModule { };
    })) { };
    options.fileSystems = opt (types.attrsOf (types.submodule ({ name, ... }: {
      options = {
        device = opt (types.nullOr types.nonEmptyStr) null;
        fsType = req types.nonEmptyStr;
        options = opt (types.nonEmptyListOf types.nonEmptyStr) [ "defaults" ];
        mountPoint = opt types.str name;
        enable = opt types.bool true;
      };
    }))) { };
    options.boot.loader.systemd-boot.enable = opt types.bool false;
    options.boot.loader.efi.canTouchEfiVariables = opt types.bool false;
    options.boot.initrd.availableKernelModules = opt (types.listOf types.str) [ ];
    options.boot.kernelModules = opt (types.listOf types.str) [ ];
    options.networking.hostName = opt types.str "nixos";
  }

  # nixos/modules/config/sysctl.nix (freeform sysctl values: bool, str, int or null).
  {
    options.boot.kernel.sysctl = opt
      (types.submodule {
        freeformType = types.attrsOf (lib.mkOptionType {
          name = "sysctl option value";
          check = val: builtins.isBool val || builtins.isString val || builtins.isInt val || val == null;
          merge = lib.mergeOneOption;
        });
      })
      { };
  }

  # nixos/modules/services/networking/firewall.nix
  {
    options.networking.firewall.enable = opt types.bool true;
    options.networking.firewall.allowedTCPPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
    };
  }

  # nixos/modules/config/users-groups.nix (the fields the modules here read), root predefined.
  {
    options.users.users = opt (types.attrsOf (types.submodule ({ name, ... }: {
      options = {
        name = opt types.str name;
        uid = opt (types.nullOr types.int) null;
        group = opt types.str "";
        home = opt types.str "/var/empty";
        isSystemUser = opt types.bool false;
        linger = opt (types.nullOr types.bool) null;
      };
    }))) { };
    options.users.groups = opt (types.attrsOf (types.submodule { options.gid = opt (types.nullOr types.int) null; })) { };
    config.users.users.root = { uid = 0; home = "/root"; };
  }

  # nixos/modules/system/etc/etc.nix: environment.etc's entry options.
  {
    options.environment.etc = opt
      (types.attrsOf (types.submodule ({ name, config, ... }: {
        options = {
          enable = opt types.bool true;
          target = opt types.str name;
          text = opt (types.nullOr types.lines) null;
          source = req types.path;
          mode = opt types.str "symlink";
          uid = opt types.int 0;
          gid = opt types.int 0;
          user = opt types.str "+${toString config.uid}";
          group = opt types.str "+${toString config.gid}";
        };
      })))
      { };
  }

  # nixos/modules/system/boot/systemd.nix (+ systemd-unit-options.nix) and tmpfiles.nix, with
  # the service warnings systemd.nix emits.
  ({ config, ... }: {
    options.systemd.services = opt (types.attrsOf (types.submodule serviceModule)) { };
    options.systemd.tmpfiles.rules = opt (types.listOf types.str) [ ];
    config.warnings = concatLists (mapAttrsToList
      (name: service:
        let
          type = service.serviceConfig.Type or "";
          restart = service.serviceConfig.Restart or "no";
        in
        optional (type == "oneshot" && (restart == "always" || restart == "on-success"))
          "Service '${name}.service' with 'Type=oneshot' cannot have 'Restart=always' or 'Restart=on-success'"
        ++ optional (service.serviceConfig ? StartLimitInterval)
          "Service '${name}.service' uses the deprecated StartLimitInterval; use startLimitIntervalSec"
        ++ optional (service.reloadIfChanged && service.reloadTriggers != [ ])
          "Service '${name}.service' has both reloadIfChanged and reloadTriggers; reloadTriggers has no effect"
        ++ optional
          (builtins.elem "network-online.target" service.after
            && !(builtins.elem "network-online.target" (service.wants ++ service.requires ++ service.bindsTo)))
          "${name}.service is ordered after 'network-online.target' but doesn't depend on it")
      config.systemd.services);
    config.assertions = concatLists (mapAttrsToList
      (name: service: [{
        assertion = !(builtins.elem "network-interfaces.target" (service.after ++ service.wants));
        message = "${name}.service: network-interfaces.target is obsolete";
      }])
      config.systemd.services);
  })

  # nixos/modules/virtualisation/qemu-vm.nix (VM-test nodes).
  {
    options.virtualisation.memorySize = opt types.ints.positive 1024;
    options.virtualisation.cores = opt types.ints.positive 1;
  }

  # nixos/modules/virtualisation/podman/default.nix, docker.nix (what oci-containers reads).
  {
    options.virtualisation.podman.enable = opt types.bool false;
    options.virtualisation.podman.package = opt types.package pkgs.podman;
    options.virtualisation.docker.enable = opt types.bool false;
    options.virtualisation.docker.package = opt types.package pkgs.docker;
  }

  # nixos/modules/virtualisation/oci-containers.nix: options, the `<backend>-<name>` units
  # (after/requires from dependsOn, Restart=on-failure, Type=notify under podman) and the
  # assertions.
  ({ config, ... }:
    let
      cfg = config.virtualisation.oci-containers;
      containerOptions = { name, ... }: {
        options = {
          image = req types.str;
          imageFile = opt (types.nullOr types.pathInStore) null;
          imageStream = opt (types.nullOr types.package) null;
          login.username = opt (types.nullOr types.str) null;
          login.passwordFile = opt (types.nullOr types.str) null;
          login.registry = opt (types.nullOr types.str) null;
          cmd = opt (types.listOf types.str) [ ];
          labels = opt (types.attrsOf types.str) { };
          entrypoint = opt (types.nullOr types.str) null;
          environment = opt (types.attrsOf types.str) { };
          environmentFiles = opt (types.listOf types.path) [ ];
          log-driver = opt types.str "journald";
          ports = opt (types.listOf types.str) [ ];
          user = opt (types.nullOr types.str) null;
          volumes = opt (types.listOf types.str) [ ];
          workdir = opt (types.nullOr types.str) null;
          dependsOn = opt (types.listOf types.str) [ ];
          hostname = opt (types.nullOr types.str) null;
          preRunExtraOptions = opt (types.listOf types.str) [ ];
          extraOptions = opt (types.listOf types.str) [ ];
          autoStart = opt types.bool true;
          autoRemoveOnStop = opt types.bool true;
          privileged = opt types.bool false;
          capabilities = opt (types.lazyAttrsOf (types.nullOr types.bool)) { };
          devices = opt (types.listOf types.str) [ ];
          networks = opt (types.listOf types.str) [ ];
          pull = opt (types.enum [ "always" "missing" "never" "newer" ]) "missing";
          serviceName = opt types.str "${cfg.backend}-${name}";
          podman = opt
            (types.nullOr (types.submodule {
              options.sdnotify = opt (types.enum [ "conmon" "healthy" "container" ]) "conmon";
              options.user = opt types.str "root";
            }))
            null;
        };
        config.podman = mkIf (cfg.backend == "podman") { };
      };
      mkService = name: c:
        let dependsOn = map (k: "${cfg.containers.${k}.serviceName}.service") c.dependsOn;
        in {
          after = optional (cfg.backend == "docker") "docker.service"
            ++ optional (c.imageFile == null && c.imageStream == null) "network-online.target"
            ++ dependsOn;
          requires = dependsOn;
          wants = optional (c.imageFile == null && c.imageStream == null) "network-online.target";
          wantedBy = optional c.autoStart "multi-user.target";
          serviceConfig = {
            Restart = "on-failure";
            TimeoutStartSec = 0;
            TimeoutStopSec = 120;
          } // lib.optionalAttrs (cfg.backend == "podman") {
            Delegate = true;
            NotifyAccess = "all";
            Type = "notify";
          };
        };
    in
    {
      options.virtualisation.oci-containers = {
        backend = opt (types.enum [ "podman" "docker" ]) "podman";
        containers = opt (types.attrsOf (types.submodule containerOptions)) { };
      };
      config = mkIf (cfg.containers != { }) {
        systemd.services = lib.mapAttrs' (n: c: lib.nameValuePair c.serviceName (mkService n c)) cfg.containers;
        assertions = concatLists (mapAttrsToList
          (name: c: [
            { assertion = c.imageFile == null || c.imageStream == null; message = "virtualisation.oci-containers.containers.${name}: You can only define one of imageFile and imageStream"; }
            { assertion = cfg.backend == "docker" -> c.podman == null; message = "virtualisation.oci-containers.containers.${name}: Cannot set `podman` option if backend is `docker`."; }
            # dependsOn names must be containers (the module's getAttrs throws otherwise).
            { assertion = builtins.all (d: cfg.containers ? ${d}) c.dependsOn; message = "virtualisation.oci-containers.containers.${name}.dependsOn: unknown container"; }
          ])
          cfg.containers);
        virtualisation.podman.enable = mkIf (cfg.backend == "podman") true;
        virtualisation.docker.enable = mkIf (cfg.backend == "docker") true;
      };
    })

  # nixos/modules/services/hardware/nvidia-container-toolkit/default.nix, and the NVIDIA driver
  # options it reads (hardware/video/nvidia.nix, services/x11/xserver.nix, system/boot/kernel.nix).
  ({ config, ... }:
    let cfg = config.hardware.nvidia-container-toolkit; in {
      options.hardware.nvidia-container-toolkit = {
        enable = opt types.bool false;
        suppressNvidiaDriverAssertion = opt types.bool false;
        device-name-strategy = opt (types.enum [ "index" "uuid" "type-index" ]) "index";
        discovery-mode = opt (types.enum [ "auto" "csv" "nvml" "wsl" ]) "auto";
        csv-files = opt (types.listOf types.path) [ ];
        mount-nvidia-executables = opt types.bool true;
      };
      options.hardware.nvidia = {
        open = opt (types.nullOr types.bool) null;
        package = opt types.package config.boot.kernelPackages.nvidiaPackages.stable;
        datacenter.enable = opt types.bool false;
      };
      options.hardware.graphics.enable = opt types.bool false;
      options.services.xserver.videoDrivers = opt (types.listOf types.str) [ "modesetting" "fbdev" ];
      options.boot.kernelPackages = opt types.raw pkgs.linuxPackages;
      config = mkMerge [
        (mkIf cfg.enable {
          assertions = [
            {
              assertion = config.hardware.nvidia.datacenter.enable || builtins.elem "nvidia" config.services.xserver.videoDrivers || cfg.suppressNvidiaDriverAssertion;
              message = "`nvidia-container-toolkit` requires nvidia drivers: set `hardware.nvidia.datacenter.enable`, add \"nvidia\" to `services.xserver.videoDrivers`, or set `hardware.nvidia-container-toolkit.suppressNvidiaDriverAssertion`";
            }
            { assertion = cfg.csv-files != [ ] -> cfg.discovery-mode == "csv"; message = "When CSV files are provided, `config.hardware.nvidia-container-toolkit.discovery-mode` has to be set to `csv`."; }
          ];
          hardware.graphics.enable = mkIf (!config.hardware.nvidia.datacenter.enable) true;
          systemd.services.nvidia-container-toolkit-cdi-generator = {
            description = "Container Device Interface (CDI) for Nvidia generator";
            wantedBy = [ "multi-user.target" ];
            requiredBy = optional config.virtualisation.podman.enable "podman.service";
            serviceConfig = { Type = "oneshot"; RemainAfterExit = true; RuntimeDirectory = "cdi"; };
          };
        })
        (mkIf (builtins.elem "nvidia" config.services.xserver.videoDrivers) {
          assertions = [{
            assertion = config.hardware.nvidia.open != null || config.hardware.nvidia.datacenter.enable;
            message = "You must configure `hardware.nvidia.open` on NVIDIA driver versions >= 560.";
          }];
        })
      ];
    })

  # nixos/modules/services/databases/redis.nix: options, and `settings` filled from them (so a
  # value set twice, e.g. maxclients, conflicts as on a host).
  ({ config, ... }: {
    options.services.redis.servers = opt
      (types.attrsOf (types.submodule ({ config, name, ... }: {
        options = {
          enable = lib.mkEnableOption "Redis server";
          port = opt types.port (if name == "" then 6379 else 0);
          bind = opt (types.nullOr types.str) "127.0.0.1";
          save = opt (types.listOf (types.listOf types.int)) [ [ 900 1 ] [ 300 10 ] [ 60 10000 ] ];
          appendOnly = opt types.bool false;
          appendFsync = opt types.str "everysec";
          requirePass = opt (types.nullOr types.str) null;
          requirePassFile = opt (types.nullOr types.path) null;
          maxclients = opt types.int 10000;
          unixSocket = opt (types.nullOr types.path) "/run/redis-${name}/redis.sock";
          openFirewall = opt types.bool false;
          user = opt types.str "redis-${name}";
          settings = opt (types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf types.str) ])) { };
        };
        config.settings = mkMerge [
          {
            inherit (config) port maxclients appendOnly;
            appendfsync = config.appendFsync;
            save = if config.save == [ ] then ''""'' else map (d: "${toString (builtins.elemAt d 0)} ${toString (builtins.elemAt d 1)}") config.save;
          }
          (mkIf (config.bind != null) { inherit (config) bind; })
          (mkIf (config.requirePass != null) { requirepass = config.requirePass; })
        ];
      })))
      { };
    config = let enabled = lib.filterAttrs (_: c: c.enable) config.services.redis.servers; in mkIf (enabled != { }) {
      systemd.services = lib.mapAttrs' (n: c: lib.nameValuePair "redis-${n}" {
        after = [ "network.target" ];
        wantedBy = [ "multi-user.target" ];
        serviceConfig = { Type = "notify"; LimitNOFILE = mkDefault "${toString (c.maxclients + 32)}"; };
      }) enabled;
      assertions = mapAttrsToList (n: c: { assertion = c.requirePass == null || c.requirePassFile == null; message = "You can only set one of services.redis.servers.${n}.requirePass\nor services.redis.servers.${n}.requirePassFile"; }) enabled;
    };
  })

  # nixos/modules/services/monitoring/prometheus/default.nix
  ({ config, ... }: {
    options.services.prometheus = {
      enable = lib.mkEnableOption "Prometheus monitoring daemon";
      port = opt types.port 9090;
      listenAddress = opt types.str "0.0.0.0";
      scrapeConfigs = opt (types.listOf scrapeConfig) [ ];
      ruleFiles = opt (types.listOf types.path) [ ];
      rules = opt (types.listOf types.str) [ ];
      globalConfig = opt globalConfig { };
      checkConfig = opt (types.either types.bool (types.enum [ "syntax-only" ])) true;
      retentionTime = opt (types.nullOr types.str) null;
    };
    config.assertions = mkIf config.services.prometheus.enable [{
      assertion = builtins.match "(.*\\..*|.*]):([[:digit:]]+)" config.services.prometheus.listenAddress == null;
      message = "Do not specify the port for Prometheus to listen on in the listenAddress option; use the port option instead";
    }];
  })

  # nixos/modules/services/monitoring/grafana.nix, with the 26.05 secret_key assertion.
  ({ config, ... }:
    let cfg = config.services.grafana; in {
      options.services.grafana = {
        enable = lib.mkEnableOption "grafana";
        settings = opt
          (types.submodule {
            freeformType = iniSettings;
            options.server.http_addr = opt types.str "127.0.0.1";
            options.server.http_port = opt types.port 3000;
            options.security.secret_key = opt (types.nullOr types.str) null;
          })
          { };
        provision.datasources = opt
          (types.submodule {
            options.path = opt (types.nullOr types.path) null;
            options.settings = opt
              (types.nullOr (types.submodule {
                options.apiVersion = opt types.int 1;
                options.datasources = opt
                  (types.listOf (types.submodule {
                    freeformType = yamlValue;
                    options = {
                      name = req types.str;
                      type = req types.str;
                      uid = opt (types.nullOr types.str) null;
                      url = opt types.str "";
                      access = opt (types.enum [ "proxy" "direct" ]) "proxy";
                      editable = opt types.bool false;
                      jsonData = opt (types.nullOr types.attrs) null;
                      secureJsonData = opt (types.nullOr types.attrs) null;
                    };
                  }))
                  [ ];
              }))
              null;
          })
          { };
        provision.dashboards = opt
          (types.submodule {
            options.path = opt (types.nullOr types.path) null;
            options.settings = opt
              (types.nullOr (types.submodule {
                options.apiVersion = opt types.int 1;
                options.providers = opt
                  (types.listOf (types.submodule {
                    freeformType = yamlValue;
                    options = {
                      name = opt types.str "default";
                      type = opt types.str "file";
                      options.path = req types.path;
                    };
                  }))
                  [ ];
              }))
              null;
          })
          { };
      };
      config.assertions = mkIf cfg.enable [{
        assertion = cfg.settings.security.secret_key != null;
        message = "Grafana's secret key (services.grafana.settings.security.secret_key) doesn't have a default value anymore.";
      }];
    })
]
