# Mirrors failures::full_queue_answers_429_with_retry_after_before_enqueueing.
{ self }:
{
  name = "ssw-overload";
  nodes.machine = import ./common.nix {
    inherit self;
    settings = {
      # Slow engines and a tiny heavy queue: a burst overflows it.
      stub = { ttft = "20s"; tpot = "2ms"; outputTokens = 8; };
      worker.maxInflight = 1;
      pools = {
        heavy = { servedModel = "Qwen/Qwen2.5-14B-Instruct-AWQ"; maxQueue = 4; maxNumSeqs = 1; gpuMemoryUtilization = 0.5; };
        light = { servedModel = "Qwen/Qwen3-8B-AWQ"; gpuMemoryUtilization = 0.38; };
      };
    };
  };
  testScript = builtins.readFile ./overload.py;
}
