"""Planning: from importance scores and a parameter budget to a pruning plan (the plan format, the unified
KL-guided planner and its baselines, the shared width rules, masked replay of the dense model)."""
