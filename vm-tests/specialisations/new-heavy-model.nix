# The configuration model-swap.nix switches to: the heavy pool serves another model.
{ services.ssw-inference.settings.pools.heavy.servedModel = "new-model"; }
