# Mirrors failures::jobs_of_a_worker_killed_before_output_complete_on_another: a worker killed
# and restarted by systemd while requests keep succeeding.
{ self }:
{
  name = "ssw-worker-restart";
  nodes.machine = import ./common.nix { inherit self; };
  testScript = builtins.readFile ./worker-restart.py;
}
