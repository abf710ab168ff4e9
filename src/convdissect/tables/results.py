"""`convdissect tables results RUN_DIRS...`: the results per experiment, validation accuracy per
pruning step, and the article's claims per net, from training runs and their dissections.

A training run's metrics.json gives its results. A dissect run (labels.json; separation.json when its
report was made) nested in a training run's directory belongs to that run. The claims' statistics and
their verdict rule live in convdissect.dissect.claims; this module only finds and prints.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from convdissect.dissect.claims import CLAIMS, PRIMARY_NET, STATISTICS, seed_verdicts
from convdissect.tables.common import (
    existing_dirs,
    in_order,
    is_training_run,
    mean_sd,
    metrics_of,
    missing_lines,
    seed_of,
    training_runs,
)

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
    seed: int | None  # None: a run made in-process, without .hydra/
    dissections: list[Path] = field(default_factory=list)  # dissect run dirs of this run

    @property
    def experiment(self) -> str:
        return self.metrics.get("experiment", "?")


def find_runs(roots: list[Path]) -> tuple[list[Run], list[Path]]:
    """Training runs under the roots with their metrics and dissections, and the run dirs lacking metrics.json."""
    done, missing = training_runs(roots)
    runs = [Run(path, metrics_of(path), seed_of(path)) for path in done]
    for root in roots:
        for labels in sorted(root.rglob("labels.json")):
            dissect_dir = labels.parent
            if not (dissect_dir / ".hydra").is_dir() or is_training_run(dissect_dir):
                continue  # a HandNet run's own labels.json, not a dissection
            owner = [r for r in runs if r.path in dissect_dir.parents]
            if owner and dissect_dir not in owner[0].dissections:
                owner[0].dissections.append(dissect_dir)
    return runs, missing


def by_experiment(runs: list[Run]) -> dict[str, list[Run]]:
    groups = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.seed is None, r.seed or 0)):
        groups[run.experiment].append(run)
    return {name: groups[name] for name in in_order(groups, ORDER)}


def results_table(groups: dict[str, list[Run]]) -> str:
    rows = [
        "| experiment | seeds | test accuracy (%) | widths | parameters | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in groups.items():
        widths = {str(r.metrics["widths"]) for r in runs}
        params = {r.metrics["n_params"] for r in runs}
        rows.append(
            f"| {name} | {', '.join(str(r.seed) for r in runs)} "
            f"| {mean_sd([r.metrics['test/acc'] for r in runs], 2, 100)} | {' / '.join(sorted(widths))} "
            f"| {' / '.join(f'{p:,}' for p in sorted(params))} | {mean_sd([r.metrics['wall_s'] for r in runs], 0)} |"
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
                f"| {name} | {step + 1} | {entries[0]['widths']} "
                + " | ".join(
                    mean_sd([e[key] for e in entries], 2, 100)
                    for key in ("val_acc_before", "val_acc_pruned", "val_acc_retrained")
                )
                + " |"
            )
    return "\n".join(rows) if len(rows) > 2 else ""


def claims_table(per_net: dict[str, list[dict]]) -> str:
    """A markdown table: one row per net and statistic, with its nulls and both verdicts.
    per_net: {net name: [claims.json of each seed]}."""
    rows = [
        '| claim | statistic | net | seeds | value | null for "holds" | holds | untrained net | learned |',
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in STATISTICS.items():
        for net in sorted(per_net, key=lambda n: n != PRIMARY_NET):  # the article's net first, the others as given
            records = [s[name] for s in per_net[net] if name in s]
            if not records:
                continue
            v = seed_verdicts(records, name)
            holds = [r["nulls"][spec.holds_null]["value"] for r in records]
            untrained = [r["nulls"]["untrained"]["value"] for r in records]
            value = mean_sd([r["value"] for r in records])
            if "full_net" in records[0]:
                value += f" (full net {mean_sd([r['full_net'] for r in records])})"
            rows.append(
                f"| {spec.claim}: {CLAIMS[spec.claim]} | {spec.what} | {net} | {len(records)} | {value} "
                f"| {spec.holds_null} {mean_sd(holds)} | {v['holds']} | {mean_sd(untrained)} | {v['learned']} |"
            )
    return "\n".join(rows)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def accuracy_table(acc: dict[str, dict[int, float]], separations: dict[str, list[dict]] | None = None) -> str:
    """The article's claims about accuracy and class separation, per net.
    acc: {experiment: {seed: test accuracy}}; separations: {experiment: [separation.json per seed]}."""
    mean = {name: statistics.fmean(seeds.values()) for name, seeds in acc.items() if seeds}
    rows = ["| claim of the article | our measurement | verdict |", "|---|---|---|"]
    rows += [row for row in (_pruning_row(acc, mean), _no_conv2_row(acc, mean)) if row]
    rows += _handnet_rows(acc, mean) + _separation_rows(separations or {})
    return "\n".join(rows)


def _points(acc: dict[str, dict[int, float]], name: str) -> str:
    return mean_sd(list(acc[name].values()), 2, 100)


def _pruning_row(acc: dict[str, dict[int, float]], mean: dict[str, float]) -> str | None:
    """prune_7iters against the baseline, and against training the pruned widths from scratch."""
    if not {"baseline", "prune_7iters"} <= mean.keys():
        return None
    gap = (mean["baseline"] - mean["prune_7iters"]) * 100
    text = f"prune_7iters {_points(acc, 'prune_7iters')}% vs baseline {_points(acc, 'baseline')}%"
    verdict_text = "supported" if gap <= 0.3 else f"not supported: {gap:.2f} points lost"
    for control in ("small_scratch", "prune_random"):
        if control in mean:
            text += f", {control} {_points(acc, control)}%"
    if "small_scratch" in mean:
        edge = (mean["prune_7iters"] - mean["small_scratch"]) * 100
        spread = 2 * max(_sd(list(acc["prune_7iters"].values())), _sd(list(acc["small_scratch"].values()))) * 100
        verdict_text += (
            f"; pruning beats training 8/16/24/16 from scratch by {edge:.2f} points"
            if edge > spread
            else f"; but training 8/16/24/16 from scratch does as well ({edge:+.2f} points, 2 sd {spread:.2f})"
        )
    return f"| Pruning to 8/16/24/16 in 7 steps keeps accuracy after retraining | {text} | {verdict_text} |"


def _no_conv2_row(acc: dict[str, dict[int, float]], mean: dict[str, float]) -> str | None:
    """no_conv2 against the baseline, paired by seed."""
    if not {"baseline", "no_conv2"} <= mean.keys():
        return None
    gaps = [(acc["baseline"][s] - acc["no_conv2"][s]) * 100 for s in acc["baseline"].keys() & acc["no_conv2"].keys()]
    if not gaps:
        return None
    return (
        f"| conv2 can be left out | no_conv2 {_points(acc, 'no_conv2')}% vs baseline {_points(acc, 'baseline')}% "
        f"(baseline minus no_conv2: {mean_sd(gaps, 2)} points, paired by seed) "
        f"| {'supported' if statistics.fmean(gaps) <= 0.3 else 'not supported: leaving conv2 out costs accuracy'} |"
    )


def _handnet_rows(acc: dict[str, dict[int, float]], mean: dict[str, float]) -> list[str]:
    """Each HandNet against the nets it mirrors, measured (no claim of the article to judge)."""
    rows = []
    for hand in ("handnet_handcrafted", "handnet_finetune"):
        if hand not in mean:
            continue
        against = [
            f"{gap:.2f} points below {net} ({_points(acc, net)}%)"
            for net in ("prune_7iters", "baseline")
            if net in mean
            for gap in [(mean[net] - mean[hand]) * 100]
        ]
        rows.append(
            f"| The HandNet ({hand}) compared with the nets it mirrors | {hand} {_points(acc, hand)}%: {'; '.join(against)} | measured |"
        )
    return rows


def _separation_rows(separations: dict[str, list[dict]]) -> list[str]:
    """Per net, kNN accuracy and silhouette per layer (medians over seeds): do fc4 and fc5 beat conv3?"""
    rows = []
    for net, seeds in separations.items():
        if not seeds:
            continue
        sil = {stage: statistics.median(s[stage]["silhouette"] for s in seeds) for stage in seeds[0]}
        knn = {stage: statistics.median(s[stage]["knn_acc"] for s in seeds) for stage in seeds[0]}
        text = "; ".join(f"{stage}: kNN {knn[stage]:.3f}, silhouette {sil[stage]:.2f}" for stage in sil)
        better = min(sil.get("fc4", 0), sil.get("fc5", 0)) > sil.get("conv3", 1)
        rows.append(
            f"| The fc layers separate the classes better than conv3 ({net}) | {text} | {'supported' if better else 'not supported by the silhouette'} |"
        )
    return rows


def dissection_files(runs: list[Run], name: str) -> list[dict]:
    """The `name` (claims.json, separation.json) of each run's first dissection that has one, one per seed."""
    found = []
    for run in runs:
        files = [d / name for d in run.dissections if (d / name).exists()]
        if files:
            found.append(json.loads(files[0].read_text()))
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run dirs or folders of runs (e.g. outputs/)")


def render(args: argparse.Namespace) -> str:
    runs, missing = find_runs(existing_dirs(args.run_dirs))
    groups = by_experiment(runs)
    parts = ["## Results\n", results_table(groups)]
    pruning = pruning_table(groups)
    if pruning:
        parts += ["\n## Validation accuracy per pruning step (mean ± sd over seeds)\n", pruning]
    acc = {name: {r.seed: r.metrics["test/acc"] for r in runs} for name, runs in groups.items()}
    separations = {name: dissection_files(runs, "separation.json") for name, runs in groups.items()}
    claims = {name: found for name, runs in groups.items() if (found := dissection_files(runs, "claims.json"))}
    parts += [
        "\n## The article's claims: accuracy\n",
        accuracy_table(acc, separations),
        "\n## The article's claims: each statistic next to its nulls, per net (docs/measures.md)\n",
        claims_table(claims),
    ]
    return "\n".join(parts) + missing_lines(missing)
