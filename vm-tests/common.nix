# The node every VM test boots: the appliance in stub mode (no GPU), curl and jq for the script.
# `settings` merge recursively over these (a test that sets `worker.maxInflight` keeps
# `worker.drainTimeout`).
{ self, settings ? { } }:
{ pkgs, lib, ... }: {
  imports = [ self.nixosModules.default ];
  virtualisation.memorySize = 2048;
  virtualisation.cores = 2;
  environment.systemPackages = [ pkgs.curl pkgs.jq ];
  services.ssw-inference = {
    enable = true;
    settings = lib.recursiveUpdate
      {
        engine = "stub";
        stub = { ttft = "10ms"; tpot = "2ms"; outputTokens = 8; };
        worker.drainTimeout = "20s";
      }
      settings;
  };
}
