# compose.yaml as committed at the repository root: `nix eval --raw .#lib.composeYaml`.
{ settings ? { }, sswImage ? "ssw:latest" }:
let
  l = import ./lib.nix;
  t = import ./topology.nix;
in
''
  # Generated from nix/defaults.nix by nix/compose.nix: do not edit.
  # Regenerate: nix eval --raw .#lib.composeYaml > compose.yaml   (or scripts/nix-checks.sh --fix)
  # Needs: Docker with the NVIDIA container toolkit, the `ssw:latest` image (docs/deploy-compose.md),
  # and HF_TOKEN in the environment if the models need one.
'' + l.toYAML (import ./compose.nix { inherit sswImage; } (t.normalise settings))
