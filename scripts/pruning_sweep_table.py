"""Validation accuracy right after each pruning step (before retraining), one row per pruning
setting of a multirun (criterion and schedule), as mean ± sd over its seeds, so criteria can be
compared, e.g. the standard magnitude and taylor against activation_variance and the random control.

    python train.py -m +experiment=prune_7iters +sweep=pruning_baselines \
        hydra/launcher=joblib hydra.launcher.n_jobs=12 threads=1
    python scripts/pruning_sweep_table.py outputs/prune_7iters/multiruns/<date>
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from results_table import mean_sd  # scripts/ is on the path when this script runs


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
    label = next(iter(weights)) if len(weights) == 1 else " + ".join(f"{w:g}*{name}" for name, w in weights.items())
    if pruning.get("magnitude_p") is not None:
        label += f" (L{pruning['magnitude_p']:g})"
    return label


def schedule_label(pruning: dict) -> str:
    schedule = f"threshold {pruning['threshold']:g}" if pruning["mode"] == "threshold" else "geometric"
    return schedule + (", global" if pruning.get("scope") == "global" else "")


def table(runs: list[tuple[Path, dict]]) -> str:
    """A Markdown table: criterion, schedule, seeds, accuracy right after each step, final widths,
    FLOPs per image and test accuracy (mean ± sd over the seeds, in %)."""
    groups = defaultdict(list)
    for _, m in runs:
        groups[(criterion_label(m["pruning"]), schedule_label(m["pruning"]))].append(m)
    steps = max(len(m["pruning_history"]) for _, m in runs)
    header = [
        "criterion",
        "schedule",
        "seeds",
        *(f"step {k} (%)" for k in range(1, steps + 1)),
        "final widths",
        "FLOPs per image",
        "test acc (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (criterion, schedule), group in sorted(groups.items()):
        group.sort(key=lambda m: m["pruning"].get("seed", -1))
        after = []
        for k in range(steps):
            values = [m["pruning_history"][k]["val_acc_pruned"] for m in group if len(m["pruning_history"]) > k]
            after.append(mean_sd(values) if values else "")
        seeds = ", ".join(str(m["pruning"].get("seed", "?")) for m in group)
        widths = " / ".join(sorted({str(m["widths"]) for m in group}))
        # "?": a run made before FLOPs were counted
        flops = " / ".join(sorted({f"{m['flops']:,}" if m.get("flops") else "?" for m in group}))
        cells = [criterion, schedule, seeds, *after, widths, flops, mean_sd([m["test/acc"] for m in group])]
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
