"""Check a compiled greenprune._C without a GPU: it loads, registers every op under torch.ops.greenprune_cuda
with a CUDA and a Meta kernel, its Meta kernels give the output shapes and dtypes of the torch reference, and
it was compiled for the CUDA major version torch was built with. Usage: python scripts/cuda_build_check.py
BUILD_LIB (the folder holding greenprune/_C*.so). Imports only torch, so it runs in a bare CUDA-torch venv."""
import glob
import importlib.util
import json
import os
import sys

import torch

EXPECTED = {  # schema arguments, as the Python custom ops torch.ops.greenprune.* declare them (int -> SymInt)
    "remapped_embedding": "(Tensor ids, Tensor id_map, Tensor weight, int fallback) -> (Tensor, Tensor)",
    "lm_head_argmax": "(Tensor h, Tensor w_kept, Tensor? kept_ids) -> Tensor",
    "lm_head_topk": "(Tensor h, Tensor w_kept, Tensor? kept_ids, int k) -> (Tensor, Tensor)",
    "channel_moments": "(Tensor x, Tensor? shift) -> (Tensor, Tensor, Tensor)",
}


def load(build_lib: str):
    found = glob.glob(os.path.join(build_lib, "greenprune", "_C*.so"))
    if not found:
        sys.exit(f"cuda_build_check: no greenprune/_C*.so under {build_lib}")
    spec = importlib.util.spec_from_file_location("greenprune._C", found[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, found[0]


def main() -> None:
    mod, path = load(sys.argv[1] if len(sys.argv) > 1 else "build/cuda-check")
    problems = []
    for op, schema in EXPECTED.items():
        packet = getattr(torch.ops.greenprune_cuda, op)
        got = str(packet.default._schema)
        if got != f"greenprune_cuda::{op}{schema}":
            problems.append(f"{op}: schema {got}")
        for key in ("CUDA", "Meta"):
            if not torch._C._dispatch_has_kernel_for_dispatch_key(f"greenprune_cuda::{op}", key):
                problems.append(f"{op}: no {key} kernel")
    m = dict(device="meta")
    ids, id_map, w = torch.empty(3, 5, dtype=torch.long, **m), torch.empty(100, dtype=torch.int32, **m), \
        torch.empty(40, 16, dtype=torch.bfloat16, **m)
    out, kept = torch.ops.greenprune_cuda.remapped_embedding(ids, id_map, w, -1)
    h = torch.empty(2, 3, 16, dtype=torch.bfloat16, **m)
    arg = torch.ops.greenprune_cuda.lm_head_argmax(h, w, None)
    vals, top = torch.ops.greenprune_cuda.lm_head_topk(h, w, None, 4)
    s, q, a = torch.ops.greenprune_cuda.channel_moments(h, None)
    shapes = {"remapped_embedding": [(out.shape, out.dtype), (kept.shape, kept.dtype)],
              "lm_head_argmax": [(arg.shape, arg.dtype)],
              "lm_head_topk": [(vals.shape, vals.dtype), (top.shape, top.dtype)],
              "channel_moments": [(t.shape, t.dtype) for t in (s, q, a)]}
    want = {"remapped_embedding": [((3, 5, 16), torch.bfloat16), ((3, 5), torch.long)],
            "lm_head_argmax": [((2, 3), torch.long)],
            "lm_head_topk": [((2, 3, 4), torch.float32), ((2, 3, 4), torch.long)],
            "channel_moments": [((16,), torch.float32)] * 3}
    for op, got in shapes.items():
        if [(tuple(sh), dt) for sh, dt in got] != want[op]:
            problems.append(f"{op}: meta outputs {got}, expected {want[op]}")
    ext_cuda = f"{mod.cuda_runtime_version // 1000}.{mod.cuda_runtime_version % 1000 // 10}"
    if torch.version.cuda is None or ext_cuda.split(".")[0] != torch.version.cuda.split(".")[0]:
        problems.append(f"compiled with CUDA {ext_cuda}, torch built with CUDA {torch.version.cuda}")
    report = {"extension": path, "size_bytes": os.path.getsize(path), "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "extension_cuda": ext_cuda, "extension_torch": mod.torch_version,
              "ops": list(mod.ops), "problems": problems}
    print(json.dumps(report, indent=1))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
