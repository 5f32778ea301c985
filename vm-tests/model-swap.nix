# Mirrors rollout::a_rollout_under_load_swaps_the_heavy_model_without_a_failed_request through
# NixOS: a switch to a specialisation whose heavy pool serves another model, under load. The
# switch restarts no engine, worker or gateway; ssw-rollout.service rolls the heavy stubs one by
# one, and no request fails.
{ self }:
{
  name = "ssw-model-swap";
  nodes.machine = { ... }: {
    imports = [ (import ./common.nix {
      inherit self;
      # Answers take ~0.2 s: requests are in flight while a replica drains.
      settings.pools.heavy.stub = { ttft = "150ms"; tpot = "5ms"; };
    }) ];
    specialisation.new-heavy-model.configuration = import ./specialisations/new-heavy-model.nix;
  };
  testScript = builtins.readFile ./lib.py + builtins.readFile ./model-swap.py;
}
