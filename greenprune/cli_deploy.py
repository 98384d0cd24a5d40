"""The deployment subcommands: export (serving layouts), stream (layer-streaming prune), bench (throughput)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import GreenpruneError

COMMANDS = ("export", "stream", "bench")


def _ints(s: str) -> list[int]:
    try:
        return [int(x) for x in s.replace(",", " ").split()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected integers, got {s!r}") from e


def add_parsers(sub) -> None:
    from .export import FORMATS
    from .stream import STREAM_METHODS, STREAM_SCORERS

    x = sub.add_parser("export", help="write a pruned model as a plain Llama or DeciLM/Nemotron-NAS checkpoint")
    x.add_argument("--model", required=True, help="pruned model directory (the output of `greenprune prune`)")
    x.add_argument("--format", choices=FORMATS, default="auto",
                   help="llama (uniform plans) | decilm (per-layer plans, vLLM's DeciLMForCausalLM) | auto (default)")
    x.add_argument("--out", required=True, help="output directory")
    x.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")

    s = sub.add_parser("stream", help="prune a sharded safetensors checkpoint one decoder layer at a time")
    s.add_argument("--model", required=True, help="dense checkpoint directory (safetensors shards + config.json)")
    s.add_argument("--ratio", type=float, default=0.22, help="fraction of all parameters to remove (default 0.22)")
    s.add_argument("--method", choices=STREAM_METHODS, default="global",
                   help="global (per-layer widths from one standardised ranking, default) | uniform | layers")
    s.add_argument("--scorer", choices=STREAM_SCORERS, default="flap", help="channel importance (default flap)")
    s.add_argument("--align", type=int, default=64, help="FFN widths are multiples of this (256 for --format decilm)")
    s.add_argument("--max-ffn-prune", type=float, default=0.75, help="largest fraction of one layer's FFN removed")
    s.add_argument("--data", default="stdlib", help="calibration data (as for prune)")
    s.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    s.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens (default 4096)")
    s.add_argument("--seq-len", type=int, default=256, help="calibration block length (default 256)")
    s.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="compute dtype")
    s.add_argument("--out", required=True, help="output directory (resumes from OUT.stream-state if interrupted)")
    s.add_argument("--overwrite", action="store_true", help="replace the output directory if it exists")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")

    b = sub.add_parser("bench", help="prefill and decode tokens/s of a pruned model vs its dense reference")
    b.add_argument("--model", required=True, help="pruned model directory")
    b.add_argument("--reference", default=None, help="dense model (default: the embedded model if the report names it)")
    b.add_argument("--prompt-lens", type=_ints, nargs="+", default=[[128, 512, 2048]], help="prefill prompt lengths (default 128,512,2048)")
    b.add_argument("--batch", type=_ints, nargs="+", default=[[1, 8, 32]], help="decode batch sizes (default 1,8,32)")
    b.add_argument("--decode-prompt", type=int, default=64, help="prompt length before timed decode steps (default 64)")
    b.add_argument("--decode-tokens", type=int, default=32, help="timed decode steps (default 32)")
    b.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up (default 3)")
    b.add_argument("--compile", action="store_true", help="CUDA: torch.compile + static KV cache (CUDA graphs)")
    b.add_argument("--fused", action="store_true",
                   help="serve both models through greenprune's ops: fused SwiGLU FFN, argmax LM head (no logits)")
    b.add_argument("--device-map", default=None, help='accelerate device map, e.g. "auto" to spread over several GPUs')
    b.add_argument("--out", required=True, help="directory for bench.json and bench.png")
    b.add_argument("--no-progress", action="store_true", help="no progress output")


def run(a) -> int:
    if a.cmd == "export":
        from .export import export_model

        res = export_model(a.model, a.format, a.out, a.overwrite)
        print(f"exported {res['format']} checkpoint to {res['out']} ({res['layers_kept']} layers kept, "
              f"{len(res['shards'])} shard(s))")
        return 0
    if a.cmd == "stream":
        from transformers import AutoTokenizer

        from . import data as data_mod
        from .stream import StreamOptions, stream_prune

        tok_dir = a.tokenizer or a.model
        try:
            tok = AutoTokenizer.from_pretrained(tok_dir)
        except Exception as e:
            raise GreenpruneError(f"no tokenizer in {tok_dir} ({type(e).__name__}); pass --tokenizer DIR") from e
        calib, _ = data_mod.calibration_and_heldout(a.data)
        blocks = data_mod.token_blocks(tok, calib, a.seq_len, a.calib_tokens)
        opts = StreamOptions(ratio=a.ratio, method=a.method, align=a.align, max_ffn_prune=a.max_ffn_prune,
                             scorer=a.scorer, compute_dtype=a.dtype)
        rep = stream_prune(a.model, a.out, blocks, opts, a.overwrite, progress=not a.no_progress)
        mem = rep["memory"]
        print(f"pruned {rep['plan']['ratio']:.1%} of parameters into {a.out}; peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(budget: one layer {mem['budget_layer_bytes'] / 2**30:.2f} GiB + activations "
              f"{(mem['budget_hidden_states_bytes'] + mem['budget_batch_activations_bytes']) / 2**30:.2f} GiB)")
        return 0
    from .bench import BenchOptions, run_bench

    opts = BenchOptions(prompt_lens=tuple(x for xs in a.prompt_lens for x in xs), batches=tuple(x for xs in a.batch for x in xs), decode_prompt=a.decode_prompt,
                        decode_tokens=a.decode_tokens, repeats=a.repeats, compile=a.compile, fused=a.fused,
                        device_map=a.device_map)
    res = run_bench(a.model, a.reference, opts, a.out, progress=not a.no_progress, command=a.command_line)
    for r in res["prefill"] + res["decode"]:
        what = f"prefill L={r['prompt_len']}" if "prompt_len" in r else f"decode B={r['batch']}"
        sp = f"  speedup {r['speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x)" if "speedup" in r else ""
        print(f"{what:>16}: pruned {r['pruned_tokens_per_s']:.1f} tok/s" +
              (f", dense {r['dense_tokens_per_s']:.1f} tok/s" if "dense_tokens_per_s" in r else "") + sp)
    print(f"wrote {Path(a.out) / 'bench.json'} and bench.png ({res['info']['device']})")
    return 0
