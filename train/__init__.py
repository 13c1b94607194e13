"""Training on talkcurate shards (dataset, sampler, model, FSDP trainer): see the issues."""
