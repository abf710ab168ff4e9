"""What every table shares: finding run dirs under the dirs a user names, and mean ± sd cells."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable
from pathlib import Path

from omegaconf import OmegaConf

from convdissect.errors import UserInputError


def existing_dirs(dirs: Iterable[Path | str], what: str = "RUN_DIRS") -> list[Path]:
    """The dirs as Paths; a missing one is a one-line error."""
    paths = [Path(d) for d in dirs]
    for path in paths:
        if not path.is_dir():
            raise UserInputError(f"{what}: {path} is not a directory")
    return paths


def is_training_run(run_dir: Path) -> bool:
    """A training run's composed config has a `trainer`; a dissect run's does not."""
    return "trainer" in OmegaConf.load(run_dir / ".hydra" / "config.yaml")


def training_runs(roots: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """The run dirs under the roots (each a run or a folder of runs) holding metrics.json, and the
    training run dirs without it (the run failed or is still running), each sorted and listed once."""
    done, missing = set(), set()
    for root in roots:
        done.update(p.parent for p in root.rglob("metrics.json") if not json.loads(p.read_text()).get("debug"))
        for config_file in root.rglob(".hydra/config.yaml"):
            run_dir = config_file.parent.parent
            if not (run_dir / "metrics.json").is_file() and is_training_run(run_dir):
                missing.add(run_dir)
    return sorted(done), sorted(missing - done)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def seed_of(run_dir: Path) -> int | None:
    """The seed the run was composed with (its .hydra/config.yaml); None for a run without one (made in-process)."""
    config = run_dir / ".hydra" / "config.yaml"
    return int(OmegaConf.load(config).get("seed", 0)) if config.is_file() else None


def missing_lines(missing: list[Path]) -> str:
    """One line per training run without metrics.json: never skipped silently."""
    return "".join(f"\nno metrics.json in {run}: that run failed or is still running" for run in missing)


def mean_sd(values: Iterable[float | None], digits: int = 3, scale: float = 1.0) -> str:
    """'0.321 ± 0.047' over the values (None and NaN left out) times scale; one value has no sd; none is '-'."""
    values = [scale * v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def in_order(names: Iterable[str], order: list[str]) -> list[str]:
    """The names, those in `order` first as ordered there, the others alphabetically after them."""
    return sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name))
