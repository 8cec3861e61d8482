#!/usr/bin/env bash
# One call on the GPU machine: install over the image's packages, GPU tests, compute-sanitizer on the fused
# kernels, benchmarks. Full logs go to $OUT (or ./device_out); a short table is printed last.
#   STAGES="tests sanitizer bench" (default: those three; also "sweep", and "ddp" on a 2-GPU machine)
#   PYTEST_ARGS="-x"   PYTEST_K="not slow"   PYTEST_TIMEOUT=420   BENCH_SUITES="reference step varlen"
#   BENCH_ARGS="..."   BENCH_TIMEOUT_S=300 (each suite)   SWEEP_BUDGET_S=150   SWEEP_ARGS="--direction both"   SANITIZER_TOOLS="memcheck racecheck synccheck"   SANITIZER_BUDGET_S=180
#   SANITIZER_ARGS="--only backward"   DDP_ARGS="..."
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
STAGES=${STAGES:-"tests sanitizer bench"}
export PYTHONUNBUFFERED=1 FLASHRNN_CORE_CACHE=${FLASHRNN_CORE_CACHE:-/tmp/flashrnn_core_cache}
summary=()
note() { summary+=("$(printf '%-28s %s' "$1" "$2")"); }

pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || export PYTHONPATH=$PWD
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; python -m flashrnn_core --steps 32; } \
    >"$OUT/env.log" 2>&1; note "main job" "exit $? ($(grep -c OK "$OUT/env.log") OK)"

if [[ " $STAGES " == *" tests "* ]]; then
    # Every variant compiled up front on all cores (the tests then load them from the cache).
    arch=$(python -c "import cupy; print('sm_' + cupy.cuda.Device().compute_capability)")
    timeout 240 python -m flashrnn_core.compile --arch "$arch" --check --jobs "$(nproc)" >"$OUT/compile.log" 2>&1
    note "compile --check $arch" "exit $? : $(tail -n 1 "$OUT/compile.log")"
    timeout ${PYTEST_TIMEOUT:-420} python -m pytest -m gpu -q -p no:cacheprovider ${PYTEST_ARGS:-} -k "${PYTEST_K:-}" tests >"$OUT/pytest_gpu.log" 2>&1
    note "pytest -m gpu" "exit $? : $(tail -n 1 "$OUT/pytest_gpu.log")"
fi

if [[ " $STAGES " == *" sanitizer "* ]]; then
    # Each tool on one small problem per fused kernel variant (bench/sanitize_fused.py picks them).
    for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck}; do
        # --report-api-errors no: cuda-python probes driver entry points on the host (cuGetProcAddress), which
        # memcheck would count as errors; kernel errors are still reported.
        FLASHRNN_CORE_LINEINFO=1 timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 --report-api-errors no \
            python bench/sanitize_fused.py --budget-s "${SANITIZER_BUDGET_S:-180}" ${SANITIZER_ARGS:-} >"$OUT/sanitizer_$tool.log" 2>&1
        note "sanitizer $tool" "exit $? : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.log" | tail -n 1)"
    done
fi

if [[ " $STAGES " == *" bench "* ]]; then
    # BENCH_SUITES="reference step varlen" (default); each suite's JSON lands in $OUT/<suite>.json.
    for suite in ${BENCH_SUITES:-reference step varlen}; do
        timeout ${BENCH_TIMEOUT_S:-300} python -m bench.run --suite "$suite" --out "$OUT/$suite.json" ${BENCH_ARGS:-} >"$OUT/bench_$suite.log" 2>&1
        note "bench $suite" "exit $? ($(grep -c '"median_ms": [0-9]' "$OUT/$suite.json" 2>/dev/null || echo 0) timed rows)"
    done
fi

if [[ " $STAGES " == *" sweep "* ]]; then
    # ConstrINT against reality (issue 7): every feasible configuration of the reference shapes, measured.
    timeout $(( ${SWEEP_BUDGET_S:-150} + 40 )) python bench/sweep_fused.py --out "$OUT/sweep.json" \
        --budget-s "${SWEEP_BUDGET_S:-150}" ${SWEEP_ARGS:-} >"$OUT/sweep.log" 2>&1
    note "sweep" "exit $? : $(tail -n 1 "$OUT/sweep.log")"
fi

if [[ " $STAGES " == *" ddp "* ]]; then
    # Two GPUs (nvidia-h200-x2): one DDP step's averaged gradients against one process on the global batch, step
    # times at the reference size, then the default parity training.
    timeout 200 python -m torch.distributed.run --nproc_per_node=2 examples/ddp_parity.py --check --steps 0 \
        --heads 12 --head-dim 64 --batch 32 --length 1024 ${DDP_ARGS:-} >"$OUT/ddp_check.log" 2>&1
    note "ddp check 12x64 T=1024" "exit $? : $(grep -E '^gradients' "$OUT/ddp_check.log" | cut -c1-90)"
    note "ddp step times" "$(grep -E '^time per' "$OUT/ddp_check.log" | sed 's/.*: //')"
    timeout 200 python -m torch.distributed.run --nproc_per_node=2 examples/ddp_parity.py --check \
        >"$OUT/ddp_train.log" 2>&1
    note "ddp parity training" "exit $? : $(tail -n 1 "$OUT/ddp_train.log")"
    tail -n 30 "$OUT/ddp_check.log" "$OUT/ddp_train.log"
fi

# The device tool brings back at most 8 files: the logs travel as one archive beside the JSON results.
(cd "$OUT" && tar czf logs.tar.gz --remove-files -- *.log)
echo; echo "== device_check summary =="; printf '%s\n' "${summary[@]}"
