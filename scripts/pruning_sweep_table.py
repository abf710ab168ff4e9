"""Validation accuracy right after each pruning step (before retraining), one row per run of a
multirun, so criteria can be compared, e.g. activation_variance against the random control.

    python train.py -m +experiment=prune_7iters callbacks.pruning.criterion=activation_variance,random
    python scripts/pruning_sweep_table.py outputs/prune_7iters/multiruns/<date>
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def pruning_runs(root: Path) -> list[tuple[Path, dict]]:
    """(run dir, metrics) of every run under root that pruned."""
    runs = []
    for path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        if metrics.get("pruning_history"):
            runs.append((path.parent, metrics))
    return runs


def criterion_label(pruning: dict) -> str:
    weights = pruning["criterion"]
    if len(weights) == 1:
        return next(iter(weights))
    return " + ".join(f"{w:g}*{name}" for name, w in weights.items())


def table(runs: list[tuple[Path, dict]]) -> str:
    """A Markdown table: run, criterion, schedule, accuracy right after each step, final widths and test accuracy."""
    steps = max(len(m["pruning_history"]) for _, m in runs)
    header = ["run", "criterion", "schedule"] + [f"step {k}" for k in range(1, steps + 1)] + ["final widths", "test acc"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run_dir, m in sorted(runs, key=lambda r: (criterion_label(r[1]["pruning"]), str(r[0]))):
        pruning = m["pruning"]
        schedule = f"threshold {pruning['threshold']:g}" if pruning["mode"] == "threshold" else "geometric"
        after = [f"{h['val_acc_pruned']:.4f}" for h in m["pruning_history"]] + [""] * (steps - len(m["pruning_history"]))
        cells = [run_dir.name, criterion_label(pruning), schedule, *after, str(m["widths"]), f"{m['test/acc']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", type=Path, help="a Hydra multirun dir (or any dir holding run dirs)")
    root = parser.parse_args().multirun_dir
    runs = pruning_runs(root)
    if not runs:
        raise SystemExit(f"error: no metrics.json with a pruning_history under {root}")
    print(table(runs))


if __name__ == "__main__":
    main()
