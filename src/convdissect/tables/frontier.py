"""`convdissect tables frontier RUN_DIRS... [--reference DIR ...] [--label-net DIR ...] [--plot handnet_frontier.png]`:
the HandNet's accuracy-versus-explanation frontier, a table and a plot.

Every metrics.json below the given dirs is one run; runs of the same K (bursts per unit), T (terms
per digit) and experiment are averaged over their seeds (mean ± sd). `--reference` dirs (e.g. the
dense fine-tuned HandNet, handnet_finetune, and the pruned SimpleConvNet, prune_7iters) are marked
on the plot; a net without an explanation counts every parameter as a number to read.
`--stored FILE` draws the points of a stored frontier table (docs/results/frontier.json) instead of
runs, and the runs given beside it as points of their own (e.g. handnet_distill). `--label-net DIRS` adds the curve of SimpleConvNets run from their labels (dissect's
claims.json below DIRS, averaged over nets): accuracy against the numbers those labels keep.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from convdissect.errors import UserInputError
from convdissect.tables.common import existing_dirs, metrics_of, seed_of, training_runs
from convdissect.tables.stored import load

# The experiment of the frontier sweep's points; a point of another experiment is named on the plot.
FRONTIER_EXPERIMENT = "handnet_explainable"
# The label net's lengths in the order of its curve (claims.json's label_net), from short to long.
LABEL_NET_LENGTHS = ("1", "2", "3", "printed", "5", "10", "r0.95", "20", "r0.98", "r0.99", "all")

# Overrides that do not change the net: runs differing only in these are seeds of one point.
NOT_A_VARIANT = (
    "seed=",
    "threads=",
    "hydra.",
    "hydra/",
    "paths.",
    "trainer.enable_progress_bar=",
    "~callbacks.progress_bar",
    "+sweep=",
    "+experiment=",
    "model.n_bursts=",
    "model.terms=",
    "model.teacher=",  # where the teacher's file is (the experiment says there is one)
)


def load_runs(dirs: list[Path]) -> list[dict]:
    """One row per finished run: its experiment, K, T, seed and numbers."""
    runs = []
    for run_dir in training_runs(dirs)[0]:
        m = metrics_of(run_dir)
        config = run_dir / ".hydra" / "config.yaml"
        terms = OmegaConf.load(config).model.get("terms", "?") if config.is_file() else "?"  # ?: no .hydra config
        explained = "explanation/numbers" in m
        runs.append(
            {
                "experiment": m.get("experiment", "?"),
                "K": m["explanation/bursts_per_unit_max"] if explained else None,
                "T": ("all" if terms is None else terms) if explained else None,
                "seed": seed_of(run_dir),
                "variant": " ".join(sorted(o for o in m.get("overrides", []) if not o.startswith(NOT_A_VARIANT))),
                "acc": 100 * m["test/acc"],
                # the rounded net (every number as explanation.md prints it) against the trained one, same images
                "rounding": 100 * m["explanation/rounded_acc_change"] if explained else None,
                "roundtrip": m.get("explanation/roundtrip_agreement"),
                "bursts": m.get("explanation/bursts_per_unit_max"),
                "terms": m.get("explanation/terms_per_digit_max"),
                "units": m.get("explanation/units_used"),
                "numbers": m["explanation/numbers"] if explained else m["n_params"],
                "wall_s": m["wall_s"],
                "dir": str(run_dir),
            }
        )
    return runs


def group(runs: list[dict]) -> list[dict]:
    """Runs of one experiment, K and T averaged over seeds."""
    groups = defaultdict(list)
    for run in runs:
        groups[(run["experiment"], run["K"], str(run["T"]), run["variant"])].append(run)
    rows = []
    for (experiment, k, t, variant), members in groups.items():
        acc = [r["acc"] for r in members]
        mean = functools.partial(_mean, members)
        rows.append(
            {
                "experiment": experiment,
                "K": k,
                "T": t,
                "variant": variant,
                "seeds": len(members),
                "acc": statistics.mean(acc),
                "acc_sd": statistics.stdev(acc) if len(acc) > 1 else None,
                "rounding": mean("rounding"),
                "roundtrip": min((r["roundtrip"] for r in members if r["roundtrip"] is not None), default=None),
                "bursts": mean("bursts"),
                "terms": mean("terms"),
                "units": mean("units"),
                "numbers": mean("numbers"),
                "wall_s": mean("wall_s"),
            }
        )
    return sorted(
        rows,
        key=lambda r: (
            r["K"] is None,
            r["K"] or 0,
            r["T"] == "all",
            int(r["T"]) if r["T"].isdigit() else 0,
            r["variant"],
        ),
    )


def _mean(members: list[dict], key: str) -> float | None:
    values = [r[key] for r in members if r[key] is not None]
    return statistics.mean(values) if values else None


def _num(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| experiment | K | T | other overrides | seeds | test acc % | rounding Δ (points) | round trip | bursts/unit | terms/digit | units | numbers to read | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{r['acc']:.2f}" + (f" ± {r['acc_sd']:.2f}" if r["acc_sd"] is not None else "")
        roundtrip = "—" if r["roundtrip"] is None else f"{100 * r['roundtrip']:.2f}%"
        lines.append(
            f"| {r['experiment']} | {r['K'] if r['K'] is not None else '—'} | {r['T'] if r['K'] is not None else '—'} | {r['variant']} | {r['seeds']} | "
            f"{acc} | {_num(r['rounding'], 2)} | {roundtrip} | {_num(r['bursts'])} | {_num(r['terms'])} | {_num(r['units'])} | "
            f"{_num(r['numbers'])} | {_num(r['wall_s'])} |"
        )
    return "\n".join(lines)


def stored_rows(path: Path) -> tuple[list[dict], list[dict]]:
    """The points (and the reference points) of a stored frontier table, as the plot reads them."""
    stored = load(path)
    rows, references = [], []
    for row in stored["rows"]:
        cell = dict(zip(stored["columns"], row))
        point = {
            "experiment": cell["K"].replace(", reference)", ")").removesuffix(" (reference)")
            if "reference" in cell["K"]
            else FRONTIER_EXPERIMENT,
            "K": None if "reference" in cell["K"] else int(cell["K"]),
            "T": cell["T"],
            "variant": cell["variant"],
            "acc": float(cell["test acc (%)"].split(" ± ")[0]),
            "numbers": float(cell["numbers to read"]),
        }
        (rows if point["K"] is not None else references).append(point)
    return rows, references


def label_net_points(dirs: list[Path]) -> list[dict]:
    """Per label length, the label nets' mean accuracy (%) and numbers to read over the claims.json below dirs."""
    nets = [json.loads(f.read_text()).get("label_net") for d in dirs for f in sorted(d.rglob("claims.json"))]
    nets = [n for n in nets if n and "numbers" in n.get("all", {})]
    if not nets:
        raise UserInputError(f"--label-net: no claims.json with a label net below {', '.join(map(str, dirs))}")
    return [
        {
            "length": length,
            "acc": 100 * statistics.mean(n[length]["accuracy"] for n in nets),
            "numbers": statistics.mean(n[length]["numbers"] for n in nets),
            "nets": len(nets),
        }
        for length in LABEL_NET_LENGTHS
        if all(length in n for n in nets)
    ]


def plot(rows: list[dict], references: list[dict], path: Path, label_net: list[dict] = ()) -> None:
    """Accuracy against numbers to read (log scale); one marker per K, T labelled; references apart;
    the label net's curve (label lengths annotated) where given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    series = sorted({(r["K"], r["experiment"], r["variant"]) for r in rows})
    for k, experiment, variant in series:  # a line per K (and per experiment and option measured)
        points = sorted(
            (r for r in rows if (r["K"], r["experiment"], r["variant"]) == (k, experiment, variant)),
            key=lambda r: r["numbers"],
        )
        other = experiment != FRONTIER_EXPERIMENT
        label = f"K={k} bursts per unit" + (f", {experiment}" if other else "") + (f", {variant}" if variant else "")
        style = "*" if other else "o-" if not variant else "x--"
        ax.plot(
            [r["numbers"] for r in points],
            [r["acc"] for r in points],
            style,
            markersize=10 if other else 6,
            label=label,
        )
        for r in points:
            ax.annotate(
                f"T={r['T']}", (r["numbers"], r["acc"]), textcoords="offset points", xytext=(4, -10), fontsize=7
            )
    for r, marker in zip(references, "s^Dv"):
        ax.plot(
            [r["numbers"]],
            [r["acc"]],
            marker,
            color="black",
            markerfacecolor="none",
            markersize=9,
            label=f"{r['experiment']} (reference)",
        )
    if label_net:
        points = sorted(label_net, key=lambda p: p["numbers"])
        label = f"SimpleConvNet run from its labels ({points[0]['nets']} nets; terms per unit annotated)"
        ax.plot([p["numbers"] for p in points], [p["acc"] for p in points], "s:", color="grey", label=label)
        for p in points:
            ax.annotate(p["length"], (p["numbers"], p["acc"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("numbers a reader must read to know the whole net (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("HandNet: accuracy against explanation length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="*", help="multirun or run dirs of the frontier")
    parser.add_argument(
        "--stored", type=Path, help="a stored frontier table (docs/results/frontier.json) instead of runs"
    )
    parser.add_argument("--label-net", type=Path, nargs="*", default=[], help="dissect output dirs (claims.json)")
    parser.add_argument("--reference", type=Path, nargs="*", default=[], help="run dirs marked as reference points")
    parser.add_argument("--plot", type=Path, default=Path("handnet_frontier.png"), help="where the plot goes")


def render(args: argparse.Namespace) -> str:
    label_net = label_net_points(existing_dirs(args.label_net, "--label-net")) if args.label_net else []
    if args.stored:
        rows, references = stored_rows(args.stored)
        rows += group(load_runs(existing_dirs(args.run_dirs))) if args.run_dirs else []
        plot(rows, references, args.plot, label_net)
        return label_net_table(label_net) + f"\n\nplot: {args.plot}"
    rows = group(load_runs(existing_dirs(args.run_dirs)))
    references = group(load_runs(existing_dirs(args.reference, "--reference")))
    if not rows:
        raise UserInputError(f"RUN_DIRS: no metrics.json under {', '.join(map(str, args.run_dirs)) or '(none given)'}")
    plot(rows, references, args.plot, label_net)
    return (
        table(rows + references) + ("\n\n" + label_net_table(label_net) if label_net else "") + f"\n\nplot: {args.plot}"
    )


def label_net_table(points: list[dict]) -> str:
    lines = ["| label length (terms per unit) | label-net accuracy % | numbers to read |", "|---|---|---|"]
    lines += [f"| {p['length']} | {p['acc']:.2f} | {p['numbers']:.0f} |" for p in points]
    return "\n".join(lines)
