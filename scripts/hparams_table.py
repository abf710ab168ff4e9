"""A multirun as TensorBoard's HParams tab shows it, read back from the runs' event files.

    python scripts/hparams_table.py MULTIRUN_DIR [--keys callbacks.pruning.criterion ...]

One row per run: the chosen hyperparameters (by default those that differ between the runs, but their own paths) and
the HParams metrics' last values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convdissect.tensorboard_events import hparams_of, last_scalars


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--keys", nargs="*", help="hyperparameters to show (default: those that differ)")
    args = parser.parse_args(argv)
    runs = []
    # job dirs 0, 1, ..., 10 in numeric order
    for log_dir in sorted(
        args.multirun_dir.rglob("tensorboard"), key=lambda p: [int(t) if t.isdigit() else 0 for t in p.parts]
    ):
        values, metric_tags = hparams_of(log_dir)
        if values:
            scalars = last_scalars(log_dir)
            runs.append((log_dir.parent, values, {t: scalars[t] for t in metric_tags if t in scalars}))
    if not runs:
        raise SystemExit(f"error: no run with HParams under {args.multirun_dir}")
    differ = {k for _, v, _ in runs for k in v if len({str(r[1].get(k)) for r in runs}) > 1}
    own_dir = {k for k in differ if all(str(v.get(k, "")).startswith(str(run)) for run, v, _ in runs)}
    keys = args.keys or sorted(differ - own_dir)  # a run's own paths differ too, and say nothing
    metrics = sorted({m for _, _, ms in runs for m in ms})
    print("| run | " + " | ".join(keys + metrics) + " |")
    print("|---" * (1 + len(keys) + len(metrics)) + "|")
    for run, values, ms in runs:
        cells = [str(values.get(k, "-")) for k in keys] + [f"{ms[m]:.4g}" if m in ms else "-" for m in metrics]
        print(f"| {run.relative_to(args.multirun_dir)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
