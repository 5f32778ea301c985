# Mirrors crates/cli/tests/it/api.rs: routing by model and by header, streaming.
{ self }:
{
  name = "ssw-routing";
  nodes.machine = import ./common.nix { inherit self; };
  testScript = builtins.readFile ./lib.py + builtins.readFile ./routing.py;
}
