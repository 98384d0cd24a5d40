"""Model I/O and formats: loading (directories, hub ids, GGUF, the embedded default), atomic saves, sharded
safetensors, the per-layer model type (greenprune_llama) and the report beside a pruned model."""
