"""Scoring: activation and gradient statistics of the dense model, and importance scores of every FFN
channel, KV group and layer from them."""
