# The few packages and builders the modules under test use, as fake derivations (no nixpkgs
# here). `runCommand` records what it would build in its output path,
# `/nix/store/fake-<name>#{"config": <the JSON it copies>, "checks": <its script>}`, so a test
# can read a unit's config file and its build-time `ssw check-config` back out of ExecStart.
{ lib }:
let
  drv = name: extra: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    meta = { };
  } // extra;
in
{
  _type = "pkgs";
  system = "x86_64-linux";
  stdenv.hostPlatform.system = "x86_64-linux";
  ssw = drv "ssw-0.1.0" { pname = "ssw"; meta.mainProgram = "ssw"; };
  curl = drv "curl" { };
  coreutils = drv "coreutils" { };
  jq = drv "jq" { };
  podman = drv "podman" { };
  docker = drv "docker" { };
  linuxPackages = {
    nvidiaPackages = {
      stable = drv "nvidia-x11-595.84" { pname = "nvidia-x11"; version = "595.84"; };
      production = drv "nvidia-x11-595.84" { pname = "nvidia-x11"; version = "595.84"; };
    };
  };
  runCommand = name: attrs: script: drv name {
    outPath = "/nix/store/fake-${name}#" + builtins.toJSON { config = builtins.fromJSON attrs.value; checks = script; };
  };
  writeText = name: _text: drv name { };
  # Its script is kept in the fake derivation's `text` (tests read it back through the unit).
  writeShellScript = name: text: drv name { inherit text; };
}
