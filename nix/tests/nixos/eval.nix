# Evaluates NixOS modules through the real module system (`lib.evalModules` of the nixpkgs lib
# passed in) on top of the stand-in declarations of ./options.nix, and returns what the tests
# assert: the generated units, containers and service configs, the failed assertions, the
# warnings, and prometheus.yml as the nixpkgs Prometheus module assembles it (and checks with
# `promtool check config` when the system is built).
#
#   import ./eval.nix { inherit lib; modules = [ … ]; }     # a host
#   (import ./eval.nix { inherit lib; }).nixosSystem         # stands in for nixpkgs.lib.nixosSystem
#   (import ./eval.nix { inherit lib; }).flake               # this flake's outputs (nixosModules)
{ lib, modules ? [ ] }:
let
  pkgs = import ./pkgs.nix { inherit lib; };

  # This flake, with its packages faked: `nixosModules.default` sets the package from them.
  flake = (import ../../../flake.nix).outputs {
    self = flake // { packages.${pkgs.system}.default = pkgs.ssw; };
    nixpkgs = throw "nixpkgs is not available to the offline checks";
    crane = throw "crane is not available to the offline checks";
    advisory-db = throw "advisory-db is not available to the offline checks";
  };

  # What every host has that the stand-ins do not declare by default.
  host = { config, lib, ... }: {
    config._module.args.pkgs = pkgs;
    # nixos/modules/tasks/filesystems.nix and the boot loader modules: a host needs both.
    options.boot.loader.grub.enable = lib.mkOption { type = lib.types.bool; default = !config.boot.loader.systemd-boot.enable; };
    options.boot.loader.grub.devices = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
    # nixos/modules/system/activation/top-level.nix: building the system fails on a failed
    # assertion and prints the warnings.
    options.system.build.toplevel = lib.mkOption { type = lib.types.package; readOnly = true; };
    config.system.build.toplevel =
      let failed = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions); in
      if failed != [ ] then throw "\nFailed assertions:\n${lib.concatMapStrings (m: "- ${m}\n") failed}"
      else lib.showWarnings config.warnings (pkgs.runCommand "nixos-system-${config.networking.hostName}" { value = "{}"; } "");
    config.assertions = [
      { assertion = config.fileSystems ? "/"; message = "The ‘fileSystems’ option does not specify your root file system."; }
      {
        assertion = !config.boot.loader.grub.enable || config.boot.loader.grub.devices != [ ];
        message = "You must set the option ‘boot.loader.grub.devices’ or 'boot.loader.grub.mirroredBoots' to make the system bootable.";
      }
    ];
  };

  system = mods: lib.evalModules { modules = import ./options.nix { inherit lib pkgs; } ++ [ host ] ++ mods; };

  summary = config:
    let
      prom = config.services.prometheus;
      # filterValidPrometheus: drop nulls and `_module` recursively.
      valid = v:
        if builtins.isAttrs v then builtins.mapAttrs (_: valid) (lib.filterAttrs (n: x: n != "_module" && x != null) v)
        else if builtins.isList v then map valid v
        else v;
    in
    {
      failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) config.assertions);
      inherit (config) warnings;
      systemd = {
        # startLimit* have no default (rendered only when defined): null when unset.
        # configSource: the file a unit's `--config /etc/…` names (environment.etc's source).
        services = builtins.mapAttrs
          (_: svc: svc // lib.genAttrs [ "startLimitIntervalSec" "startLimitBurst" ]
            (o: let v = builtins.tryEval svc.${o}; in if v.success then v.value else null)
            // {
              configSource =
                let m = builtins.match ".*--config /etc/([^ ]+).*" (toString (svc.serviceConfig.ExecStart or ""));
                in if m == null then null else toString config.environment.etc.${builtins.head m}.source;
            })
          config.systemd.services;
        tmpfiles = config.systemd.tmpfiles.rules;
      };
      # Our files in /etc (their sources: the fake runCommand's record of the config).
      etc = lib.mapAttrs (_: e: toString e.source) (lib.filterAttrs (n: _: lib.hasPrefix "ssw/" n) config.environment.etc);
      containers = config.virtualisation.oci-containers.containers;
      containerBackend = config.virtualisation.oci-containers.backend;
      nvidiaToolkit = config.hardware.nvidia-container-toolkit.enable;
      redis = lib.filterAttrs (_: r: r.enable) config.services.redis.servers;
      firewall = config.networking.firewall.allowedTCPPorts;
      sysctl = lib.filterAttrs (n: _: n != "_module") config.boot.kernel.sysctl;
      prometheus = lib.optionalAttrs prom.enable {
        inherit (prom) listenAddress port;
        # nixpkgs' promConfig (alerting and remote_* are empty lists here).
        yml = valid {
          alerting.alertmanagers = [ ];
          global = prom.globalConfig;
          remote_read = [ ];
          remote_write = [ ];
          rule_files = map toString prom.ruleFiles;
          scrape_configs = prom.scrapeConfigs;
        };
      };
      grafana = lib.optionalAttrs config.services.grafana.enable {
        inherit (config.services.grafana) settings;
        provision = {
          datasources = config.services.grafana.provision.datasources.settings;
          dashboards = map (p: p // { options.path = toString p.options.path; }) config.services.grafana.provision.dashboards.settings.providers;
        };
      };
    };
in
{
  inherit flake summary;
  result = summary (system modules).config;
  nixosSystem = args: system (args.modules or [ ]);
  # The docs' /etc/nixos/flake.nix gets these inputs.
  inputs = {
    nixpkgs.lib = lib // { nixosSystem = args: system (args.modules or [ ]); };
    ssw = flake;
  };
}
