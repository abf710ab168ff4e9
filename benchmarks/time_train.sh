#!/usr/bin/env bash
# Produced: docs/article_method.md: prune_article 225 s against prune_7iters' 196 s; docs/handnet.md: handnet_explainable 140 s, 375 s with model.cell_pixels=2.
# Wall time of whole training runs, everything included, one after the other, pinned to CORES
# (default 0,1: the 2-core budget); the ratio of each to the first. Each argument is an experiment,
# optionally followed by overrides in the same (quoted) argument.
#   bash benchmarks/time_train.sh prune_7iters prune_article          (env: CORES, PYTHON, SEED)
#   bash benchmarks/time_train.sh "handnet_explainable model.n_bursts=4 model.terms=null"
set -euo pipefail
cd "$(dirname "$0")/.."
first=""
for run in "$@"; do
    read -r experiment overrides <<< "$run"
    out=$(mktemp -d)
    start=$(date +%s.%N)
    if ! taskset -c "${CORES:-0,1}" "${PYTHON:-python}" train.py "+experiment=$experiment" "seed=${SEED:-0}" $overrides \
        trainer.enable_progress_bar=false '~callbacks.progress_bar' "hydra.run.dir=$out" > "$out.log" 2>&1; then
        tail -20 "$out.log"
        exit 1
    fi
    end=$(date +%s.%N)
    seconds=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')
    first=${first:-$seconds}
    awk -v t="$seconds" -v f="$first" -v x="$run" \
        'BEGIN { printf "%s: %.1f s on cores '"${CORES:-0,1}"' (%.2fx the first)\n", x, t, t / f }'
    grep -E "test/acc .* s; outputs" "$out.log" | sed 's/^.*\] - /    /'
done
