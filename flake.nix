{
  description = "SSW inference platform: OpenAI gateway -> Redis queues -> workers -> vLLM, as a NixOS appliance";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    # crane has no inputs of its own: nothing to follow.
    crane.url = "github:ipetkov/crane";
    advisory-db = {
      url = "github:rustsec/advisory-db";
      flake = false;
    };
  };

  outputs = { self, nixpkgs, crane, advisory-db }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      topology = import ./nix/topology.nix;
    in
    {
      # Pure functions and values: evaluate without nixpkgs (CI checks these with Debian's nix).
      lib = {
        inherit topology;
        inherit (topology) normalise defaults;
        compose = settings: import ./nix/compose.nix { } (topology.normalise settings);
        composeYaml = import ./nix/compose-file.nix { };
      };

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./modules/ssw-inference.nix ];
        services.ssw-inference.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      packages = forAllSystems (system: (import ./nix/packages.nix { inherit self system nixpkgs crane advisory-db; }).packages);
      checks = forAllSystems (system: (import ./nix/packages.nix { inherit self system nixpkgs crane advisory-db; }).checks);
      apps = forAllSystems (system: (import ./nix/packages.nix { inherit self system nixpkgs crane advisory-db; }).apps);
      devShells = forAllSystems (system: (import ./nix/packages.nix { inherit self system nixpkgs crane advisory-db; }).devShells);
      formatter = forAllSystems (system: nixpkgs.legacyPackages.${system}.nixpkgs-fmt);
    };
}
