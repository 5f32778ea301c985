# Mirrors api::readyz_reports_each_pool_and_metrics_count_requests: Prometheus scrapes the
# gateway and every engine, and sees the requests sent.
{ self }:
{
  name = "ssw-prometheus";
  nodes.machine = import ./common.nix { inherit self; settings.prometheus = { enable = true; port = 9090; scrapeInterval = "2s"; }; };
  testScript = builtins.readFile ./lib.py + builtins.readFile ./prometheus.py;
}
