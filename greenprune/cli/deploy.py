"""The deployment subcommands: export (serving layouts), stream (layer-streaming prune), bench (throughput)."""
from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from ..data import corpus
from ..deploy.bench import BenchOptions, run_bench
from ..deploy.export import FORMATS, export_model
from ..deploy.stream import STREAM_METHODS, STREAM_SCORERS, StreamOptions, stream_prune
from ..errors import GreenpruneError
from ..modelio.reports import source_model
from ..planning.options import PlanOptions
from .args import ints, option, switch

COMMANDS = ("export", "stream", "bench")
SO, P, B = StreamOptions(), PlanOptions(), BenchOptions()
STREAM_CALIB_TOKENS = 4096  # carried through every layer as [N, L, hidden] beside one layer: see the help


def add_parsers(sub) -> None:
    x = sub.add_parser("export", help="write a pruned model as a plain Llama or DeciLM/Nemotron-NAS checkpoint")
    x.add_argument("--model", required=True, help="pruned model directory (the output of `greenprune prune`)")
    option(x, "--format", "auto", "llama (uniform plans) | decilm (per-layer plans, vLLM's DeciLMForCausalLM) | auto",
           choices=FORMATS)
    x.add_argument("--out", required=True, help="output directory")
    switch(x, "--overwrite", "replace the output directory if it exists")

    s = sub.add_parser("stream", help="prune a sharded safetensors checkpoint one decoder layer at a time")
    s.add_argument("--model", required=True, help="dense checkpoint directory (safetensors shards + config.json)")
    option(s, "--ratio", P.ratio, "fraction of all parameters to remove", type=float)
    option(s, "--method", SO.method, "global (per-layer widths from one standardised ranking) | uniform | layers",
           choices=STREAM_METHODS)
    option(s, "--scorer", SO.scorer, "channel importance (no gradient scorers: they need the whole model)",
           choices=STREAM_SCORERS)
    option(s, "--align", P.align, "FFN widths are multiples of this (256 for --format decilm)", type=int)
    option(s, "--max-ffn-prune", P.max_ffn_prune, "largest fraction of one layer's FFN removed", type=float)
    option(s, "--data", "stdlib", "calibration data (as for prune)")
    s.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory)")
    option(s, "--calib-tokens", STREAM_CALIB_TOKENS, "calibration tokens; fewer than prune's, because their hidden "
           "states are carried through every layer beside it (4,096 x a 70B model's 8,192 floats: 128 MiB)", type=int)
    option(s, "--seq-len", 256, "calibration block length", type=int)
    option(s, "--dtype", SO.compute_dtype, "compute dtype", choices=("float32", "bfloat16", "float16"))
    s.add_argument("--out", required=True, help="output directory (resumes from OUT.stream-state if interrupted)")
    switch(s, "--overwrite", "replace the output directory if it exists")
    switch(s, "--no-progress", "no progress bars")

    b = sub.add_parser("bench", help="prefill and decode tokens/s of a pruned model vs its dense reference")
    b.add_argument("--model", required=True, help="pruned model directory")
    b.add_argument("--reference", default=None, help="dense model (default: the embedded model if the report names it)")
    option(b, "--prompt-lens", [list(B.prompt_lens)], "prefill prompt lengths", type=ints, nargs="+")
    option(b, "--batch", [list(B.batches)], "decode batch sizes", type=ints, nargs="+")
    option(b, "--decode-prompt", B.decode_prompt, "prompt length before timed decode steps", type=int)
    option(b, "--decode-tokens", B.decode_tokens, "timed decode steps", type=int)
    option(b, "--repeats", B.repeats, "timed repeats after one warm-up", type=int)
    switch(b, "--compile", "CUDA: torch.compile + static KV cache (CUDA graphs)")
    switch(b, "--fused", "serve both models through greenprune's ops: fused SwiGLU FFN, argmax LM head (no logits)")
    b.add_argument("--device-map", default=None, help='accelerate device map, e.g. "auto" to spread over several GPUs (default: none, one device)')
    b.add_argument("--out", required=True, help="directory for bench.json and bench.png")
    switch(b, "--no-progress", "no progress output")


def run(a) -> int:
    if a.cmd == "export":
        res = export_model(a.model, a.format, a.out, a.overwrite)
        print(f"exported {res['format']} checkpoint to {res['out']} ({res['layers_kept']} layers kept, "
              f"{len(res['shards'])} shard(s))")
        return 0
    if a.cmd == "stream":
        tok_dir = a.tokenizer or a.model
        try:
            tok = AutoTokenizer.from_pretrained(tok_dir)
        except Exception as e:
            raise GreenpruneError(f"no tokenizer in {tok_dir} ({type(e).__name__}); pass --tokenizer DIR") from e
        calib, _ = corpus.calibration_and_heldout(a.data)
        blocks = corpus.token_blocks(tok, calib, a.seq_len, a.calib_tokens)
        plan = PlanOptions(ratio=a.ratio, align=a.align, max_ffn_prune=a.max_ffn_prune)
        opts = StreamOptions(plan=plan, method=a.method, scorer=a.scorer, compute_dtype=a.dtype)
        rep = stream_prune(a.model, a.out, blocks, opts, a.overwrite, progress=not a.no_progress)
        mem = rep["memory"]
        print(f"pruned {rep['plan']['ratio']:.1%} of parameters into {a.out}; peak RSS {mem['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(budget: one layer {mem['budget_layer_bytes'] / 2**30:.2f} GiB + activations "
              f"{(mem['budget_hidden_states_bytes'] + mem['budget_batch_activations_bytes']) / 2**30:.2f} GiB)")
        return 0
    opts = BenchOptions(prompt_lens=tuple(x for xs in a.prompt_lens for x in xs), batches=tuple(x for xs in a.batch for x in xs),
                        decode_prompt=a.decode_prompt, decode_tokens=a.decode_tokens, repeats=a.repeats,
                        compile=a.compile, fused=a.fused, device_map=a.device_map)
    ref = a.reference or source_model(a.model)  # the dense model the report names (None: the embedded default)
    res = run_bench(a.model, ref, opts, a.out, progress=not a.no_progress, command=a.command_line)
    if "dense" not in res["models"]:
        print(f"note: no dense reference ({a.model} has no report naming its dense model): only the pruned model "
              "was timed, no speedup; pass --reference DENSE_MODEL")
    for r in res["prefill"] + res["decode"]:
        what = f"prefill L={r['prompt_len']}" if "prompt_len" in r else f"decode B={r['batch']}"
        sp = f"  speedup {r['speedup']:.2f}x (ideal {r['ideal_speedup']:.2f}x)" if "speedup" in r else ""
        print(f"{what:>16}: pruned {r['pruned_tokens_per_s']:.1f} tok/s" +
              (f", dense {r['dense_tokens_per_s']:.1f} tok/s" if "dense_tokens_per_s" in r else "") + sp)
    print(f"wrote {Path(a.out) / 'bench.json'} and bench.png ({res['info']['device']})")
    return 0
