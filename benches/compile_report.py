"""Compile every greenprune Triton kernel for Hopper (sm_90a) without a GPU and report resources.

    python benches/compile_report.py            # all autotune configs, bf16
    python benches/compile_report.py --fp32     # also the fp32 (IEEE dot) variants

Triton's front end, its NVIDIA backend and the bundled ptxas run on any machine, so this catches
compiled-mode errors the interpreter cannot (types, layouts, constexpr strings) and reports per config:
shared memory, registers, spills (ptxas -v) and whether tensor-core loops use wgmma. A config that spills
or lacks wgmma where a GEMM is expected is not plausibly fast on an H100; fix it before timing.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compiled mode

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from greenprune.kernels import channel_stats as cs, kl, swiglu, vocab  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def compile_report(lk, types: dict, consts: dict, num_warps: int, num_stages: int) -> dict:
    fn = lk.jit()
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
    src = ASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in consts.items()})
    k = triton.compile(src, target=TARGET, options=dict(num_warps=num_warps, num_stages=num_stages))
    ptx = k.asm["ptx"]
    row = dict(kernel=fn.__name__, warps=num_warps, stages=num_stages, shared=k.metadata.shared,
               wgmma="wgmma" in ptx, regs="?", spill="?")
    if os.path.exists(PTXAS):
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        err = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True,
                             text=True).stderr
        os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", err)
        spill = re.search(r"(\d+) bytes spill stores", err)
        row.update(regs=int(regs.group(1)) if regs else "?", spill=int(spill.group(1)) if spill else "?")
    blocks = {k: v for k, v in consts.items() if k.startswith("BLOCK") or k in ("TOPK", "HAS_IDS")}
    print(f"{row['kernel']:28s} {str(blocks):62s} w={num_warps} s={num_stages} smem={row['shared']:6d} "
          f"regs={row['regs']} spill={row['spill']} {'wgmma' if row['wgmma'] else ''}", flush=True)
    return row


def main(dtypes=("bf16",)) -> list[dict]:
    rows = []
    for dt in dtypes:
        half = dt != "fp32"
        dot = dict(UPCAST=False, PREC="tf32" if half else os.environ.get("FP32_PREC", "tf32x3"))
        p = f"*{dt}"
        for c in cs._reduce_configs():
            rows.append(compile_report(cs._channel_moments_kernel, {"x_ptr": p, "shift_ptr": "*fp32", "part_ptr": "*fp32"},
                                       {"HAS_SHIFT": True, **c.kwargs}, c.num_warps, c.num_stages))
            for has_g, signed, scale in ((False, False, True), (True, False, False), (True, True, False)):  # wanda, taylor
                rows.append(compile_report(cs._column_sums_kernel,
                                           {"w_ptr": p, "g_ptr": p, "scale_ptr": "*fp32", "part_ptr": "*fp32"},
                                           {"HAS_G": has_g, "SIGNED": signed, "HAS_SCALE": scale, **c.kwargs},
                                           c.num_warps, c.num_stages))
        for c in cs._row_configs():
            for signed in (False, True):
                rows.append(compile_report(cs._taylor_rows_kernel, {"w_ptr": p, "g_ptr": p, "out_ptr": "*fp32"},
                                           {"SIGNED": signed, **c.kwargs}, c.num_warps, c.num_stages))
        kl_types = {**{n: p for n in ("hd_ptr", "wd_ptr", "hp_ptr", "wp_ptr")}, "kept_ptr": "*i32",
                    "drop_ptr": "*i32", "stat_ptr": "*fp32", "arg_ptr": "*i32"}
        for c in kl._kl_configs():
            for has_ids in (True, False):
                rows.append(compile_report(kl._kl_divergence_kernel, kl_types, {"HAS_IDS": has_ids, **dot, **c.kwargs},
                                           c.num_warps, c.num_stages))
        for c in swiglu._swiglu_configs():
            rows.append(compile_report(swiglu._swiglu_ffn_kernel, {"x_ptr": p, "w_ptr": p, "a_ptr": p},
                                       {**dot, **c.kwargs}, c.num_warps, c.num_stages))
        rows.append(compile_report(vocab._remapped_embedding_kernel,
                                   {"ids_ptr": "*i64", "map_ptr": "*i32", "w_ptr": p, "out_ptr": p, "kept_ptr": "*i64"},
                                   {"BLOCK_T": 16, "BLOCK_H": 1024}, 4, 3))
        for c in vocab._head_configs():
            rows.append(compile_report(vocab._lm_head_argmax_kernel,
                                       {"h_ptr": p, "w_ptr": p, "best_ptr": "*fp32", "arg_ptr": "*i32"},
                                       {**dot, **c.kwargs}, c.num_warps, c.num_stages))
            rows.append(compile_report(vocab._lm_head_topk_kernel,
                                       {"h_ptr": p, "w_ptr": p, "val_ptr": "*fp32", "idx_ptr": "*i32"},
                                       {**dot, "TOPK": 8, "KP": 8, **c.kwargs}, c.num_warps, c.num_stages))
    return rows


if __name__ == "__main__":
    main(("bf16", "fp32") if "--fp32" in sys.argv else ("bf16",))
