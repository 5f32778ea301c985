# Mirrors failures::jobs_of_a_worker_killed_before_output_complete_on_another: a worker killed
# with requests in flight and restarted by systemd, every request answered.
{ self }:
{
  name = "ssw-worker-restart";
  nodes.machine = import ./common.nix {
    inherit self;
    # Heavy answers take 3 s to start: requests are in flight when the worker is killed.
    settings.pools.heavy.stub.ttft = "3s";
  };
  testScript = builtins.readFile ./lib.py + builtins.readFile ./worker-restart.py;
}
