# Produced: docs/results/null_calibration.json and null_calibration_before_floor.json, the tables of docs/measures.md ("How often an untrained net is called learned").
"""Untrained nets dissected as if trained: how often a claim's verdicts come out "learned".

    python studies/null_calibration.py [--nets 100] [--first 0] [--widths 8,16,24,16] [--images 1000] [--ablation-only]

Each of --nets untrained SimpleConvNets is dissected as if it were a trained net: its claim
statistics, the top-k ablations included, are judged by dissect's own verdict rule against
dissect's own nulls (claims.untrained_seeds further untrained nets, the reference grids, the
shuffles, the random-input draws). Printed per statistic: how often "learned" came out supported
and reversed, how often "holds" came out supported against a reference (noise grids: an
untrained net's grids are noise, so that should not happen either), and how often any statistic
of a net was "learned: supported".
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from convdissect.analysis.ablation import ablation
from convdissect.analysis.contributions import SignedContributions, signed_contributions
from convdissect.config import CONFIG_DIR
from convdissect.data.mnist import MNISTDataModule
from convdissect.dissect.claims import STATISTICS, claim_statistics
from convdissect.dissect.measure import Measurements, measure
from convdissect.dissection import UNTRAINED_SEED_BASE, untrained_like
from convdissect.models.simple_convnet import SimpleConvNet

# The nets judged here are far from dissect's own null seeds (UNTRAINED_SEED_BASE + i).
JUDGED_SEED_BASE = 50_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", type=int, default=100)
    parser.add_argument("--first", type=int, default=0, help="the first judged net (to split the nets over processes)")
    parser.add_argument("--widths", default="8,16,24,16")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--ablation-only", action="store_true", help="judge the ablations alone (no measure: fast)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="dissect")
    settings = cfg.claims
    data = MNISTDataModule(data_dir=os.environ.get("CONVDISSECT_DATA_DIR", "data"))
    images, _ = data.tensors(cfg.split, args.images)
    scored, _ = data.tensors("test", cfg.fidelity.images)
    test_images, test_digits = data.tensors("test", settings.ablation_images)
    widths = [int(w) for w in args.widths.split(",")]
    template = SimpleConvNet(widths)
    names = [n for n in STATISTICS if n.startswith("ablation") or not args.ablation_only]
    with open_dict(settings):
        settings.statistics = names

    def measured(net) -> tuple[Measurements | None, SignedContributions]:
        """The claims read no labels; the ablations alone read conv2's contributions."""
        if args.ablation_only:
            return None, signed_contributions(net, "conv2", images)
        m = measure(net, images, False, scored, programs=False)
        return m, m.contributions["conv2"]

    null_nets = [untrained_like(template, UNTRAINED_SEED_BASE + i) for i in range(settings.untrained_seeds)]
    nulls = [measured(u) for u in null_nets]
    ablated_nulls = [ablation(u, c, test_images, test_digits, 0, cfg.seed) for u, (_, c) in zip(null_nets, nulls)]
    nulls = [m for m, _ in nulls]
    learned = {name: Counter() for name in names}
    holds = {name: Counter() for name in names}
    any_learned = 0
    start = time.perf_counter()
    for n in range(args.first, args.first + args.nets):
        net = untrained_like(template, JUDGED_SEED_BASE + n)
        m, contributions = measured(net)
        ablated = ablation(net, contributions, test_images, test_digits, settings.ablation_draws, n)
        claims = claim_statistics(m, nulls, settings, seed=n, ablated=ablated, ablated_untrained=ablated_nulls)
        for name, record in claims.items():
            learned[name][record["learned"]] += 1
            holds[name][record["holds"]] += 1
        any_learned += any(r["learned"] == "supported" for r in claims.values())
        flagged = [f"{name} learned {r['learned']}" for name, r in claims.items() if r["learned"] != "not supported"]
        flagged += [f"{name} holds" for name, r in claims.items() if r["holds"] == "supported"]
        print(f"net {n}: {'; '.join(flagged) or 'nothing'}", flush=True)
    seconds = (time.perf_counter() - start) / args.nets
    print(f"{args.nets} untrained nets {widths}, each against {len(nulls)} untrained nulls ({seconds:.1f} s a net)")
    print("| statistic | learned: supported | learned: reversed | holds: supported (its null) |")
    print("|---|---|---|---|")
    for name in names:
        spec, c, h = STATISTICS[name], learned[name], holds[name]
        print(
            f"| {name} | {c['supported']}/{args.nets} | {c['reversed']}/{args.nets} | {h['supported']}/{args.nets} ({spec.holds_null}) |"
        )
    print(f"| any statistic | {any_learned}/{args.nets} | | |")


if __name__ == "__main__":
    main()
