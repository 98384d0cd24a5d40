"""Evaluation of (pruned) models the way their users run them: HumanEval pass@k in a sandbox, lm-eval tasks."""
