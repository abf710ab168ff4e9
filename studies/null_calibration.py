# Produced: the null-calibration rates in the closing note of issue 23 (0/40 "learned" per statistic).
"""Untrained nets dissected as if trained: how often a claim's "learned" verdict comes out.

    python studies/null_calibration.py [--nets 100] [--widths 8,16,24,16] [--images 1000]

Each of --nets untrained SimpleConvNets is dissected as if it were a trained net: its claim
statistics are judged by dissect's own verdict rule against dissect's own nulls (claims.untrained_seeds
further untrained nets, the reference grids, the shuffles; the ablation statistics are left out: they
need test passes per net). Printed per statistic: how often "learned" came out supported and reversed,
and how often any statistic of a net did. A verdict rule that never mistakes init for learning gives 0.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import torch
from hydra import compose, initialize_config_dir

from convdissect.config import CONFIG_DIR
from convdissect.data.mnist import MNISTDataModule
from convdissect.dissect.claims import STATISTICS, claim_statistics
from convdissect.dissect.measure import measure
from convdissect.dissect.run import UNTRAINED_SEED_BASE, untrained_like
from convdissect.models.simple_convnet import SimpleConvNet

# The nets judged here are far from dissect's own null seeds (UNTRAINED_SEED_BASE + i).
JUDGED_SEED_BASE = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=100)
    parser.add_argument("--widths", default="8,16,24,16")
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="dissect")
    settings = cfg.claims
    data = MNISTDataModule(data_dir=os.environ.get("CONVDISSECT_DATA_DIR", "data"))
    images, _ = data.tensors(cfg.split, args.images)
    scored, _ = data.tensors("test", cfg.fidelity.images)
    widths = [int(w) for w in args.widths.split(",")]
    template = SimpleConvNet(widths)
    nulls = [measure(untrained_like(template, UNTRAINED_SEED_BASE + i), images, False, scored) for i in range(8)]
    counts: dict[str, Counter] = {name: Counter() for name in STATISTICS if not name.startswith("ablation")}
    any_learned = 0
    for n in range(args.nets):
        net = untrained_like(template, JUDGED_SEED_BASE + n)
        claims = claim_statistics(measure(net, images, scored_images=scored), nulls, settings, seed=n)
        for name, record in claims.items():
            counts[name][record["learned"]] += 1
        any_learned += any(r["learned"] == "supported" for r in claims.values())
    print(f"{args.nets} untrained nets {widths}, each against {len(nulls)} untrained nulls")
    print("| statistic | learned: supported | reversed |\n|---|---|---|")
    for name, c in counts.items():
        print(f"| {name} | {c['supported']}/{args.nets} | {c['reversed']}/{args.nets} |")
    print(f"| any statistic | {any_learned}/{args.nets} | |")


if __name__ == "__main__":
    main()
