"""Evaluation: how close a pruned model stays to its dense one (bits per byte, KL, agreement, next-line match,
speed) and how it does on the tasks its users run (HumanEval pass@k in a sandbox, lm-evaluation-harness)."""
