"""`greenprune.serving`, the documented import path of the fused serving ops (greenprune.deploy.serving)."""
from .deploy.serving import FusedSwiGLU, fuse_for_serving, greedy_step

__all__ = ["FusedSwiGLU", "fuse_for_serving", "greedy_step"]
