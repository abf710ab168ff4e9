"""`convdissect tables pruning SWEEP_DIRS...`: validation accuracy right after each pruning step (before
retraining), one row per pruning setting (criterion and schedule), mean ± sd over its seeds, so
criteria can be compared, e.g. the standard magnitude and taylor against activation_variance and the
random control:

    python train.py -m +experiment=prune_7iters +sweep=pruning_baselines \
        hydra/launcher=joblib hydra.launcher.n_jobs=12 threads=1
    convdissect tables pruning outputs/prune_7iters/multiruns/<date>
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from convdissect.errors import UserInputError
from convdissect.tables.common import existing_dirs, mean_sd, metrics_of, training_runs


def pruning_runs(roots: list[Path]) -> list[dict]:
    """The metrics of every finished run under the roots that pruned."""
    done, _ = training_runs(roots)
    return [m for m in map(metrics_of, done) if m.get("pruning_history")]


def criterion_label(pruning: dict) -> str:
    weights = pruning["criterion"]
    label = next(iter(weights)) if len(weights) == 1 else " + ".join(f"{w:g}*{name}" for name, w in weights.items())
    if pruning.get("magnitude_p") is not None:
        label += f" (L{pruning['magnitude_p']:g})"
    return label


def schedule_label(pruning: dict) -> str:
    schedule = f"threshold {pruning['threshold']:g}" if pruning["mode"] == "threshold" else "geometric"
    return schedule + (", global" if pruning.get("scope") == "global" else "")


def table(runs: list[dict]) -> str:
    """A Markdown table: criterion, schedule, seeds, accuracy right after each step, final widths,
    FLOPs per image and test accuracy (mean ± sd over the seeds, in %)."""
    groups = defaultdict(list)
    for m in runs:
        groups[(criterion_label(m["pruning"]), schedule_label(m["pruning"]))].append(m)
    steps = max(len(m["pruning_history"]) for m in runs)
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
            after.append(mean_sd(values, 2, 100) if values else "")
        seeds = ", ".join(str(m["pruning"].get("seed", "?")) for m in group)
        widths = " / ".join(sorted({str(m["widths"]) for m in group}))
        # "?": a run made before FLOPs were counted
        flops = " / ".join(sorted({f"{m['flops']:,}" if m.get("flops") else "?" for m in group}))
        cells = [criterion, schedule, seeds, *after, widths, flops, mean_sd([m["test/acc"] for m in group], 2, 100)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", help="a Hydra multirun dir (or any dirs holding run dirs)")


def render(args: argparse.Namespace) -> str:
    runs = pruning_runs(existing_dirs(args.run_dirs))
    if not runs:
        raise UserInputError(
            f"RUN_DIRS: no metrics.json with a pruning_history under {', '.join(map(str, args.run_dirs))}"
        )
    return table(runs)
