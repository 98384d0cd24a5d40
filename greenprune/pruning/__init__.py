"""Pruning: the plan applied to the weights (a new, smaller model; the dense one untouched), to the tokenizer
(vocabulary), and the training-free compensation of what was removed."""
