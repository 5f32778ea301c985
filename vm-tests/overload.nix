# Mirrors failures::full_queue_answers_429_with_retry_after_before_enqueueing.
{ self }:
{
  name = "ssw-overload";
  nodes.machine = import ./common.nix {
    inherit self;
    settings = {
      worker.maxInflight = 1;
      pools = {
        # Slow heavy engines and a tiny heavy queue: a burst overflows it. Light stays fast.
        heavy = { maxQueue = 4; maxNumSeqs = 1; stub.ttft = "20s"; };
      };
    };
  };
  testScript = builtins.readFile ./lib.py + builtins.readFile ./overload.py;
}
