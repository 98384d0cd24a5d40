"""Deploy: export to serving layouts, layer-streaming pruning of checkpoints larger than memory, serving through
greenprune's fused ops, speed benchmarks and the work floors they are judged by."""
