# NixOS hosts that `nix flake check` evaluates to the system derivation (checks.nixos-hosts):
# the A40 host of docs/deploy-nixos.md (its configuration.nix as written there), each module
# fragment of that page on a GPU host (hardware and NVIDIA driver), and a stub host. Evaluating `system.build.toplevel`
# forces every assertion of every NixOS module, which the offline checks (nix/tests, against
# stand-in declarations) cannot; it needs nixpkgs, so it runs under `nix flake check` only.
# nix/tests/module.py also evaluates this file offline, with its stand-in `nixosSystem`.
{ nixosSystem, sswModule, system ? "x86_64-linux" }:
let
  docs = builtins.readFile ../docs/deploy-nixos.md;
  # ```nix blocks: the text after each opening fence.
  blocks = map (b: builtins.substring 4 (builtins.stringLength b) b)
    (builtins.filter (b: builtins.isString b && builtins.substring 0 4 b == "nix\n")
      (builtins.split "```" docs));
  startsWith = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  configuration = builtins.head (builtins.filter (startsWith "# /etc/nixos/configuration.nix") blocks);
  fragments = builtins.filter (b: !(startsWith "# /etc/nixos/" b)) blocks;
  # What nixos-generate-config writes for a host: a root file system and a boot loader.
  hardware = {
    fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
    boot.loader.systemd-boot.enable = true;
  };
  # The rest of a GPU host around a fragment: the NVIDIA driver, as the A40 configuration has.
  driver = { lib, ... }: {
    nixpkgs.config.allowUnfreePredicate = p: builtins.elem (lib.getName p) [ "nvidia-x11" "nvidia-settings" ];
    services.xserver.videoDrivers = [ "nvidia" ];
    hardware.nvidia.open = true;
    system.stateVersion = "26.05";
  };
  host = modules: nixosSystem { inherit system; modules = [ sswModule hardware ] ++ modules; };
in
{
  a40 = host [ (import (builtins.toFile "configuration.nix" configuration)) ];
  stub = host [{ services.ssw-inference = { enable = true; settings.engine = "stub"; }; system.stateVersion = "26.05"; }];
}
// builtins.listToAttrs (builtins.genList
  (i: {
    name = "docs-fragment-${toString i}";
    value = host [ driver (import (builtins.toFile "fragment.nix" "{ lib, ... }: { ${builtins.elemAt fragments i} }")) ];
  })
  (builtins.length fragments))
