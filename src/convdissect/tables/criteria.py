"""`convdissect tables criteria SWEEP_DIRS... [--dissect] [--no-conv2 RUN_DIR ...]`: does conv2's role
depend on how the net was pruned?

The dirs hold the runs of `+sweep=article_criteria` (one per criterion and seed). Each run's claims are
read from its dissection's claims.json (RUN/dissect/claims.json); --dissect first dissects every run
that has none. Rows are criteria, columns the claim-2 statistics of convdissect.dissect.claims
(COLUMNS; docs/measures.md says what each is), each as mean ± sd over seeds, the untrained net's value
(the null of "learned") and both verdicts (holds/learned), then test accuracy and the no_conv2 gap:
the criterion's test accuracy minus that of the no_conv2 runs given (paired by seed where the seeds match).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf

from convdissect.config import check_dissect_config, compose_for
from convdissect.dissect.claims import seed_verdicts
from convdissect.dissection import dissect as dissect_into
from convdissect.errors import UserInputError
from convdissect.tables.common import (
    existing_dirs,
    in_order,
    mean_sd,
    metrics_of,
    missing_lines,
    seed_of,
    training_runs,
)

ARTICLE = {"activation_variance", "weight_noise", "superstimulus_contrast", "selectivity"}
ORDER = ["prune_article", "activation_variance", "magnitude", "taylor", "random"]
# claim 2 (a): conv2 copies its driver's pattern; (b): one driver dominates; the top-k ablation
COLUMNS = {
    "conv2_copy_fraction": "(a) copy fraction",
    "conv2_tuning_corr": "(a) tuning corr. with driver",
    "conv2_top_share": "(b) main driver's share",
    "ablation_top1": "top-1 ablation acc.",
    "ablation_top2": "top-2 ablation acc.",
    "ablation_top3": "top-3 ablation acc.",
}


def criterion_name(criterion) -> str:
    """metrics.json's {name: weight} -> a row name: prune_article for the article's four."""
    names = set(criterion)
    if names == ARTICLE:
        return "prune_article"
    return " + ".join(sorted(names))


def dissect(run: Path, overrides: list[str]) -> None:
    """Dissect the run's model_state.pt into RUN/dissect as dissect.py would (claims only: no report, no
    superstimuli), its config saved in RUN/dissect/.hydra; in this process, as a process per run would
    import the whole stack again (~6 s each)."""
    out = run / "dissect"
    print(f"dissecting {run}", file=sys.stderr)
    settings = [f"ckpt_path={run / 'model_state.pt'}", "report.enabled=false", "superstimulus.enabled=false"]
    try:
        cfg = compose_for("dissect", [*settings, *overrides], out)
    except HydraException as err:
        raise UserInputError(f"--dissect-overrides {' '.join(overrides)}: {str(err).splitlines()[0]}") from None
    check_dissect_config(cfg)
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    dissect_into(cfg)


def cell(records: list[dict], name: str) -> str:
    """'value (untrained u) holds / learned' of one statistic over the seeds."""
    records = [r[name] for r in records if name in r]
    if not records:
        return "-"
    v = seed_verdicts(records, name)
    untrained = [r["nulls"]["untrained"]["value"] for r in records]
    return f"{mean_sd([r['value'] for r in records])} (untrained {mean_sd(untrained)}) {v['holds']} / {v['learned']}"


def table(rows: dict[str, list[tuple[int, dict, dict | None]]], no_conv2: dict[int, float]) -> str:
    """rows: {criterion: [(seed, metrics, claims or None)]}; no_conv2: {seed: test accuracy}."""
    header = ["criterion", "seeds", *COLUMNS.values(), "test accuracy (%)", "minus no_conv2 (points)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in in_order(rows, ORDER):
        runs = sorted(rows[name], key=lambda r: (r[0] is None, r[0] or 0))
        claims = [c for _, _, c in runs if c]
        acc = [m["test/acc"] * 100 for _, m, _ in runs]
        if no_conv2:
            paired = [m["test/acc"] * 100 - 100 * no_conv2[s] for s, m, _ in runs if s in no_conv2]
            gaps = paired or [a - 100 * statistics.fmean(no_conv2.values()) for a in acc]
            gap = mean_sd(gaps, 2) + ("" if paired else " (unpaired)")
        else:
            gap = "-"
        cells = [cell(claims, c) if claims else "not dissected" for c in COLUMNS]
        lines.append(
            f"| {name} | {', '.join(str(s) for s, _, _ in runs)} | "
            + " | ".join(cells)
            + f" | {mean_sd(acc, 2)} | {gap} |"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", help="the sweep's multirun dir (or its run dirs)")
    parser.add_argument("--dissect", action="store_true", help="dissect every run without claims.json first")
    parser.add_argument("--dissect-overrides", nargs="*", default=[], help="extra dissect overrides, e.g. n_images=200")
    parser.add_argument("--no-conv2", type=Path, nargs="*", default=[], help="no_conv2 run dirs (metrics.json)")


def render(args: argparse.Namespace) -> str:
    runs, missing = training_runs(existing_dirs(args.run_dirs))
    if not runs:
        raise UserInputError(f"RUN_DIRS: no run with metrics.json under {', '.join(map(str, args.run_dirs))}")
    no_conv2 = {}
    for run in args.no_conv2:
        if not (run / "metrics.json").exists():
            raise UserInputError(f"--no-conv2 {run}: no metrics.json there")
        no_conv2[seed_of(run)] = metrics_of(run)["test/acc"]
    rows = defaultdict(list)
    for run in runs:
        metrics = metrics_of(run)
        if "pruning" not in metrics:  # e.g. a baseline beside the sweep
            continue
        claims_file = run / "dissect" / "claims.json"
        if args.dissect and not claims_file.exists():
            dissect(run, args.dissect_overrides)
        claims = json.loads(claims_file.read_text()) if claims_file.exists() else None
        rows[criterion_name(metrics["pruning"]["criterion"])].append((seed_of(run), metrics, claims))
    return (
        "Each cell: mean ± sd over seeds (the untrained net's value) holds / learned verdicts (docs/measures.md).\n\n"
        + table(rows, no_conv2)
        + missing_lines(missing)
    )
