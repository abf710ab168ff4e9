"""Markdown tables from a folder of runs: the results per experiment and the article's claims.

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

import torch
from omegaconf import OmegaConf

from convdissect.conventions import orientation_bin
from convdissect.models.parametric import fit_lines, peak_energy_share

# Experiments in the order the article tells them.
ORDER = ["baseline", "prune_7iters", "prune_random", "small_scratch", "no_conv2", "handnet_handcrafted", "handnet_finetune"]


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
    rows = ["| experiment | step | widths | before (%) | right after pruning (%) | after retraining (%) |", "|---|---|---|---|---|---|"]
    for name, runs in groups.items():
        histories = [r.metrics["pruning_history"] for r in runs if r.metrics.get("pruning_history")]
        for step in range(min((len(h) for h in histories), default=0)):
            entries = [h[step] for h in histories]
            rows.append(
                f"| {name} | {step + 1} | {entries[0]['widths']} | {mean_sd([e['val_acc_before'] for e in entries])} "
                f"| {mean_sd([e['val_acc_pruned'] for e in entries])} | {mean_sd([e['val_acc_retrained'] for e in entries])} |"
            )
    return "\n".join(rows) if len(rows) > 2 else ""


def labels_of(runs: list[Run]) -> list[dict]:
    return [json.loads((d / "labels.json").read_text()) for r in runs for d in r.dissections]


def units(labels: list[dict], layer: str) -> list[dict]:
    return [u for one in labels for u in one["units"] if u["layer"] == layer]


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def weight_grids(run: Run, layer: str) -> torch.Tensor | None:
    """The 5x5 grids [out*in, 5, 5] of a layer of the run's model_state.pt."""
    state = torch.load(run.path / "model_state.pt", weights_only=True)
    weight = state.get(f"{layer}.weight")
    return None if weight is None or weight.dim() != 4 else weight.flatten(0, 1)


def grid_verdict(burstier: float, smoother: float) -> str:
    """conv3 more burst-like (energy in 2 pixels) and conv2 more stroke-like (line fit R²)?"""
    if burstier >= 0.05 and smoother >= 0.05:
        return "supported"
    if burstier > 0 and smoother > 0:
        return f"weak: the right direction, but the layers differ little ({burstier:+.2f} share, {smoother:+.2f} R²)"
    return "not supported by these numbers"


def claims_table(groups: dict[str, list[Run]]) -> str:
    """Each claim of the article with our number and a verdict."""
    acc = {name: [r.metrics["test/acc"] for r in runs] for name, runs in groups.items()}
    avg = {name: statistics.mean(values) for name, values in acc.items()}
    rows = ["| claim of the article | our measurement | verdict |", "|---|---|---|"]

    def add(claim, measured, verdict):
        rows.append(f"| {claim} | {measured} | {verdict} |")

    if {"baseline", "prune_7iters"} <= avg.keys():
        gap = (avg["baseline"] - avg["prune_7iters"]) * 100
        measured = f"prune_7iters {mean_sd(acc['prune_7iters'])}% vs baseline {mean_sd(acc['baseline'])}%"
        for control in ("small_scratch", "prune_random"):
            if control in acc:
                measured += f", {control} {mean_sd(acc[control])}%"
        verdict = "supported" if gap <= 0.3 else f"not supported: {gap:.2f} points lost"
        if "small_scratch" in avg:
            edge = (avg["prune_7iters"] - avg["small_scratch"]) * 100
            spread = max(statistics.stdev(acc[n]) if len(acc[n]) > 1 else 0 for n in ("prune_7iters", "small_scratch")) * 100
            verdict += (
                f"; pruning beats training 8/16/24/16 from scratch by {edge:.2f} points"
                if edge > spread
                else f"; but training 8/16/24/16 from scratch does as well ({edge:+.2f} points, seed sd {spread:.2f})"
            )
        add("Pruning to 8/16/24/16 in 7 steps keeps accuracy after retraining", measured, verdict)

    simple = [r for name in ("prune_7iters", "baseline") for r in groups.get(name, [])]
    conv1 = units(labels_of(simple), "conv1")
    if conv1:
        clean = [u for u in conv1 if u["fit_r2"] >= 0.5]
        bins = sorted({orientation_bin(u["orientation_deg"]) for u in clean})
        add(
            "conv1 holds line detectors spanning 0/45/90/135°",
            f"{len(clean)} of {len(conv1)} conv1 units fit a line/edge with R² ≥ 0.5; their orientations cover {bins}°",
            "supported" if len(bins) == 4 else f"partly: {len(bins)} of 4 orientations",
        )

    conv2 = units(labels_of(simple), "conv2")
    if conv2:
        share = median(u["dominant_share"] for u in conv2)
        copies = sum(bool(u["copies_input"]) for u in conv2)
        measured = f"median share of the dominant inner contribution {share:.2f}; {copies} of {len(conv2)} conv2 channels copy their dominant conv1 input"
        verdict = "supported" if share >= 0.5 else "not supported: conv2 channels mix several conv1 channels"
        by_seed = {name: {r.seed: r.metrics["test/acc"] for r in groups.get(name, [])} for name in ("baseline", "no_conv2")}
        gaps = [by_seed["baseline"][s] - by_seed["no_conv2"][s] for s in by_seed["baseline"].keys() & by_seed["no_conv2"].keys()]
        if gaps:  # the accuracy cost of leaving conv2 out, seed by seed
            measured += f"; accuracy without conv2: {mean_sd(acc['no_conv2'])}% (baseline minus no_conv2: {mean_sd(gaps)} points)"
            verdict += "; leaving conv2 out costs little" if statistics.mean(gaps) * 100 <= 0.3 else "; leaving conv2 out costs accuracy"
        add("conv2 mostly copies (amplifies) conv1, so it can be left out", measured, verdict)

    full = groups.get("baseline") or groups.get("prune_7iters") or []
    if full:
        shares, fits = {}, {}
        for layer in ("conv2", "conv3"):
            grids = torch.cat([g for r in full if (g := weight_grids(r, layer)) is not None])
            shares[layer] = float(peak_energy_share(grids, 2).median())
            fits[layer] = float(fit_lines(grids[: 4096]).r2.median())
        add(
            "conv2 grids are Gabor-like (smooth strokes), conv3 grids are pixel bursts",
            f"median share of a grid's energy in its 2 strongest pixels: conv2 {shares['conv2']:.2f}, conv3 {shares['conv3']:.2f}; "
            f"median R² of the best line/edge fit: conv2 {fits['conv2']:.2f}, conv3 {fits['conv3']:.2f}",
            grid_verdict(shares["conv3"] - shares["conv2"], fits["conv2"] - fits["conv3"]),
        )

    conv3 = units(labels_of(simple), "conv3")
    if conv3 and median(u.get("position_index") for u in conv3) is not None:
        position = median(u.get("position_index") for u in conv3)
        pattern = median(u.get("pattern_index") for u in conv3)
        conv1_position = median(u.get("position_index") for u in conv1)
        add(
            "conv3 selects positions, conv1 selects patterns",
            f"conv3 median position index {position:.2f}, pattern index {pattern:.2f}; conv1 position index {conv1_position:.2f}",
            "supported" if position > pattern else "not supported: conv3 responds more to the pattern than to its position",
        )

    separations = [json.loads((d / "separation.json").read_text()) for r in simple for d in r.dissections if (d / "separation.json").exists()]
    if separations:
        stages = list(separations[0])
        knn = {s: median(sep[s]["knn_acc"] for sep in separations) for s in stages}
        sil = {s: median(sep[s]["silhouette"] for sep in separations) for s in stages}
        add(
            "The fc layers separate the classes better than conv3",
            "; ".join(f"{s}: kNN {knn[s]:.3f}, silhouette {sil[s]:.2f}" for s in stages),
            "supported" if min(sil.get("fc4", 0), sil.get("fc5", 0)) > sil.get("conv3", 1) else "not supported by the silhouette",
        )

    if {"handnet_handcrafted", "handnet_finetune", "baseline"} <= avg.keys():
        hand, tuned, base = (avg[n] * 100 for n in ("handnet_handcrafted", "handnet_finetune", "baseline"))
        params = groups["handnet_finetune"][0].metrics["n_params"]
        add(
            "A hand-built HandNet is far worse; fine-tuning its parameters only brings it on par",
            f"hand-built {mean_sd(acc['handnet_handcrafted'])}%, fine-tuned {mean_sd(acc['handnet_finetune'])}% "
            f"({params:,} parameters) vs baseline {mean_sd(acc['baseline'])}%",
            ("supported" if base - hand > 10 and base - tuned <= 0.5 else "partly")
            + f": {base - hand:.1f} points below, then {base - tuned:.2f} points below after fine-tuning",
        )
    return "\n".join(rows)


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
    print("\n## The article's claims\n")
    print(claims_table(groups))
    for run_dir in missing:
        print(f"\nno metrics.json in {run_dir}: that run failed or is still running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
