"""Markdown tables from a folder of runs: the results per experiment and the article's claims per
net (the claims and their verdict rule live in convdissect.dissect.claims; this script only finds and prints).

    python scripts/results_table.py OUTPUT_DIR

A training run is a directory with .hydra/ and a `trainer` in its config; its metrics.json gives
the results. A dissect run (labels.json; separation.json when its report was made) nested in a
training run's directory belongs to that run. A training run without metrics.json is listed by
name (it failed or is still running), never skipped silently.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from convdissect.dissect.claims import accuracy_table, claims_table

# Experiments in the order the article tells them.
ORDER = [
    "baseline",
    "prune_7iters",
    "prune_random",
    "small_scratch",
    "no_conv2",
    "handnet_handcrafted",
    "handnet_finetune",
]


@dataclass
class Run:
    path: Path
    metrics: dict
    seed: int
    dissections: list[Path] = field(default_factory=list)  # dissect run dirs of this run

    @property
    def experiment(self) -> str:
        return self.metrics.get("experiment", "?")


def find_runs(root: Path) -> tuple[list[Run], list[Path]]:
    """Training runs under root with their metrics, and the training run dirs lacking metrics.json."""
    runs, missing, dissects = [], [], []
    for config_file in sorted(root.rglob(".hydra/config.yaml")):
        run_dir = config_file.parent.parent
        config = OmegaConf.load(config_file)
        if "trainer" not in config:
            if (run_dir / "labels.json").exists():
                dissects.append(run_dir)
            continue
        if not (run_dir / "metrics.json").exists():
            missing.append(run_dir)
            continue
        runs.append(Run(run_dir, json.loads((run_dir / "metrics.json").read_text()), int(config.get("seed", 0))))
    for dissect_dir in dissects:
        owner = [r for r in runs if r.path in dissect_dir.parents]
        if owner:
            owner[0].dissections.append(dissect_dir)
    return runs, missing


def by_experiment(runs: list[Run]) -> dict[str, list[Run]]:
    groups = defaultdict(list)
    for run in runs:
        groups[run.experiment].append(run)
    return dict(sorted(groups.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER), kv[0])))


def mean_sd(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """'99.31 ± 0.05' (percent by default); a single value has no sd."""
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def results_table(groups: dict[str, list[Run]]) -> str:
    rows = [
        "| experiment | seeds | test accuracy (%) | widths | parameters | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():
        widths = {str(r.metrics["widths"]) for r in runs}
        params = {r.metrics["n_params"] for r in runs}
        rows.append(
            f"| {name} | {', '.join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed))} "
            f"| {mean_sd([r.metrics['test/acc'] for r in runs])} | {' / '.join(sorted(widths))} "
            f"| {' / '.join(f'{p:,}' for p in sorted(params))} | {mean_sd([r.metrics['wall_s'] for r in runs], 1.0, 0)} |"
        )
    return "\n".join(rows)


def pruning_table(groups: dict[str, list[Run]]) -> str:
    """Val accuracy per pruning step (mean over seeds): before, right after, after retraining."""
    rows = [
        "| experiment | step | widths | before (%) | right after pruning (%) | after retraining (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():
        histories = [r.metrics["pruning_history"] for r in runs if r.metrics.get("pruning_history")]
        for step in range(min((len(h) for h in histories), default=0)):
            entries = [h[step] for h in histories]
            rows.append(
                f"| {name} | {step + 1} | {entries[0]['widths']} | {mean_sd([e['val_acc_before'] for e in entries])} "
                f"| {mean_sd([e['val_acc_pruned'] for e in entries])} | {mean_sd([e['val_acc_retrained'] for e in entries])} |"
            )
    return "\n".join(rows) if len(rows) > 2 else ""


def dissection_files(runs: list[Run], name: str) -> list[dict]:
    """The `name` (claims.json, separation.json) of each run's first dissection that has one, one per seed."""
    found = []
    for run in sorted(runs, key=lambda r: r.seed):
        files = [d / name for d in run.dissections if (d / name).exists()]
        if files:
            found.append(json.loads(files[0].read_text()))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.output_dir.is_dir():
        print(f"error: {args.output_dir} is not a directory", file=sys.stderr)
        return 2
    runs, missing = find_runs(args.output_dir)
    groups = by_experiment(runs)
    print("## Results\n")
    print(results_table(groups))
    pruning = pruning_table(groups)
    if pruning:
        print("\n## Validation accuracy per pruning step (mean ± sd over seeds)\n")
        print(pruning)
    print("\n## The article's claims: accuracy\n")
    acc = {name: {r.seed: r.metrics["test/acc"] for r in runs} for name, runs in groups.items()}
    print(accuracy_table(acc, {name: dissection_files(runs, "separation.json") for name, runs in groups.items()}))
    print("\n## The article's claims: each statistic next to its nulls, per net (docs/measures.md)\n")
    print(
        claims_table({name: found for name, runs in groups.items() if (found := dissection_files(runs, "claims.json"))})
    )
    for run_dir in missing:
        print(f"\nno metrics.json in {run_dir}: that run failed or is still running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
