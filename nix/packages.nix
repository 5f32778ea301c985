# Everything that needs nixpkgs and crane: the ssw package, its OCI image, the generated compose
# file, apps, checks, dev shell. The attribute names below never depend on nixpkgs, so looking
# up a nixpkgs-free flake output (`lib.*`) does not fetch nixpkgs.
{ self, system, nixpkgs, crane, advisory-db }:
let
  pkgs = nixpkgs.legacyPackages.${system};
  lib = pkgs.lib;
  craneLib = crane.mkLib pkgs;
  root = ../.;

  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      ../clippy.toml
      ../modules/observability
    ];
  };

  commonArgs = {
    inherit src;
    strictDeps = true;
    pname = "ssw";
    # The workspace's version: crates/cli/Cargo.toml says `version.workspace = true`, which crane
    # does not follow (it would use a placeholder 0.0.1, with a warning).
    version = (craneLib.crateNameFromCargoToml { cargoToml = ../Cargo.toml; }).version;
  };

  # Dependencies of the whole workspace, built once and shared by the package and every check.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  ssw = craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    cargoExtraArgs = "--locked -p ssw";
    doCheck = false; # the tests run once, in checks.nextest
    meta.mainProgram = "ssw";
  });

  image = pkgs.dockerTools.buildLayeredImage {
    name = "ssw";
    tag = "latest";
    contents = [ ssw pkgs.cacert ];
    config = {
      Entrypoint = [ "${ssw}/bin/ssw" ];
      Env = [ "RUST_LOG=info" ];
      ExposedPorts."8080/tcp" = { };
    };
  };

  composeFile = pkgs.writeText "compose.yaml" (import ./compose-file.nix { });

  # `ssw up` with redis-server on its PATH: `nix run` is the whole local platform.
  up = pkgs.writeShellApplication {
    name = "ssw-up";
    runtimeInputs = [ ssw pkgs.redis ];
    text = ''exec ssw up "$@"'';
  };

  gatewayApp = pkgs.writeShellApplication {
    name = "ssw-gateway";
    runtimeInputs = [ ssw ];
    text = ''exec ssw gateway "$@"'';
  };

  vmTest = file: pkgs.testers.runNixOSTest (import file { inherit self; });
in
{
  packages = {
    default = ssw;
    inherit ssw image;
    compose = composeFile;
  };

  apps = {
    default = { type = "app"; program = "${up}/bin/ssw-up"; meta.description = "The whole platform locally: Redis, stub engines, workers, gateway (ssw up)"; };
    gateway = { type = "app"; program = "${gatewayApp}/bin/ssw-gateway"; meta.description = "An ssw gateway alone"; };
  };

  devShells.default = craneLib.devShell {
    inputsFrom = [ ssw ];
    packages = [ pkgs.redis pkgs.cargo-nextest pkgs.nixpkgs-fmt pkgs.python3 pkgs.nix ];
  };

  checks = {
    inherit ssw;
    clippy = craneLib.cargoClippy (commonArgs // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    });
    fmt = craneLib.cargoFmt { inherit src; inherit (commonArgs) pname version; };
    doc = craneLib.cargoDoc (commonArgs // {
      inherit cargoArtifacts;
      env.RUSTDOCFLAGS = "--deny warnings";
    });
    audit = craneLib.cargoAudit { inherit src advisory-db; };
    # The integration tests start redis-server themselves on loopback ports.
    nextest = craneLib.cargoNextest (commonArgs // {
      inherit cargoArtifacts;
      nativeCheckInputs = [ pkgs.redis ];
      partitions = 1;
      partitionType = "count";
      cargoNextestPartitionsExtraArgs = "--no-tests=pass";
    });
    compose-up-to-date = pkgs.runCommand "compose-up-to-date" { } ''
      if ! diff -u ${../compose.yaml} ${composeFile}; then
        echo "compose.yaml is stale; regenerate it: nix eval --raw .#lib.composeYaml > compose.yaml" >&2
        exit 1
      fi
      touch $out
    '';
    # The nix/ function tests, the module through the module system of this nixpkgs' lib
    # (scenarios, docs blocks, planted defects), promtool on every generated Prometheus
    # config and the alert rules, and every generated config through the built
    # `ssw check-config`.
    nix-lib = pkgs.runCommand "nix-lib-tests"
      {
        nativeBuildInputs = [ pkgs.nix (pkgs.python3.withPackages (p: [ p.pyyaml ])) pkgs.prometheus.cli ];
      } ''
      export NIX_STATE_DIR=$TMPDIR/nix NIX_STORE_DIR=$TMPDIR/store HOME=$TMPDIR
      cp -r ${../nix} nix
      cp -r ${../modules} modules
      cp -r ${../vm-tests} vm-tests
      cp -r ${../docs} docs
      cp ${../flake.nix} flake.nix
      cp ${../compose.yaml} compose.yaml
      chmod -R u+w .
      NIXPKGS_LIB=${nixpkgs}/lib SSW_BIN=${ssw}/bin/ssw python3 nix/tests/run.py
      python3 nix/tests/vm_scripts.py
      touch $out
    '';
    # Every host of nix/hosts.nix (the docs' A40 configuration.nix, its fragments, a stub host)
    # evaluated to its system derivation with the real NixOS modules: every assertion and
    # option of nixpkgs checked. Evaluation only (the derivation path, without its context).
    nixos-hosts =
      let
        hosts = import ./hosts.nix {
          inherit system;
          inherit (nixpkgs.lib) nixosSystem;
          sswModule = self.nixosModules.default;
        };
        drvs = lib.mapAttrsToList (name: h: "${name} ${builtins.unsafeDiscardStringContext h.config.system.build.toplevel.drvPath}") hosts;
      in
      pkgs.writeText "nixos-hosts" (lib.concatStringsSep "\n" drvs);
    vm-routing = vmTest ../vm-tests/routing.nix;
    vm-overload = vmTest ../vm-tests/overload.nix;
    vm-worker-restart = vmTest ../vm-tests/worker-restart.nix;
    vm-model-swap = vmTest ../vm-tests/model-swap.nix;
    vm-prometheus = vmTest ../vm-tests/prometheus.nix;
  };
}
