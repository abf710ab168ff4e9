"""The README's criterion table: does conv2's role depend on how the net was pruned?

    python scripts/article_method_table.py MULTIRUN_DIR [--dissect] [--no-conv2 RUN_DIR ...]

MULTIRUN_DIR holds the runs of `+sweep=article_criteria` (one per criterion and seed). Each run's
claims are read from its dissection's claims.json (RUN/dissect/claims.json); --dissect first runs
dissect.py on every run that has none. Rows are criteria, columns the claim-2 statistics of
convdissect.dissect.claims (COLUMNS; docs/measures.md says what each is), each as mean ± sd
over seeds, the untrained net's value (the null of "learned") and both verdicts (holds/learned), then
test accuracy and the no_conv2 gap: the criterion's test accuracy minus that of the no_conv2 runs
given (paired by seed where the seeds match).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from convdissect.config import REPO_ROOT
from convdissect.dissect.claims import seed_verdicts

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


def mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def training_runs(root: Path) -> tuple[list[Path], list[Path]]:
    """Run dirs (with metrics.json) under root, and those without (failed or still running)."""
    done, missing = [], []
    for config in sorted(root.rglob(".hydra/config.yaml")):
        run = config.parent.parent
        if run.name == "dissect" or run.parent.name == "dissect":
            continue
        (done if (run / "metrics.json").exists() else missing).append(run)
    return done, missing


def run_seed(run: Path) -> int:
    """The seed the run was composed with (its .hydra/config.yaml)."""
    return int(OmegaConf.load(run / ".hydra" / "config.yaml").get("seed", 0))


def dissect(run: Path, overrides: list[str]) -> None:
    """dissect.py on the run's model_state.pt into RUN/dissect (claims only: no report, no superstimuli)."""
    command = [
        sys.executable,
        str(REPO_ROOT / "dissect.py"),
        f"ckpt_path={run / 'model_state.pt'}",
        f"hydra.run.dir={run / 'dissect'}",
        "report.enabled=false",
        "superstimulus.enabled=false",
        *overrides,
    ]
    subprocess.run(command, check=True, cwd=REPO_ROOT)


def cell(records: list[dict], name: str) -> str:
    """'value (untrained u) holds/learned' of one statistic over the seeds."""
    records = [r[name] for r in records if name in r]
    if not records:
        return "-"
    v = seed_verdicts(records, name)
    untrained = [r["nulls"]["untrained"]["value"] for r in records]
    return f"{mean_sd([r['value'] for r in records])} (untrained {mean_sd(untrained)}) {v['holds']} / {v['learned']}"


def table(rows: dict[str, list[tuple[int, dict, dict]]], no_conv2: dict[int, float]) -> str:
    header = ["criterion", "seeds", *COLUMNS.values(), "test accuracy (%)", "minus no_conv2 (points)"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for name in sorted(rows, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        runs = sorted(rows[name], key=lambda r: r[0])
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--dissect", action="store_true", help="run dissect.py on every run without claims.json")
    parser.add_argument(
        "--dissect-overrides", nargs="*", default=[], help="extra dissect.py overrides, e.g. n_images=200"
    )
    parser.add_argument("--no-conv2", type=Path, nargs="*", default=[], help="no_conv2 run dirs (metrics.json)")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        print(f"error: {args.multirun_dir} is not a directory", file=sys.stderr)
        return 2
    runs, missing = training_runs(args.multirun_dir)
    if not runs:
        print(f"error: no run with metrics.json under {args.multirun_dir}", file=sys.stderr)
        return 2
    no_conv2 = {}
    for run in args.no_conv2:
        if not (run / "metrics.json").exists():
            print(f"error: --no-conv2 {run}: no metrics.json there", file=sys.stderr)
            return 2
        no_conv2[run_seed(run)] = json.loads((run / "metrics.json").read_text())["test/acc"]
    rows = defaultdict(list)
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        if "pruning" not in metrics:  # e.g. a baseline beside the sweep
            continue
        claims_file = run / "dissect" / "claims.json"
        if args.dissect and not claims_file.exists():
            dissect(run, args.dissect_overrides)
        claims = json.loads(claims_file.read_text()) if claims_file.exists() else None
        seed = run_seed(run)
        rows[criterion_name(metrics["pruning"]["criterion"])].append((seed, metrics, claims))
    print("Each cell: mean ± sd over seeds (the untrained net's value) holds / learned verdicts (docs/measures.md).\n")
    print(table(rows, no_conv2))
    for run in missing:
        print(f"\nno metrics.json in {run}: that run failed or is still running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
