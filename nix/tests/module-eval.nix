# Evaluates modules/ssw-inference.nix without nixpkgs: a minimal stand-in for `lib` and `pkgs`
# (options are recorded, mkIf/mkMerge merged eagerly), so the module's mapping of the topology
# onto NixOS options can be asserted here. The real option types are exercised by the VM tests
# under `nix flake check`.
{ settings ? { }, roles ? { }, extra ? { } }:
let
  l = import ../lib.nix;
  merge = a: b:
    a // builtins.mapAttrs
      (k: v:
        if !(a ? ${k}) then v
        else if builtins.isAttrs v && builtins.isAttrs a.${k} then merge a.${k} v
        else if builtins.isList v && builtins.isList a.${k} then a.${k} ++ v
        else v)
      b;
  lib = {
    mkOption = o: o;
    mkEnableOption = d: { type = "bool"; description = d; };
    mkDefault = x: x;
    mkIf = cond: x: if cond then x else { };
    mkMerge = builtins.foldl' merge { };
    literalExpression = x: x;
    types = {
      package = "package"; anything = "anything"; bool = "bool"; str = "str"; path = "path";
      attrsOf = t: "attrsOf ${t}"; nullOr = t: "nullOr ${t}";
    };
    inherit (l) optional optionalAttrs recursiveUpdate;
    drop = n: xs: builtins.genList (i: builtins.elemAt xs (i + n)) (builtins.length xs - n);
    optionals = c: xs: if c then xs else [ ];
    listToAttrs = builtins.listToAttrs;
    nameValuePair = name: value: { inherit name value; };
    getExe = p: "${p}/bin/ssw";
    toInt = s: builtins.fromJSON s;
  };
  pkgs = {
    # A fake store path that carries what would be built: `<path>#{"config": …, "checks": …}`,
    # so the tests can read the config and the build-time check back out of ExecStart.
    runCommand = name: attrs: script:
      "/nix/store/fake-${name}#" + builtins.toJSON { config = builtins.fromJSON attrs.value; checks = script; };
  };
  cfg = {
    enable = true;
    package = "/nix/store/ssw";
    inherit settings;
    roles = { redis = true; gateway = true; workers = true; } // roles;
    hfTokenFile = null;
    openFirewall = false;
    logLevel = "info";
  } // extra;
  module = import ../../modules/ssw-inference.nix {
    config.services.ssw-inference = cfg;
    inherit lib pkgs;
  };
in
{
  inherit (module) options;
  config = module.config;
}
