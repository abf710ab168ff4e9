# Produced: docs/results/reference_grids.json, the reference grids' table of docs/measures.md ("Claim 3: grid statistics, bursts vs strokes").
"""The burst-vs-stroke statistics and the line fit on the planted reference grids (the table in
docs/measures.md, "Grid statistics"): medians per family and the share called burst-like.

    python studies/reference_statistics.py [--n 200] [--seed 0]
"""

from __future__ import annotations

import argparse

from convdissect.analysis.fits import BURST_CUTOFF, fit_lines, grid_statistics, reference_grids
from convdissect.dissect.claims import LINE_R2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="grids per family")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"| family | kurtosis | two-burst R² | line R² | burst minus line | burst-like (> {BURST_CUTOFF}) "
        f"| neighbour corr. | line fit R² ≥ {LINE_R2} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family, grids in reference_grids(args.n, seed=args.seed).items():
        s = grid_statistics(grids)
        refined = fit_lines(grids).r2
        print(
            f"| {family} | {s.kurtosis.median():.2f} | {s.burst_r2.median():.2f} | {s.line_r2.median():.2f} "
            f"| {s.burst_minus_line.median():+.2f} | {s.burst_like.float().mean():.3f} | {s.neighbour_corr.median():+.2f} "
            f"| {(refined >= LINE_R2).float().mean():.3f} |"
        )


if __name__ == "__main__":
    main()
