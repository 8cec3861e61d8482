#!/usr/bin/env bash
# ncu on the fused forward and backward kernels of one problem (bench/profile_kernels.py's flags), with the
# stall samples per SASS line: full report and CSVs under $OUT/profile, a few headline metrics printed.
#   bash bench/profile_fused.sh --cell lstm --heads 12 --head-dim 64 --batch 16 --time 256
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT/profile"
export FLASHRNN_CORE_LINEINFO=1 FLASHRNN_CORE_CACHE=${FLASHRNN_CORE_CACHE:-/tmp/flashrnn_core_cache}/lineinfo
python bench/profile_kernels.py --calls 1 "$@" >/dev/null  # compile and cache outside the profiler
ncu -k regex:flashrnn_fused -c 2 --set full --import-source yes -f -o "$OUT/profile/prof" \
    python bench/profile_kernels.py --calls 2 "$@" >"$OUT/profile/ncu.log" 2>&1
ncu -i "$OUT/profile/prof.ncu-rep" --page details >"$OUT/profile/details.txt" 2>&1
ncu -i "$OUT/profile/prof.ncu-rep" --page source --csv --print-source sass >"$OUT/profile/source_sass.csv" 2>&1
grep -E "^  flashrnn|Duration|Warp Cycles Per Issued|Registers Per Thread|Executed Instructions  " "$OUT/profile/details.txt"
python bench/ncu_summary.py "$OUT/profile/source_sass.csv" --top 30 | tee "$OUT/profile/summary.txt"
rm -f "$OUT/profile/source_sass.csv" "$OUT/profile/prof.ncu-rep"  # large; what matters is in summary.txt
# Every kernel of one forward + backward at the full size, with its duration (what the backward spends
# around its fused kernel: dR/db GEMMs, copies).
ncu --metrics gpu__time_duration.sum -f --csv python bench/profile_kernels.py --calls 1 --time 1024 \
    "$@" 2>/dev/null | python -c "
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if len(r) > 10 and r[-1].replace('.', '').replace(',', '').isdigit()]
for r in rows: print(f'{float(r[-1].replace(\",\", \"\")) / 1e3:9.1f} us  {r[4][:90]}')
" | tee "$OUT/profile/kernels.txt"
