#!/usr/bin/env bash
# One call on the GPU machine: install over the image's packages, GPU tests, compute-sanitizer on the fused
# kernels, benchmarks. Full logs go to $OUT (or ./device_out); a short table is printed last.
#
# The stages become jobs in one queue; every GPU runs one job at a time (a "lane"), so a 2-GPU machine does two
# at once. Every job ends by DEADLINE_S seconds after the start (the device tool stops a call at 600 s); a job
# whose time is up is not started, and the table says so.
#   STAGES="tests sanitizer bench"   (default; also "sweep", and "ddp", which takes two GPUs after the queue)
#   PYTEST_ARGS="-x"   PYTEST_K="not slow"   PYTEST_TIMEOUT=420   COMPILE_CHECK=0 (no compile --check first: CI runs it)
#   SANITIZER_TOOLS="memcheck racecheck synccheck"   SANITIZER_BUDGET_S=180
#   (the sanitizer stage also runs each tool over the dR kernel's GPU tests, tests/test_recurrent_grad.py -k kernel)
#   SANITIZER_ARGS="--only backward --all;--only forward" (';' separates sets of problems: a job per set and tool;
#     a set that starts "@racecheck,synccheck" runs those tools only)
#   SANITIZER_SHARDS=1 (each set's problems split over this many jobs a tool)
#   SANITIZER_ENV="FLASHRNN_DR_OVERLAP=2" (the sanitizer jobs' own environment: here dR summed beside every backward
#     kernel, counted every 2 steps, so that the progress counts run in every backward variant; the tests keep theirs)
#   BENCH_SUITES="reference step varlen"   BENCH_ARGS="..."   BENCH_TIMEOUT_S=300 (a suite; a shard)
#   BENCH_TIMEOUT_S_<suite>, BENCH_ARGS_<suite>, BENCH_SHARDS_<suite>: one suite's own (BENCH_TIMEOUT_S_seqlen=220)
#   BENCH_SHARDS=1 (timing suites split over this many jobs, merged into one JSON by python -m bench.shard)
#   BENCH_BASE=ab_base (A/B in one call: a tree of another commit, `git archive <commit> | tar -x -C ab_base`, left
#     untracked so that it travels; each bench job first runs its suite from there, into <suite>-base.json)
#   SWEEP_BUDGET_S=150   SWEEP_ARGS="--direction both"   DDP_ARGS="..."   DEADLINE_S=550   LANES=<GPUs> (more: GPUs shared)
#   LANE_GPUS="1" (the GPUs the lanes use, default all: two calls side by side, timings alone on one GPU, with
#     their own OUT)
#   PRECOMPILE=0 (no compile of every variant first: a sanitizer run on a few problems)
#   PHASE_ARGS="--cell lstm --variant base= --variant no_exchange=FLASHRNN_ABLATE_EXCHANGE;..." (stage "phases": a step's
#     phases by clock64 and measurement knobs, bench/phase_clocks.py; ';' separates problems, printed at the end)
#   PRECOMPILE_MATCH="slstm" (precompile only the variants whose label has these words: compile --match)
#   PRECOMPILE_LINEINFO="--labels devfiles/new.txt" (the sanitizer's -lineinfo precompile's own selection, compile's
#     --match/--labels arguments; default: PRECOMPILE_MATCH's)
#   TUNE_ARGS="--cell lstm --N 48 --D 16 --direction forward --distinct --top-k 4;..." (stage "tune": the solver's
#     candidates measured, python -m flashrnn_core.tune --no-store; ';' separates runs, tables printed at the end)
#   STAGES="exchange": bench/cluster_exchange.py (h's exchange in one cluster against a hand-off between clusters,
#     cycles a step) and its --sync-repro under compute-sanitizer synccheck, then bench/head_split.py (a 1x768 head
#     on two clusters: short runs under memcheck, synccheck, racecheck, then timings); the logs printed at the end
#   STAGES="matvec": bench/matvec_bound.py (the 1x768 step's product alone on one SM, each register split; cycles a
#     step, printed at the end)
#   STAGES="overlap": bench/dr_overlap_timeline.py (dR beside the backward kernel: where its time goes, then overlap
#     off / on alternated; OVERLAP_ARGS="lstm:1:768 --overlaps 0,rule,16", the A/B lines printed at the end)
#   FLASHRNN_COMMIT=<sha> (the results JSONs' "commit": the device's copy of .git may be an older commit's, so pass
#     the tree's own from the machine that sends it, e.g. FLASHRNN_COMMIT=$(git rev-parse --short HEAD) there)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT/notes"
STAGES=${STAGES:-"tests sanitizer bench"}
DEADLINE_S=${DEADLINE_S:-550}
export PYTHONUNBUFFERED=1 FLASHRNN_CORE_CACHE=${FLASHRNN_CORE_CACHE:-/tmp/flashrnn_core_cache}
QUEUE=$OUT/queue

note() { printf '%-34s %s\n' "$2" "$3" >"$OUT/notes/$1"; }   # note <job number> <what> <result>
time_left() { echo $(( DEADLINE_S - SECONDS )); }
clamp() { local t=$(( $(time_left) - 5 )); (( $1 < t )) && t=$1; echo "$t"; }   # a timeout within the deadline

pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || export PYTHONPATH=$PWD
{ nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.mem --format=csv; python -m flashrnn_core --steps 32; } \
    >"$OUT/env.log" 2>&1; note 000 "main job" "exit $? ($(grep -c OK "$OUT/env.log") OK)"
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU'); (( GPUS > 0 )) || GPUS=1
LANE_GPUS=(${LANE_GPUS:-$(seq 0 $(( GPUS - 1 )))}); GPUS=${#LANE_GPUS[@]}   # the GPUs this call's lanes use
LANES=${LANES:-$GPUS}
ARCH=$(python -c "import cupy; print('sm_' + cupy.cuda.Device().compute_capability)")

# Every variant compiled up front on all cores, before the lanes start (the tests then load them from the cache;
# the sanitizer's -lineinfo builds are other cache entries, compiled at the same time). Benchmarks alone compile
# what they run.
if [[ ${PRECOMPILE:-1} == 1 && ( " $STAGES " == *" tests "* || " $STAGES " == *" sanitizer "* ) ]]; then
    # The tests want the plain builds and the sanitizer the -lineinfo ones: with both, each gets half the cores.
    both=$([[ " $STAGES " == *" tests "* && " $STAGES " == *" sanitizer "* ]] && echo 2 || echo 1)
    jobs=$(( $(nproc) / both > 1 ? $(nproc) / both : 1 ))
    if [[ " $STAGES " == *" tests "* ]]; then
        timeout 240 python -m flashrnn_core.compile --arch "$ARCH" --jobs "$jobs" ${PRECOMPILE_MATCH:+--match "$PRECOMPILE_MATCH"} \
            >"$OUT/precompile.log" 2>&1 &
    fi
    if [[ " $STAGES " == *" sanitizer "* ]]; then
        FLASHRNN_CORE_LINEINFO=1 timeout 240 python -m flashrnn_core.compile --arch "$ARCH" --jobs "$jobs" \
            ${PRECOMPILE_LINEINFO:-${PRECOMPILE_MATCH:+--match "$PRECOMPILE_MATCH"}} >"$OUT/precompile_lineinfo.log" 2>&1
    fi
    wait
    note 001 "precompile $ARCH (${SECONDS}s)" "$(tail -qn 1 "$OUT"/precompile*.log | tr '\n' ' ')"
fi

job_tests() {
    # --check reads the precompiled kernels' ptxas reports from the cache.
    if [[ ${COMPILE_CHECK:-1} == 1 ]]; then
        timeout "$(clamp 240)" python -m flashrnn_core.compile --arch "$ARCH" --check --jobs "$(nproc)" \
            ${PRECOMPILE_MATCH:+--match "$PRECOMPILE_MATCH"} >"$OUT/compile.log" 2>&1
        note "$1a" "compile --check $ARCH" "exit $? : $(tail -n 1 "$OUT/compile.log")"
    fi
    timeout "$(clamp "${PYTEST_TIMEOUT:-420}")" python -m pytest -m gpu -q -p no:cacheprovider ${PYTEST_ARGS:-} \
        -k "${PYTEST_K:-}" tests >"$OUT/pytest_gpu.log" 2>&1
    note "$1b" "pytest -m gpu" "exit $? : $(tail -n 1 "$OUT/pytest_gpu.log")"
}

job_sanitizer() {   # <n> <tool> <shard K/M> <set>: one small problem per fused kernel variant (bench/sanitize_fused.py)
    local log="$OUT/sanitizer_$2_set$4_${3/\//of}.log" t args; t=$(clamp 10000)
    IFS=';' read -ra args <<<"${SANITIZER_ARGS:-}"; args=(${args[$4]:-}); [[ ${args[0]:-} == @* ]] && args=("${args[@]:1}")
    # --report-api-errors no: cuda-python probes driver entry points on the host (cuGetProcAddress), which
    # memcheck would count as errors; kernel errors are still reported.
    env ${SANITIZER_ENV:-} FLASHRNN_CORE_LINEINFO=1 timeout "$t" \
        compute-sanitizer --tool "$2" --error-exitcode 9 --report-api-errors no \
        python bench/sanitize_fused.py --budget-s "$(( t - 40 < ${SANITIZER_BUDGET_S:-180} ? t - 40 : ${SANITIZER_BUDGET_S:-180} ))" \
        --shard "$3" "${args[@]}" >"$log" 2>&1
    note "$1" "sanitizer $2 ${args[*]} $3" "exit $? : $(grep -E '^[0-9]+ ok|ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -n 2 | tr '\n' ' ')"
}

job_sanitizer_dr() {   # <n> <tool>: the dR kernel after the backward (dr_gemm.cu), through its own GPU tests
    local log="$OUT/sanitizer_$2_dr_gemm.log"
    timeout "$(clamp 240)" compute-sanitizer --tool "$2" --error-exitcode 9 --report-api-errors no \
        python -m pytest -q -p no:cacheprovider tests/test_recurrent_grad.py -k kernel >"$log" 2>&1
    note "$1" "sanitizer $2 dr_gemm" "exit $? : $(grep -E 'passed|failed|ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tr '\n' ' ')"
}

job_bench() {   # <n> <suite> <shard K/M>: one suite, or one shard of it (merged after the queue)
    local json="$OUT/$2.json" t own="BENCH_TIMEOUT_S_$2" args="BENCH_ARGS_$2"; t=$(clamp "${!own:-${BENCH_TIMEOUT_S:-300}}")
    local shard=(); [[ $3 == */1 ]] || shard=(--shard "$3")
    # The suite's own budget leaves the last (shape, pass) time to finish inside the timeout (a quarter of it).
    if [[ -n ${BENCH_BASE:-} ]]; then   # the base tree's package and kernels (PYTHONPATH wins over the editable install)
        t=$(( $(clamp "$t") / 2 ))
        (cd "$BENCH_BASE" && export PYTHONPATH=$PWD FLASHRNN_CORE_CACHE=$FLASHRNN_CORE_CACHE-base &&
            python -c 'import flashrnn_core; print("package:", flashrnn_core.__file__)' && timeout "$t" python -m bench.run \
            --suite "$2" --out "${json%.json}-base.json" "${shard[@]}" --budget-s $(( t - (t / 4 > 30 ? t / 4 : 30) )) \
            ${BENCH_ARGS:-} ${!args:-}) >"$OUT/bench_$2_${3/\//of}-base.log" 2>&1
        note "$1-base" "bench $2 $3 from $BENCH_BASE" "exit $?"
    fi
    timeout "$t" python -m bench.run --suite "$2" --out "$json" "${shard[@]}" --budget-s $(( t - (t / 4 > 30 ? t / 4 : 30) )) \
        ${BENCH_ARGS:-} ${!args:-} >"$OUT/bench_$2_${3/\//of}.log" 2>&1
    note "$1" "bench $2 $3" "exit $?"
}

job_sweep() {   # ConstrINT against reality (issue 7): every feasible configuration of the reference shapes, measured.
    local budget=${SWEEP_BUDGET_S:-150}; (( budget > $(time_left) - 60 )) && budget=$(( $(time_left) - 60 ))
    timeout $(( budget + 40 )) python bench/sweep_fused.py --out "$OUT/sweep.json" --budget-s "$budget" \
        ${SWEEP_ARGS:-} >"$OUT/sweep.log" 2>&1
    note "$1" "sweep" "exit $? : $(tail -n 1 "$OUT/sweep.log")"
}

job_tune() {   # <n> <set>: python -m flashrnn_core.tune on some shapes (TUNE_ARGS: ';' separates runs)
    local args log="$OUT/tune_$2.log"; IFS=';' read -ra args <<<"${TUNE_ARGS:-}"
    timeout "$(clamp 300)" python -m flashrnn_core.tune --no-store --jobs "$(nproc)" ${args[$2]} >"$log" 2>&1
    note "$1" "tune ${args[$2]:0:60}" "exit $?"
}

job_phases() {   # <n> <set>: bench/phase_clocks.py on one problem (PHASE_ARGS: ';' separates problems)
    local args log="$OUT/phases_$2.log"; IFS=';' read -ra args <<<"${PHASE_ARGS:-}"
    timeout "$(clamp 240)" python bench/phase_clocks.py ${args[$2]} >"$log" 2>&1
    note "$1" "phases ${args[$2]:0:60}" "exit $?"
}

job_exchange() {   # <n>: the exchange's cycles a step (one cluster, several), then synccheck on its minimal case
    local log="$OUT/exchange_timings.log" sync="$OUT/exchange_synccheck.log"
    timeout "$(clamp 200)" python bench/cluster_exchange.py >"$log" 2>&1
    note "$1" "exchange timings" "exit $?"
    timeout "$(clamp 200)" compute-sanitizer --tool synccheck --error-exitcode 9 --report-api-errors no \
        python bench/cluster_exchange.py --sync-repro >"$sync" 2>&1
    note "$1-sync" "exchange sync repro, synccheck" "exit $? : $(grep -cE 'Barrier error' "$sync") barrier errors"
}

job_split() {   # <n>: a 1x768 head on two clusters (bench/head_split.py): short runs, sanitizers, then timings
    local log="$OUT/exchange_split.log" tool
    timeout "$(clamp 60)" python bench/head_split.py --T 5 --runs 0 --B 8 --rs 8 >"$log" 2>&1
    note "$1" "head split short B=8" "exit $? : $(grep -c 'NaN left 0' "$log") clean"
    for tool in memcheck synccheck racecheck; do
        timeout "$(clamp 90)" compute-sanitizer --tool "$tool" --error-exitcode 9 --report-api-errors no \
            python bench/head_split.py --T 5 --runs 0 --B 8 --rs 8 >"$OUT/exchange_split_$tool.log" 2>&1
        note "$1-$tool" "head split $tool" "exit $? : $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' \
            "$OUT/exchange_split_$tool.log" | tr '\n' ' ')"
    done
    for args in "--rs 6 7 8" "--rs 8 --inference" "--cell slstm --rs 7 8" "--cell slstm --rs 8 --inference"; do
        timeout "$(clamp 90)" python bench/head_split.py $args >>"$log" 2>&1
        note "$1-t" "head split timings" "exit $?"
    done
}

job_overlap() {   # <n>: dR beside the backward kernel (bench/dr_overlap_timeline.py: timelines, then an A/B)
    timeout "$(clamp 200)" python bench/dr_overlap_timeline.py ${OVERLAP_ARGS:-lstm:1:768 slstm:1:768 lstm:3:256} \
        >"$OUT/overlap.log" 2>&1
    note "$1" "dR overlap timeline" "exit $?"
}

job_matvec() {   # <n>: the 1x768 product alone, every variant of bench/matvec_bound.py (cycles a step)
    timeout "$(clamp 200)" python bench/matvec_bound.py >"$OUT/matvec.log" 2>&1
    note "$1" "matvec bound" "exit $? : $(grep -c -E ' [0-9]+$' "$OUT/matvec.log") variants timed"
}

# The queue: "<job number> <function> <args...>", in the order of the stages (tests, bench, sanitizer, sweep).
n=100; : >"$QUEUE"
enqueue() { echo "$n $*" >>"$QUEUE"; n=$(( n + 1 )); }
[[ " $STAGES " == *" tests "* ]] && enqueue job_tests
if [[ " $STAGES " == *" bench "* ]]; then
    for suite in ${BENCH_SUITES:-reference step varlen}; do
        own="BENCH_SHARDS_$suite"; m=${!own:-${BENCH_SHARDS:-1}}
        [[ $suite == compile ]] && m=1   # cold compiles want the processors to themselves
        for (( k = 0; k < m; k++ )); do enqueue job_bench "$suite" "$k/$m"; done
    done
fi
if [[ " $STAGES " == *" sanitizer "* ]]; then
    IFS=';' read -ra sets <<<"${SANITIZER_ARGS:-}"
    for (( i = 0; i < (${#sets[@]} > 0 ? ${#sets[@]} : 1); i++ )); do
        tools=${SANITIZER_TOOLS:-memcheck racecheck synccheck}
        [[ ${sets[$i]:-} =~ ^\ *@([a-z,]+) ]] && tools=${BASH_REMATCH[1]//,/ }   # a set's own tools: "@racecheck --start 92"
        for tool in $tools; do
            for (( k = 0; k < ${SANITIZER_SHARDS:-1}; k++ )); do
                enqueue job_sanitizer "$tool" "$k/${SANITIZER_SHARDS:-1}" "$i"
            done
        done
    done
    for tool in ${SANITIZER_TOOLS:-memcheck racecheck synccheck}; do enqueue job_sanitizer_dr "$tool"; done
fi
[[ " $STAGES " == *" sweep "* ]] && enqueue job_sweep
if [[ " $STAGES " == *" phases "* ]]; then
    IFS=';' read -ra sets <<<"${PHASE_ARGS:-}"
    for (( i = 0; i < ${#sets[@]}; i++ )); do enqueue job_phases "$i"; done
fi
[[ " $STAGES " == *" exchange "* ]] && enqueue job_exchange && enqueue job_split
[[ " $STAGES " == *" matvec "* ]] && enqueue job_matvec
[[ " $STAGES " == *" overlap "* ]] && enqueue job_overlap
if [[ " $STAGES " == *" tune "* ]]; then
    IFS=';' read -ra sets <<<"${TUNE_ARGS:-}"
    for (( i = 0; i < ${#sets[@]}; i++ )); do enqueue job_tune "$i"; done
fi

next_job() {   # pop the queue's first line (lanes share the queue; flock serialises them)
    local line
    { flock 9; line=$(head -n 1 "$QUEUE"); sed -i 1d "$QUEUE"; } 9>"$QUEUE.lock"
    [[ -n $line ]] && echo "$line"
}

lane() {   # <gpu>: run jobs until the queue is empty; a job that no longer fits before the deadline is noted
    local job
    while job=$(next_job); do
        set -- $job
        if (( $(time_left) < 60 )); then note "$1" "${*:2}" "not started: deadline"; continue; fi
        echo "[$(date +%T) +${SECONDS}s gpu $LANE_GPU] ${*:2}" >>"$OUT/lanes.log"
        "$2" "$1" "${@:3}"
    done
}

# LANES above the GPU count share GPUs round robin (sanitizer runs, host-bound on tiny problems, overlap well).
for (( g = 0; g < LANES; g++ )); do
    ( export CUDA_VISIBLE_DEVICES=${LANE_GPUS[g % GPUS]} LANE_GPU=${LANE_GPUS[g % GPUS]}; lane ) &
done
wait
echo "[$(date +%T) +${SECONDS}s] queue done" >>"$OUT/lanes.log"

# Shards of one suite become the suite's one results file.
for suite in ${BENCH_SUITES:-}; do
    shards=("$OUT/$suite"-shard*of*.json)
    [[ -e ${shards[0]} ]] || continue
    python -m bench.shard "$OUT/$suite.json" "${shards[@]}" >>"$OUT/lanes.log" 2>&1
    [[ -e $OUT/$suite.json ]] && note "800_$suite" "bench $suite (${#shards[@]} shards merged)" \
        "$(grep -c '"median_ms": [0-9]' "$OUT/$suite.json") timed rows, $(grep -c '"error": "not run' "$OUT/$suite.json") not run"
done

if [[ " $STAGES " == *" ddp "* ]]; then
    # Two GPUs (nvidia-h200-x2): one DDP step's averaged gradients against one process on the global batch, step
    # times at the reference size, then the default parity training.
    timeout 200 python -m torch.distributed.run --nproc_per_node=2 examples/ddp_parity.py --check --steps 0 \
        --heads 12 --head-dim 64 --batch 32 --length 1024 ${DDP_ARGS:-} >"$OUT/ddp_check.log" 2>&1
    note 900 "ddp check 12x64 T=1024" "exit $? : $(grep -E '^gradients' "$OUT/ddp_check.log" | cut -c1-90)"
    note 901 "ddp step times" "$(grep -E '^time per' "$OUT/ddp_check.log" | sed 's/.*: //')"
    timeout 200 python -m torch.distributed.run --nproc_per_node=2 examples/ddp_parity.py --check \
        >"$OUT/ddp_train.log" 2>&1
    note 902 "ddp parity training" "exit $? : $(tail -n 1 "$OUT/ddp_train.log")"
    tail -n 30 "$OUT/ddp_check.log" "$OUT/ddp_train.log"
fi

# The device tool brings back at most 8 files: the logs travel as one archive beside the JSON results.
summary=$(cat "$OUT"/notes/* 2>/dev/null)
(cd "$OUT" && rm -rf notes queue queue.lock && tar czf logs.tar.gz --remove-files -- *.log)
[[ " $STAGES " == *" phases "* ]] && tar xzf "$OUT/logs.tar.gz" -O --wildcards 'phases_*.log' 2>/dev/null
[[ " $STAGES " == *" tune "* ]] && tar xzf "$OUT/logs.tar.gz" -O --wildcards 'tune_*.log' 2>/dev/null
[[ " $STAGES " == *" matvec "* ]] && tar xzf "$OUT/logs.tar.gz" -O matvec.log 2>/dev/null
[[ " $STAGES " == *" overlap "* ]] && tar xzf "$OUT/logs.tar.gz" -O overlap.log 2>/dev/null | grep rounds
[[ " $STAGES " == *" exchange "* ]] && tar xzf "$OUT/logs.tar.gz" -O --wildcards 'exchange_*.log' 2>/dev/null \
    | tail -n 60
echo; echo "== device_check summary ($LANES lanes, ${SECONDS}s) =="; echo "$summary"
