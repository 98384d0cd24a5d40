"""Recovery: LoRA self-distillation of a pruned model toward its dense reference, checkpointed and resumable."""
