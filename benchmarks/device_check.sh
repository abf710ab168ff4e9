#!/usr/bin/env bash
# Produced: docs/results.md: on an H100, prune_7iters 48.4 s wall and 99.18% test accuracy, dissect.py 43.7 s.
# Device readiness in one go (at most 5 minutes on a CUDA machine): install the project, train
# +experiment=prune_7iters on the GPU, dissect the pruned net, and print the GPU, the wall times and the
# accuracies. The machine may have no internet: what it lacks travels in two ignored folders made here.
#
#   bash benchmarks/device_check.sh --prepare   # here, with pip and MNIST at hand: fills .whl/ and .device_data/
#   bash benchmarks/device_check.sh             # there, from the repository root (carry .whl and .device_data)
#   bash benchmarks/device_check.sh --cpu       # a tiny run of the same steps on the CPU, to check the script
#
# --prepare downloads the pure-Python wheels of Hydra (hydra-core, omegaconf, antlr4-python3-runtime: the
# torch, Lightning and plotting packages are expected there) and gzips MNIST's four IDX files from
# $CONVDISSECT_DATA_DIR (default data/) into .device_data/MNIST/raw/ (about 11 MB), i.e.
#   for f in "$CONVDISSECT_DATA_DIR"/MNIST/raw/*-ubyte; do
#       gzip -c "$f" > .device_data/MNIST/raw/$(basename "$f").gz; done
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
HYDRA_WHEELS=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3)

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf .whl && mkdir -p .whl .device_data/MNIST/raw
    for req in "${HYDRA_WHEELS[@]}"; do
        # antlr4-python3-runtime 4.9.3 (the one omegaconf 2.3 accepts) is an sdist only: built here into a
        # pure-Python wheel
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux2014_x86_64 -d .whl "$req" 2>/dev/null || "$PY" -m pip wheel -q --no-deps -w .whl "$req"
    done
    raw=${CONVDISSECT_DATA_DIR:-data}/MNIST/raw
    for f in "$raw"/*-ubyte; do gzip -c "$f" >".device_data/MNIST/raw/$(basename "$f").gz"; done
    du -sh .whl .device_data
    exit 0
fi

CPU=false
[[ "${1:-}" == "--cpu" ]] && CPU=true
WORK=${TMPDIR:-/tmp}/convdissect_device_check
rm -rf "$WORK" && mkdir -p "$WORK/site" "$WORK/data/MNIST/raw" "$WORK/run"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# 1. install: Hydra from the carried wheels, the project itself as a wheel (no dependencies fetched)
t=$(now)
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$WORK/site" \
    .whl/*.whl "$REPO"
rm -rf "$REPO/build"
export PYTHONPATH=$WORK/site PATH=$WORK/site/bin:$PATH
for f in .device_data/MNIST/raw/*.gz; do gunzip -c "$f" >"$WORK/data/MNIST/raw/$(basename "$f" .gz)"; done
export CONVDISSECT_DATA_DIR=$WORK/data
echo "install: $(since "$t") s"

"$PY" - <<'EOF'
import convdissect, hydra, lightning, torch
print(f"python {__import__('sys').version.split()[0]}, torch {torch.__version__}, lightning {lightning.__version__}, "
      f"hydra {hydra.__version__}, convdissect from {convdissect.__file__}")
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CUDA not available)")
EOF

# 2. train and prune, from a directory of its own (outputs/ lands there)
cd "$WORK/run"
if $CPU; then
    TRAIN=(trainer=cpu +experiment=prune_7iters model.widths=[8,8,8,8] callbacks.pruning.target_widths=[2,4,4,4]
           trainer.limit_train_batches=4 trainer.limit_val_batches=1 trainer.limit_test_batches=1
           callbacks.pruning.calibration_size=200 callbacks.pruning.eval_size=400 data.eval_batch_size=200)
    DISSECT=(n_images=200 superstimulus.steps=4 report.projection_points=100)
else
    TRAIN=(trainer=gpu +experiment=prune_7iters)
    DISSECT=()
fi
t=$(now)
convdissect-train "${TRAIN[@]}" trainer.enable_progress_bar=false '~callbacks.progress_bar' >train.log 2>&1 \
    || { tail -30 train.log; exit 1; }
train_s=$(since "$t")
run_dir=$(dirname "$(ls -t outputs/prune_7iters/runs/*/metrics.json | head -1)")

# 3. dissect the pruned net the run tested
t=$(now)
convdissect-dissect ckpt_path="$run_dir/model_state.pt" "${DISSECT[@]}" >dissect.log 2>&1 \
    || { tail -30 dissect.log; exit 1; }
dissect_s=$(since "$t")

"$PY" - "$run_dir/metrics.json" "$train_s" "$dissect_s" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"train +experiment=prune_7iters: {sys.argv[2]} s wall (device {m['device']}), test/acc {m['test/acc']:.4f}, "
      f"val/acc {m.get('val/acc', float('nan')):.4f}, widths {m['widths']}, {m['n_params']} params")
print(f"dissect on {sys.argv[1].rsplit('/', 1)[0]}/model_state.pt: {sys.argv[3]} s wall")
EOF
