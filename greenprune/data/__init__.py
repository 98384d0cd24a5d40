"""Calibration, evaluation and recovery data: the corpora (stdlib, packages, the user's files) and the
code-instruction pairs mined from them."""
