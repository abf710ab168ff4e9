#!/usr/bin/env bash
# Produced: no number in README.md or docs/ today: the wall time of dissect.py on 2 cores.
# Wall time of dissect.py on each checkpoint, everything included (the untrained nulls, the
# ablation, superstimuli, the report), pinned to CORES (default 0,1: the 2-core budget).
#   bash benchmarks/time_dissect.sh CKPT [CKPT ...]        (env: CORES, PYTHON)
set -euo pipefail
cd "$(dirname "$0")/.."
for ckpt in "$@"; do
    out=$(mktemp -d)
    start=$(date +%s.%N)
    if ! taskset -c "${CORES:-0,1}" "${PYTHON:-python}" dissect.py "ckpt_path=$ckpt" "hydra.run.dir=$out" > "$out.log" 2>&1; then
        tail -20 "$out.log"
        exit 1
    fi
    end=$(date +%s.%N)
    awk -v s="$start" -v e="$end" -v c="$ckpt" 'BEGIN { printf "%s: dissect.py %.1f s on cores '"${CORES:-0,1}"'\n", c, e - s }'
    grep -E "measured and labelled|superstimuli in|report in" "$out/dissect.log" | sed 's/^.*\] - /    /'
done
