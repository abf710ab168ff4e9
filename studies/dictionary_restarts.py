# Produced: the margin of tests/test_untangle.py's dictionary recovery (0.945-0.992 of the truth).
"""The dictionary basis on the planted mixtures of tests/test_untangle.py, over seeds.

    PYTHONPATH=. python studies/dictionary_restarts.py [--planted 6] [--fits 3]   # from the checkout root

Each planted mixture fitted by the dictionary basis with several seeds: the median top-cell share of the
recovered units as a fraction of the planted units' share.
"""

from __future__ import annotations

import argparse

from convdissect.analysis.untangle_fits import fit_basis
from convdissect.analysis.untangle_measures import top_cell_share
from tests.test_untangle import planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planted", type=int, default=6)
    parser.add_argument("--fits", type=int, default=3)
    args = parser.parse_args()
    ratios = []
    for planted_seed in range(args.planted):
        units, channel_probes, features = planted(planted_seed)
        truth = top_cell_share(units).median()
        for fit_seed in range(args.fits):
            basis = fit_basis(features, "dictionary", seed=fit_seed)
            recovered = basis(channel_probes.permute(1, 2, 3, 0))
            ratios.append(float(top_cell_share(recovered.permute(3, 0, 1, 2)).median() / truth))
            print(f"planted seed {planted_seed}, fit seed {fit_seed}: {ratios[-1]:.3f} of the truth")
    print(f"min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} fits")


if __name__ == "__main__":
    main()
