#!/usr/bin/env bash
# The GPU calls that decided the prepared dR overlap (2026-12-05-dr-overlap.{patch,txt}); measured at stop 60 (call
# c): no gain, it stays a patch (2026-12-06-h100-dr-overlap.txt). The two patches written beside it (the alternating
# backend's shared step setup, one CUDA-event timer) landed at stop 60 (1f349ac). To run again: `git apply` the
# overlap patch on main, copy the variant list to the new digest (the list does not change: .kcache/variants/
# <old>.json -> devfiles/var/<basename of `python -c "from flashrnn_core.backends.fused import variants_path;
# print(variants_path())"`>; without it the precompile's `--jobs 16` solves it in ~30 s of its 150), then run with
# carry ["devfiles"]:
#   bash bench/results/phases/2026-12-05-dr-overlap-device.sh a   # A/B, GPU tests, reference LSTM rows (~500 s)
#   bash bench/results/phases/2026-12-05-dr-overlap-device.sh b   # memcheck + synccheck of every backward family
#                                                                 # with FLASHRNN_DR_OVERLAP=2, 3 shards each
#   bash bench/results/phases/2026-12-05-dr-overlap-device.sh c   # one call: the A/B, the overlap's GPU tests and
#                                                                 # ~160 s of b's sanitizers (stop 60)
set -u
export PYTHONUNBUFFERED=1 FLASHRNN_CORE_CACHE=/tmp/flashrnn_core_cache
mkdir -p $FLASHRNN_CORE_CACHE/variants && cp devfiles/var/*.json $FLASHRNN_CORE_CACHE/variants/
pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader

call_a() {
  local s=$SECONDS
  timeout 150 python -m flashrnn_core.compile --arch sm_90 --jobs 16 >$OUT/precompile.log 2>&1
  echo "precompile rc $? $((SECONDS-s)) s: $(tail -n1 $OUT/precompile.log)"
  s=$SECONDS  # the overlap's A/B first: it decides (0 twice: the drift between first and last)
  timeout 120 python bench/dr_paths.py --overlaps 0,rule,64,256,0 --runs 40 lstm:1:768 lstm:3:256 lstm:12:64 \
    gru:1:768 slstm:1:768 >$OUT/dr_paths.log 2>&1
  echo "dr_paths rc $? $((SECONDS-s)) s"; cut -c1-200 $OUT/dr_paths.log
  s=$SECONDS
  timeout 260 python -m pytest -m gpu -q -p no:cacheprovider tests/test_alternating.py tests/test_fused_bw.py \
    -k "overlapped or backward_matches_vanilla or deterministic or scatter or test_alternating" >$OUT/pytest.log 2>&1
  echo "pytest rc $? $((SECONDS-s)) s: $(tail -n1 $OUT/pytest.log)"; grep -E "^(FAILED|ERROR)" $OUT/pytest.log | head -20
  s=$SECONDS
  timeout 100 python -m bench.run --suite reference --functions lstm --budget-s 80 --out $OUT/ref_lstm.json \
    >$OUT/ref.log 2>&1
  echo "ref rc $? $((SECONDS-s)) s"; tail -n 25 $OUT/ref.log | cut -c1-160
}

sanitize() {  # tool log budget extra-args...
  local tool=$1 log=$2 budget=$3; shift 3
  local s=$SECONDS
  FLASHRNN_DR_OVERLAP=2 FLASHRNN_CORE_LINEINFO=1 timeout $((budget + 80)) compute-sanitizer --tool $tool \
    --error-exitcode 9 --report-api-errors no python bench/sanitize_fused.py --only backward --budget-s $budget "$@" \
    >$OUT/$log.log 2>&1
  echo "$log rc $? $((SECONDS-s)) s: $(grep -E '^[0-9]+ ok, ' $OUT/$log.log)" \
    "$(grep -E '^[0-9]+ problems|ERROR SUMMARY|NOT RUN|failed:|: [A-Z][a-z]+Error' $OUT/$log.log | tr '\n' ' ' | cut -c1-300)"
}

call_b() {  # FLASHRNN_DR_OVERLAP=2: chunks of 2 steps at the problems' T=5, so the counts and the side stream run
  local s=$SECONDS
  FLASHRNN_CORE_LINEINFO=1 timeout 150 python -m flashrnn_core.compile --arch sm_90 --jobs 16 >$OUT/precompile.log 2>&1
  echo "precompile rc $? $((SECONDS-s)) s: $(tail -n1 $OUT/precompile.log)"
  for k in 0 1 2; do  # RESUME_M / RESUME_S="--resume <logs>": the rest of a run that its time limit cut
    sanitize memcheck memcheck$k ${BUDGET:-330} --shard $k/3 ${RESUME_M:-} &
    sanitize synccheck synccheck$k ${BUDGET:-330} --one-cluster --shard $k/3 ${RESUME_S:-} &
  done
  wait
}

call_c() {  # a and b's essentials in one call, for a session lent one call: lineinfo builds serve the timings
  local s=$SECONDS   # (-lineinfo adds line tables, not code) and the sanitizers alike
  export FLASHRNN_CORE_LINEINFO=1
  timeout 140 python -m flashrnn_core.compile --arch sm_90 --jobs 16 >$OUT/precompile.log 2>&1
  echo "precompile rc $? $((SECONDS-s)) s: $(tail -n1 $OUT/precompile.log)"
  s=$SECONDS
  timeout 110 python bench/dr_paths.py --overlaps 0,rule,64,256,0 --runs 30 lstm:1:768 lstm:3:256 lstm:12:64 \
    slstm:1:768 >$OUT/dr_paths.log 2>&1
  echo "dr_paths rc $? $((SECONDS-s)) s"; cut -c1-200 $OUT/dr_paths.log
  s=$SECONDS
  timeout 60 python -m pytest -m gpu -q -p no:cacheprovider tests/test_fused_bw.py -k "overlapped" >$OUT/pytest.log 2>&1
  echo "pytest rc $? $((SECONDS-s)) s: $(tail -n1 $OUT/pytest.log)"; grep -E "^(FAILED|ERROR)" $OUT/pytest.log | head
  for k in 0 1 2; do
    sanitize memcheck memcheck$k ${BUDGET:-160} --shard $k/3 &
    sanitize synccheck synccheck$k ${BUDGET:-160} --one-cluster --shard $k/3 &
  done
  wait
}

case ${1:-a} in a) call_a ;; b) call_b ;; c) call_c ;; *) echo "usage: $0 a|b|c"; exit 2 ;; esac
