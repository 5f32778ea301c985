# A staging topology: one GPU-less host, stub engines, an extra alias, a custom pool default.
{
  engine = "stub";
  gpus = [ 0 ];
  pools = {
    heavy = { servedModel = "Qwen/Qwen2.5-14B-Instruct-AWQ"; aliases = [ "npc-boss" ]; gpuMemoryUtilization = 0.9; };
    light = {
      servedModel = "Qwen/Qwen3-8B-AWQ";
      gpuMemoryUtilization = 0.9;
      requestDefaults = { chat_template_kwargs = { enable_thinking = false; }; };
      queueTimeout = "30s";
    };
  };
  replicas = {
    heavy-a = { pool = "heavy"; gpu = 0; };
    light-a = { pool = "light"; gpu = 0; };
    light-b = { pool = "light"; gpu = 0; port = 9100; };
  };
  # A staging host on a private network: open on purpose.
  gateway = { listen = "0.0.0.0:8080"; allowUnauthenticated = true; };
  redis.port = 6380;
  stub = { ttft = "5ms"; tpot = "1ms"; outputTokens = 8; };
}
