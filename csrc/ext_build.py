"""Build switch of the optional CUDA extension greenprune._C (imported by setup.py; stdlib + torch only).

GREENPRUNE_BUILD_CUDA:
  0     never build it (pure-Python install).
  1     build it; fail loudly (with the reason) when it cannot be built.
  auto  (default) build it when the build environment imports a CUDA build of torch and finds nvcc; otherwise
        install pure Python and say why. A CPU-only install (e.g. pip's isolated build, which has no torch,
        or a CPU torch) therefore never fails. A failed compile in auto mode is reported and skipped too.
GREENPRUNE_CUDA_ARCH: compute capabilities to compile for, ';'-separated (default "8.0;9.0": A100, H100);
  it becomes TORCH_CUDA_ARCH_LIST. CUDA_HOME / CUDA_PATH: the toolkit; when unset it is found from nvcc on
  PATH (a wrapper script in /usr/local/bin is followed to /usr/local/cuda).
Build with torch already installed: `GREENPRUNE_BUILD_CUDA=1 pip install --no-build-isolation -e .`.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

ENV_SWITCH = "GREENPRUNE_BUILD_CUDA"
ENV_ARCH = "GREENPRUNE_CUDA_ARCH"
DEFAULT_ARCH = "8.0;9.0"
EXT_NAME = "greenprune._C"
_MODES = {"0": "0", "off": "0", "no": "0", "false": "0", "1": "1", "on": "1", "yes": "1", "true": "1",
          "auto": "auto", "": "auto"}


class CudaBuildError(SystemExit):
    """GREENPRUNE_BUILD_CUDA=1 but the extension cannot be built (exits setup.py with the reason)."""


def build_mode(environ=os.environ) -> str:
    raw = environ.get(ENV_SWITCH, "auto").strip().lower()
    if raw not in _MODES:
        raise CudaBuildError(f"{ENV_SWITCH}={raw!r}: choose 0, 1 or auto")
    return _MODES[raw]


def _has_toolkit(home: str) -> bool:
    return os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def find_cuda_home(environ=os.environ):
    """The CUDA toolkit root, or None. Honours CUDA_HOME / CUDA_PATH; else nvcc's grandparent folder, else
    /usr/local/cuda (for an nvcc on PATH that is a wrapper script, not the toolkit's own binary)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            return environ[var] if _has_toolkit(environ[var]) else None
    nvcc = shutil.which("nvcc", path=environ.get("PATH"))
    if nvcc is None:
        return None
    for home in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"):
        if _has_toolkit(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


def why_not_buildable(environ=os.environ):
    """None when the CUDA extension can be built in this environment, else the reason (no compilation)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - pip's isolated build environment has no torch
        return f"torch is not importable in the build environment ({type(exc).__name__}: {exc})"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    if find_cuda_home(environ) is None:
        return "no CUDA toolkit: nvcc is not on PATH and CUDA_HOME is unset"
    return None


def _wheel_header_flags(home: str) -> list:
    """ATen's CUDA headers include cuBLAS / cuSPARSE / cuSOLVER headers. A toolkit installed without those
    libraries (compiler and runtime only) takes them from the nvidia-* wheels torch depends on, as -isystem
    folders: searched after the toolkit's own include folder, so its runtime headers still win."""
    if os.path.isfile(os.path.join(home, "include", "cublas_v2.h")):
        return []
    dirs = set()
    for p in sys.path:
        for d in glob.glob(os.path.join(p, "nvidia", "*", "include")):
            if glob.glob(os.path.join(d, "cublas*.h")) or glob.glob(os.path.join(d, "cusparse*.h")) or \
                    glob.glob(os.path.join(d, "cusolver*.h")):
                dirs.add(d)
    return [flag for d in sorted(dirs) for flag in ("-isystem", d)]


def cuda_extension_setup(root: str) -> dict:
    """setup() keyword arguments: ext_modules + cmdclass for greenprune._C, or {} (pure-Python install)."""
    mode = build_mode()
    if mode == "0":
        return {}
    reason = why_not_buildable()
    if reason is not None:
        if mode == "1":
            raise CudaBuildError(f"{ENV_SWITCH}=1 but the CUDA extension cannot be built: {reason}")
        print(f"greenprune: not building the CUDA extension ({reason}); set {ENV_SWITCH}=1 to require it",
              file=sys.stderr)
        return {}
    home = find_cuda_home()
    os.environ.setdefault("CUDA_HOME", home)  # read by torch.utils.cpp_extension at import
    os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ.get(ENV_ARCH, "").strip() or DEFAULT_ARCH
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    class Build(BuildExtension):
        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:  # noqa: BLE001
                if mode == "1":
                    raise
                print(f"greenprune: the CUDA extension failed to compile ({type(exc).__name__}: {exc}); "
                      f"installing without it (set {ENV_SWITCH}=1 to make this an error)", file=sys.stderr)

    csrc = os.path.relpath(os.path.join(root, "csrc"), root)
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "*.cu")))
    ext = CUDAExtension(
        EXT_NAME,
        sources=sources,
        include_dirs=[os.path.join(root, "csrc")],
        extra_compile_args={"cxx": ["-O3", *_wheel_header_flags(home)],
                            "nvcc": ["-O3", "-lineinfo", *_wheel_header_flags(home)]},
    )
    print(f"greenprune: building the CUDA extension for compute capabilities {os.environ['TORCH_CUDA_ARCH_LIST']} "
          f"(CUDA_HOME={os.environ['CUDA_HOME']})", file=sys.stderr)
    return {"ext_modules": [ext], "cmdclass": {"build_ext": Build.with_options(use_ninja=True)}}
