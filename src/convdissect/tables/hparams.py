"""`convdissect tables hparams RUN_DIRS... [--keys callbacks.pruning.criterion ...]`: a multirun as
TensorBoard's HParams tab shows it, read back from the runs' event files.

One row per run: the chosen hyperparameters (by default those that differ between the runs, but their
own paths) and the HParams metrics' last values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convdissect.errors import UserInputError
from convdissect.tables.common import existing_dirs
from convdissect.tensorboard_events import hparams_of, last_scalars


def _numeric_parts(path: Path) -> list[int]:
    """Job dirs 0, 1, ..., 10 in numeric order."""
    return [int(part) if part.isdigit() else 0 for part in path.parts]


def _cell(value) -> str:
    """TensorBoard stores every number as a float: a seed of 1 reads back as 1.0 and is shown as 1."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def table(roots: list[Path], keys: list[str] | None = None) -> str:
    runs = []
    for root in roots:
        for log_dir in sorted(root.rglob("tensorboard"), key=_numeric_parts):
            values, metric_tags = hparams_of(log_dir)
            if values:
                scalars = last_scalars(log_dir)
                run = log_dir.parent
                name = run.relative_to(root) if run != root else Path(root.name)
                runs.append((run, name, values, {t: scalars[t] for t in metric_tags if t in scalars}))
    if not runs:
        raise UserInputError(f"RUN_DIRS: no run with HParams under {', '.join(map(str, roots))}")
    differ = {k for _, _, v, _ in runs for k in v if len({str(r[2].get(k)) for r in runs}) > 1}
    own_dir = {k for k in differ if all(str(v.get(k, "")).startswith(str(run)) for run, _, v, _ in runs)}
    keys = keys or sorted(differ - own_dir)  # a run's own paths differ too, and say nothing
    metrics = sorted({m for _, _, _, ms in runs for m in ms})
    lines = ["| run | " + " | ".join(keys + metrics) + " |", "|---" * (1 + len(keys) + len(metrics)) + "|"]
    for _, name, values, ms in runs:
        cells = [_cell(values.get(k, "-")) for k in keys] + [f"{ms[m]:.4g}" if m in ms else "-" for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", type=Path, nargs="+", help="a multirun dir (or run dirs)")
    parser.add_argument("--keys", nargs="*", help="hyperparameters to show (default: those that differ)")


def render(args: argparse.Namespace) -> str:
    return table(existing_dirs(args.run_dirs), args.keys)
