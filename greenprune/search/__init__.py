"""Search: per-layer pruning rates by evolutionary search (numeric or LLM-driven operators), scored by masked
replay of the dense model, checkpointed every generation."""
