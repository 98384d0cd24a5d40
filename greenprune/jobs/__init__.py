"""Jobs: the prune and eval commands end to end (every stage in order, timed, reported, saved atomically)."""
