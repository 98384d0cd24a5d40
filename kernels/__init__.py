"""greenprune.kernels: the hot paths of pruning and serving.

Every op has a pure-torch reference (reference.py, also the CPU fallback), a Triton kernel behind a
torch.library custom op (torch.ops.greenprune.<op>), and some a CUDA version in the optional compiled
extension (csrc/, torch.ops.greenprune_cuda.<op>); dispatch.py picks one per call (CUDA extension -> Triton on CUDA tensors -> torch; GREENPRUNE_BACKEND=torch|triton|cuda|auto forces
one). Callers import the ops from here and never keep copies of their own. No GPU is needed at import.
"""
if __name__.partition(".")[0] != "greenprune":
    # Imported as a top-level `kernels` (the repo root is on sys.path, e.g. `python -m pytest` from it, and
    # transformers probes for Hugging Face's `kernels` package under that name): stay an empty module so the
    # ops, the registry and the torch.library registrations exist once, under greenprune.kernels. Do not
    # give this package a __version__: transformers would then take it for the Hugging Face package.
    __all__: list = []
else:
    from .channel_stats import ChannelStats, channel_moments, group_sum, taylor_scores, wanda_scores
    from .dispatch import BackendUnavailable, backend_for, fallback_counts
    from .kl import kl_divergence
    from .kl_loss import kl_loss
    from .reference import KLResult
    from .swiglu import fuse_gate_up, swiglu_ffn
    from .vocab import (
        build_id_map,
        compact_logits,
        lm_head_argmax,
        lm_head_topk,
        remap_ids,
        remapped_embedding,
        to_original_ids,
    )

    __all__ = [
        "BackendUnavailable",
        "ChannelStats",
        "KLResult",
        "backend_for",
        "build_id_map",
        "channel_moments",
        "compact_logits",
        "fallback_counts",
        "fuse_gate_up",
        "group_sum",
        "kl_divergence",
        "kl_loss",
        "lm_head_argmax",
        "lm_head_topk",
        "remap_ids",
        "remapped_embedding",
        "swiglu_ffn",
        "taylor_scores",
        "to_original_ids",
        "wanda_scores",
    ]
