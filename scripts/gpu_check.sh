#!/usr/bin/env bash
# One command on a GPU machine: build the CUDA extension from this checkout, run the kernel tests (GPU tests
# included) and the benchmarks, and write everything as JSON/logs into $OUT (default out/gpu-check).
#
#   scripts/gpu_check.sh [STEP ...]     STEP: build | test | bench-kernels | bench-e2e | all | lease (default: all)
#
# Steps run in the order given, each logging to $OUT; `all` is build test bench-kernels bench-e2e with the full
# benchmark profile. `lease` is the same four steps sized for a short lease of a GPU (one call of the device
# tool): the benches' `lease` profile (GREENPRUNE_BENCH_PROFILE, benches/conftest.py: the headline shape of every
# op, both end-to-end ratios) and a time budget, GPU_CHECK_BUDGET_S (default 540 s), shared by the steps in
# proportion to STEP_SHARES; time a step leaves unused passes to the later ones. A step that reaches its share
# is interrupted (SIGINT: pytest-benchmark still writes the JSON of what finished) and the next one starts.
# A failed build does not stop the Triton steps (the extension is optional; its benches skip, saying why). The
# build is skipped when greenprune/_C*.so is newer than every file in csrc/ (consecutive calls on one machine).
# Results: bench_kernels.json (channel stats, KL, SwiGLU, vocabulary: Triton vs CUDA extension vs eager vs
# torch.compile, with the copy / GEMM ceilings measured in the same run) and bench_e2e.json (dense vs pruned
# end to end); the last lines printed are their tables (python -m greenprune.deploy.gpu_results). Copy them to benches/results/
# with `python -m greenprune.deploy.gpu_results DIR --save benches/results` (which also records the measured dispatch order
# in kernels/dispatch_table.json). At most 8 files land in $OUT
# (environment.json, gpu_check.log, build.log and a log per test/bench step), what the device tool brings back.
#
# Needs a CUDA build of torch with pytest (+ pytest-benchmark for the benches), ninja and nvcc (PATH,
# CUDA_HOME, or /usr/local/cuda); installs nothing from the network. The extension is compiled only for the
# local GPU's compute capability (GREENPRUNE_CUDA_ARCH overrides) and installed in place with
# `pip install --no-build-isolation --no-deps -e .`; if pip cannot do that offline, it is built in place with
# `setup.py build_ext --inplace` and the checkout is put on sys.path through a package overlay instead.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"  # the GPU machines have python3 (with torch), not always python
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

info() { echo "gpu_check: $*" | tee -a "$OUT/gpu_check.log" >&2; }

# Relative time of each step in a budgeted run, in seconds of the default budget (estimated on the CPU machine
# from compile and shape counts; replace them with the measured step times that gpu_check.log records).
declare -A STEP_SHARES=([build]=90 [test]=120 [bench-kernels]=170 [bench-e2e]=160)
BUDGET_S="${GPU_CHECK_BUDGET_S:-}"
STEP_TIMEOUT=""  # set per step by step_budget; empty: no limit

share() {  # STEP...: the summed shares of these steps, scaled so that all the steps of this run fill BUDGET_S
  local sum=0 s
  for s in "$@"; do sum=$((sum + ${STEP_SHARES[$s]:-0})); done
  echo $((sum * BUDGET_S / SHARE_TOTAL))
}

step_budget() {  # STEP LATER_STEP...: this step's limit = what is left minus the shares of the steps after it
  STEP_TIMEOUT=""
  [ -z "$BUDGET_S" ] && return 0
  STEP_TIMEOUT=$((DEADLINE - SECONDS - $(share "${@:2}")))
  [ "$STEP_TIMEOUT" -ge 10 ]
}

limited() {  # run "$@" under the step's limit: SIGINT first (pytest reports and writes its JSON), KILL 20 s later
  if [ -n "$STEP_TIMEOUT" ]; then timeout -s INT -k 20 "$STEP_TIMEOUT" "$@"; else "$@"; fi
}

if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

"$PY" - > "$OUT/environment.json" <<'PYEOF'
import importlib, json, shutil, subprocess, sys
import torch
env = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
       "cuda_available": torch.cuda.is_available(), "nvcc": shutil.which("nvcc")}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count)
if env["nvcc"]:
    env["nvcc_version"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
for mod in ("ninja", "pybind11", "triton", "transformers", "pytest", "pytest_benchmark", "setuptools"):
    try:
        m = importlib.import_module(mod)
        env[mod] = getattr(m, "__version__", "present")
    except Exception as exc:  # noqa: BLE001
        env[mod] = f"absent ({type(exc).__name__})"
print(json.dumps(env, indent=1))
PYEOF
info "environment: $(tr -d '\n' < "$OUT/environment.json")"

overlay_pythonpath() {  # greenprune + greenprune.kernels importable from the checkout without pip
  local site="${TMPDIR:-/tmp}/greenprune-site"  # symlinks: kept out of $OUT, whose files travel back
  rm -rf "$site" && mkdir -p "$site/greenprune"
  for f in greenprune/*; do ln -s "$PWD/$f" "$site/greenprune/"; done
  ln -s "$PWD/kernels" "$site/greenprune/kernels"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  PYFLAGS="-P"  # keep the checkout's own greenprune/ (no kernels/ inside) off the front of sys.path
}
PYFLAGS=""

build() {
  if [ -z "${GREENPRUNE_CUDA_ARCH:-}" ]; then
    GREENPRUNE_CUDA_ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null)" \
      || { info "no GPU visible: set GREENPRUNE_CUDA_ARCH (e.g. 9.0) to build anyway"; return 1; }
    export GREENPRUNE_CUDA_ARCH
  fi
  info "building greenprune._C for compute capability $GREENPRUNE_CUDA_ARCH with $MAX_JOBS jobs"
  local t0=$SECONDS
  GREENPRUNE_BUILD_CUDA=1 limited "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
  local rc=$?
  if [ "$rc" -eq 0 ]; then
    info "built and installed in place (pip -e) in $((SECONDS - t0)) s"
  elif [ "$rc" -eq 124 ]; then
    info "BUILD FAILED: pip -e reached the step's limit (see build.log)"; return 124
  else
    info "pip -e failed (see build.log); building in place with setup.py build_ext --inplace"
    GREENPRUNE_BUILD_CUDA=1 limited "$PY" setup.py build_ext --inplace >> "$OUT/build.log" 2>&1 || { info "BUILD FAILED"; return 1; }
    info "built in place in $((SECONDS - t0)) s"
  fi
  "$PY" -P -c 'import greenprune.kernels' 2>/dev/null || overlay_pythonpath
  local ext
  ext=$("$PY" $PYFLAGS -c 'import json, greenprune._C as C, torch; print(json.dumps({"extension": C.__file__, "cuda_runtime_version": C.cuda_runtime_version, "torch_headers": C.torch_version, "torch": torch.__version__}))') \
    || { info "the extension does not import"; return 1; }
  info "extension: $ext"
}

tests() {
  "$PY" -P -c 'import greenprune.kernels' 2>/dev/null || overlay_pythonpath
  # fresh random inputs on every run (each test seeds from its node id otherwise); logged to repeat a failure
  local seed="${GREENPRUNE_TEST_SEED:-$(date +%s)}"
  info "tests/kernels (GPU session: compiled Triton kernels and the CUDA extension), GREENPRUNE_TEST_SEED=$seed"
  GREENPRUNE_TEST_SEED=$seed PYTHONUNBUFFERED=1 limited "$PY" $PYFLAGS -m pytest -q -rs tests/kernels -p no:cacheprovider > "$OUT/tests_kernels.log" 2>&1
  local rc=$?
  info "tests/kernels exit status $rc: $(tail -1 "$OUT/tests_kernels.log")"
  return $rc
}

bench_suite() {  # NAME FILE...: one pytest-benchmark run into $OUT/NAME.json
  local name=$1; shift
  "$PY" -P -c 'import greenprune.kernels' 2>/dev/null || overlay_pythonpath
  info "$name: $*"
  local t0=$SECONDS
  PYTHONUNBUFFERED=1 limited "$PY" $PYFLAGS -m pytest -q -rs "$@" -p no:cacheprovider --benchmark-json="$OUT/$name.json" \
    > "$OUT/$name.log" 2>&1
  local rc=$?
  info "$name exit status $rc in $((SECONDS - t0)) s: $(tail -1 "$OUT/$name.log")"
  return $rc
}

built_and_current() {
  local so
  so=$(ls greenprune/_C*.so 2>/dev/null | head -1)
  [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -1)" ]
}

run_step() {
  case "$1" in
    build) if built_and_current; then info "extension up to date: build skipped"; else build; fi ;;
    test) tests ;;
    bench-kernels) bench_suite bench_kernels benches/bench_channel_stats.py benches/bench_kl.py benches/bench_swiglu.py benches/bench_vocab.py ;;
    bench-e2e) bench_suite bench_e2e benches/bench_e2e.py ;;
    *) echo "usage: $0 [build|test|bench-kernels|bench-e2e|all ...]" >&2; exit 2 ;;
  esac
}

STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(all)
case "${STEPS[*]}" in
  all) STEPS=(build test bench-kernels bench-e2e) ;;
  lease) STEPS=(build test bench-kernels bench-e2e)
         BUDGET_S="${BUDGET_S:-540}"
         export GREENPRUNE_BENCH_PROFILE="${GREENPRUNE_BENCH_PROFILE:-lease}" ;;
esac
DEADLINE=${BUDGET_S:-0}  # SECONDS counts from the start of this script: the budget covers all of it
SHARE_TOTAL=0
for step in "${STEPS[@]}"; do SHARE_TOTAL=$((SHARE_TOTAL + ${STEP_SHARES[$step]:-0})); done
[ "$SHARE_TOTAL" -gt 0 ] || SHARE_TOTAL=1
info "steps: ${STEPS[*]}; budget ${BUDGET_S:-none} s; bench profile ${GREENPRUNE_BENCH_PROFILE:-full}"
rc=0
for i in "${!STEPS[@]}"; do
  step=${STEPS[$i]}
  if ! step_budget "$step" "${STEPS[@]:$((i + 1))}"; then
    info "$step: skipped, the budget is spent"; rc=1; continue
  fi
  [ -n "$STEP_TIMEOUT" ] && info "$step: at most $STEP_TIMEOUT s"
  t0=$SECONDS
  run_step "$step"; src=$?
  [ "$src" -ne 0 ] && rc=1
  info "$step: exit status $src after $((SECONDS - t0)) s$([ "$src" -eq 124 ] && echo ', interrupted at its limit')"
  [ "$step" = build ] && [ "$src" -ne 0 ] && info "build failed: the CUDA extension's tests and benches skip; Triton steps go on"
done
"$PY" -P -c 'import greenprune.kernels' 2>/dev/null || overlay_pythonpath
"$PY" $PYFLAGS -m greenprune.deploy.gpu_results "$OUT" 2>&1 | tee -a "$OUT/gpu_check.log" || true
exit $rc
