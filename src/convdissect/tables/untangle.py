"""`convdissect tables untangle RUN_DIRS... [--figure untangle.png --method probe_window]`: the
untangling table (convdissect.analysis.untangle).

For conv3's raw units, fc4's units and each basis: the median top-cell share of the pattern x position
interaction, the median share in a conv3 cell, the median interaction omega², the accuracy of a linear
readout and the fit time, mean ± sd over the nets; an untrained net of the same widths per net as the
null (its raw conv3 and the probe methods on it); and whether the goal is met (a basis with at least
twice raw conv3's median top-cell share at a readout accuracy within 0.1 points of raw conv3's; the
probe methods, measured on one replicate, against raw conv3 measured on one replicate). The ratio of
the shares in a conv3 cell is printed beside it; the goal is not judged on it. Each RUN_DIR holds a
trained SimpleConvNet's model_state.pt (e.g. the prune_7iters seeds).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from convdissect.analysis.untangle import METHODS, PROBE_METHODS, RAW, Units, untangle
from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.checkpoint import load_net
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.report.untangle import position_maps_figure
from convdissect.tables.common import existing_dirs, mean_sd

GOAL_RATIO, GOAL_POINTS = 2.0, 0.1


def untangle_table(rows: dict[str, list[Units]]) -> str:
    """Markdown: per set of units, median top-cell share, median share in a conv3 cell, median
    interaction omega², readout accuracy and fit time, mean ± sd over the nets in rows {name: [Units per net]}."""
    lines = [
        "| units | nets | median top-cell share | median share in a conv3 cell | median interaction ω² "
        "| readout accuracy (%) | fit time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, per_net in rows.items():
        lines.append(
            f"| {name} | {len(per_net)} | {mean_sd([u.median_share for u in per_net])} | "
            f"{mean_sd([u.median_cell_share for u in per_net])} | "
            f"{mean_sd([float(u.interaction.nanmedian()) for u in per_net])} | "
            f"{mean_sd([u.readout_accuracy for u in per_net], 2, 100)} | "
            f"{mean_sd([u.seconds for u in per_net], 2)} |"
        )
    return "\n".join(lines)


def goal_lines(rows: dict[str, list[Units]]) -> str:
    """Per basis: its top-cell share over raw conv3's, its readout minus raw's, and the goal's verdict."""
    null_probes = [f"{method}, untrained net" for method in PROBE_METHODS]
    lines = []
    for name in [n for n in rows if n in METHODS + PROBE_METHODS] + null_probes:
        # the probe methods are measured on one replicate: so is their reference
        suffix = ", untrained net" if name in null_probes else ""
        raw = rows[RAW if name in METHODS else f"{RAW}, one replicate{suffix}"]
        ratios = [u.median_share / r.median_share for u, r in zip(rows[name], raw)]
        cell_ratios = [u.median_cell_share / r.median_cell_share for u, r in zip(rows[name], raw)]
        points = [100 * (u.readout_accuracy - r.readout_accuracy) for u, r in zip(rows[name], raw)]
        met = all(q >= GOAL_RATIO for q in ratios) and all(abs(p) <= GOAL_POINTS for p in points)
        verdict = "the null, not judged" if name in null_probes else ("met" if met else "not met")
        lines.append(
            f"{name}: top-cell share / {raw[0].name}'s = {', '.join(f'{q:.2f}' for q in ratios)}; readout - raw = "
            f"{', '.join(f'{p:+.2f}' for p in points)} points; goal (>= {GOAL_RATIO:g}x at +-{GOAL_POINTS:g} points) "
            f"{verdict}; share in a conv3 cell / raw's = {', '.join(f'{q:.2f}' for q in cell_ratios)} (not judged)"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run dirs, each holding model_state.pt")
    parser.add_argument("--n-train", type=int, default=10000, help="training images the bases are fitted on")
    parser.add_argument("--n-test", type=int, default=10000, help="test images the readout is scored on")
    parser.add_argument("--figure", type=Path, help="save the position maps of the first net here")
    parser.add_argument("--method", default="ica", help="the basis drawn in the figure")
    parser.add_argument("--data-dir", default=os.environ.get("CONVDISSECT_DATA_DIR", "data"))


def render(args: argparse.Namespace) -> str:
    nets = [load_net(run / "model_state.pt") for run in existing_dirs(args.run_dirs)]
    if args.method not in METHODS + PROBE_METHODS:
        raise UserInputError(f"--method {args.method!r}: allowed {list(METHODS + PROBE_METHODS)}")
    data = MNISTDataModule(data_dir=args.data_dir)
    train, test = data.tensors("train", args.n_train), data.tensors("test", args.n_test)
    rows: dict[str, list[Units]] = {}
    for seed, (run, net) in enumerate(zip(args.run_dirs, nets)):
        start = time.perf_counter()
        result = untangle(net, train, test, seed=seed)
        torch.manual_seed(seed)
        untrained = untangle(SimpleConvNet(net.widths), train, test, PROBE_METHODS, seed).units
        null = [units for units in untrained if units.name != "fc4"]
        for units in null:  # raw conv3 and the probe methods on an untrained net: what they reach without learning
            units.name = f"{units.name}, untrained net"
        for units in result.units + null:
            rows.setdefault(units.name, []).append(units)
        print(f"{run} (widths {net.widths}): {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if args.figure and seed == 0:
            position_maps_figure(result, args.method).savefig(args.figure, dpi=110)
            print(f"figure: {args.figure}", file=sys.stderr)
    return (
        f"{len(nets)} nets, bases fitted on {args.n_train} training images (the probe methods on one probe replicate, "
        f"measured on the other, both ways), readout scored on {args.n_test} test images\n\n"
        f"{untangle_table(rows)}\n\n{goal_lines(rows)}"
    )
