# Produced: docs/article_method.md: rho(10, 128 steps) = 0.24-0.48 and rho(64, 128) >= 0.90 per layer on the trained baseline.
"""How many ascent steps superstimulus_contrast needs to rank a layer's channels stably: the
Spearman rank correlation of its per-channel scores between 10, 32 and 64 steps, per prunable layer.

    python studies/superstimulus_steps.py RUN_DIR [--steps 10 32 64]

RUN_DIR holds a trained net's model_state.pt (the net the first pruning step scores: a trained
baseline). Next to it, the same correlations on an untrained net of the same widths.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import torch

from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.checkpoint import load_net
from convdissect.models.prunable import producer_consumer_table
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.pruning.criteria import Calibration, superstimulus_contrast


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (x.argsort().argsort().double() for x in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def step_table(net, images: torch.Tensor, labels: torch.Tensor, steps: list[int]) -> list[str]:
    net.eval()
    table = producer_consumer_table(net)
    cal = Calibration(net, table, images, labels, torch.Generator())
    pairs = list(itertools.combinations(steps, 2))
    rows = [
        "| layer | channels | "
        + " | ".join(f"ρ({a}, {b})" for a, b in pairs)
        + " | seconds at "
        + ", ".join(map(str, steps))
        + " |",
        "|---" * (3 + len(pairs)) + "|",
    ]
    for layer in table:
        scores, seconds = {}, []
        for n in steps:
            start = time.perf_counter()
            scores[n] = superstimulus_contrast(cal, layer, steps=n)
            seconds.append(time.perf_counter() - start)
        rhos = [spearman(scores[a], scores[b]) for a, b in pairs]
        rows.append(
            f"| {layer} | {len(scores[steps[0]])} | "
            + " | ".join(f"{r:.3f}" for r in rhos)
            + " | "
            + ", ".join(f"{s:.1f}" for s in seconds)
            + " |"
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 32, 64, 128])
    parser.add_argument("--data-dir", default=os.environ.get("CONVDISSECT_DATA_DIR", "data"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    try:
        net = load_net(args.run_dir / "model_state.pt")
    except UserInputError as err:
        sys.exit(f"error: {err}")
    print(f"trained net {args.run_dir} (widths {net.widths}):")
    # the pruning callback's calibration images: the first calibration_size validation images
    images, labels = MNISTDataModule(data_dir=args.data_dir).tensors("val", 1000)
    print("\n".join(step_table(net, images, labels, args.steps)))
    print("\nuntrained net, same widths (seed 0):")
    print("\n".join(step_table(SimpleConvNet(net.widths), images, labels, args.steps)))


if __name__ == "__main__":
    main()
