"""The article's claims about one net as statistics, each next to its nulls, and the one verdict
rule (docs/measures.md, "Claims and verdicts").

`claim_statistics` turns a net's Measurements (plus those of untrained nets of the same widths,
the reference grids and the top-k ablation) into {statistic: record}; dissect writes them to
claims.json. `verdict` judges a statistic over one or more seeds; convdissect.tables.results prints them per net.
"""

from __future__ import annotations

import math
import statistics as stats
from dataclasses import dataclass

import torch

from convdissect.analysis.ablation import ABLATION_KS
from convdissect.analysis.fits import fit_lines, grid_statistics, reference_grids
from convdissect.analysis.selectivity import tuning_depth
from convdissect.dissect.labels import COPY_MAX_GAP_DEG, UNORIENTED_DEPTH, copies_driver
from convdissect.dissect.measure import Measurements
from convdissect.errors import UserInputError

CLAIMS = {
    1: "conv1 holds line detectors",
    2: "conv2 copies (amplifies) one conv1 channel each",
    3: "conv2 grids are smooth strokes, conv3 grids are pixel bursts",
    4: "conv3 selects a pattern at a position",
}
# A conv1 kernel is a line detector when a line or edge fits it with at least this R².
LINE_R2 = 0.5
# The interval of a difference the verdict rule asks to exclude 0, and its normal quantile: at 95%
# one untrained net in 20 beat a noise reference (studies/null_calibration.py); at 99% the
# measured rate is in docs/measures.md.
INTERVAL = 0.99
INTERVAL_Z = 2.576
# An ablated accuracy's nulls spread at least this much: an untrained net predicts one class or
# nearly, at 8.7-18.9% on the test images (48 untrained nets of 8/16/24/16), so 8 draws' sd
# understates the tail; a trained pruned net's top-k accuracies sit 35 points and more above them.
ACCURACY_SPREAD_FLOOR = 0.10
# The article's claims are about the pruned 8/16/24/16 net: its row comes first.
PRIMARY_NET = "prune_7iters"


@dataclass(frozen=True)
class Statistic:
    claim: int
    name: str
    what: str
    holds_null: str  # the null "holds" is judged against: chance | reference | shuffled | random_inputs
    direction: int = 1  # +1: the claim says larger than the null; -1: smaller
    average: str = "median"  # how the per-unit samples become the statistic: median | mean


STATISTICS = {
    s.name: s
    for s in [
        Statistic(
            1,
            "conv1_line_fraction",
            f"share of conv1 kernels fitted by a line/edge with R² ≥ {LINE_R2}",
            "reference",
            average="mean",
        ),
        Statistic(2, "conv2_top_share", "median share of a conv2 channel's drive carried by its main driver", "chance"),
        Statistic(
            2,
            "conv2_copy_fraction",
            f"share of conv2 channels whose grid on the main driver is a bright line of its orientation (±{COPY_MAX_GAP_DEG}°)",
            "shuffled",
            average="mean",
        ),
        Statistic(
            2,
            "conv2_tuning_corr",
            "median correlation of a conv2 channel's orientation tuning with its main driver's",
            "shuffled",
        ),
        *[
            Statistic(
                2,
                f"ablation_top{k}",
                f"test accuracy keeping only each conv2 channel's top-{k} driver(s)",
                "random_inputs",
                average="mean",
            )
            for k in ABLATION_KS
        ],
        Statistic(3, "conv2_neighbour_corr", "median neighbour correlation of conv2's strongest grids", "reference"),
        Statistic(
            3,
            "conv2_burst_like",
            "share of conv2's strongest grids that bursts fit better than a line",
            "reference",
            -1,
            "mean",
        ),
        Statistic(
            3,
            "conv3_burst_like",
            "share of conv3's strongest grids that bursts fit better than a line",
            "reference",
            average="mean",
        ),
        Statistic(4, "conv3_position_omega2", "median ω² of position over conv3 channels", "chance"),
        Statistic(4, "conv3_interaction_omega2", "median ω² of pattern × position over conv3 channels", "chance"),
        Statistic(4, "conv3_position_minus_pattern", "median ω²(position) - ω²(pattern) over conv3 channels", "chance"),
    ]
}


def check_claim_settings(settings) -> None:
    """cfg.claims: known statistic names, null settings in range (one line each)."""
    names = settings.statistics
    if names != "all":
        unknown = [n for n in names if n not in STATISTICS]
        if unknown:
            raise UserInputError(
                f"claims.statistics: {unknown} unknown; allowed 'all' or a list of {sorted(STATISTICS)}"
            )
    for key, low, high in (
        ("untrained_seeds", 2, 20),
        ("bootstrap", 100, 100_000),
        ("reference_grids", 50, 10_000),
        ("shuffles", 10, 10_000),
        ("ablation_draws", 2, 100),
    ):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserInputError(f"claims.{key}={value!r}: must be an integer in {low}..{high}")


# ---------------------------------------------------------------------------- per-unit samples


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else float("nan")


def copies(m: Measurements, drivers: torch.Tensor) -> list[float]:
    """1.0 per live conv2 channel whose grid on its main driver is a bright line with the orientation
    of `drivers` (the labels' copies_input when `drivers` are the main drivers)."""
    live = m.driver >= 0
    return [float(copies_driver(m, k, j)) for k, j in enumerate(drivers.tolist()) if live[k]]


def tuning_corrs(m: Measurements, drivers: torch.Tensor) -> list[float]:
    """Per live conv2 channel, the correlation of its orientation tuning with that of `drivers`."""
    conv1, conv2 = m.tuning.responses["conv1"], m.tuning.responses["conv2"]
    values = [_pearson(conv2[:, k], conv1[:, j]) for k, j in enumerate(drivers.tolist()) if m.driver[k] >= 0]
    return [v for v in values if not math.isnan(v)]


def unit_samples(m: Measurements, name: str) -> list[float] | None:
    """The per-unit values whose average is the statistic `name`; None where the net lacks the layer."""
    if name.startswith("conv2") and "conv2" not in m.layers:
        return None
    if name == "conv1_line_fraction":
        oriented = tuning_depth(m.tuning.responses["conv1"]) >= UNORIENTED_DEPTH
        return ((m.conv1_fit.r2 >= LINE_R2) & oriented).float().tolist()
    if name == "conv2_top_share":
        drive = m.contributions["conv2"].drive
        return drive.amax(dim=1)[drive.amax(dim=1) > 0].tolist()
    if name == "conv2_copy_fraction":
        return copies(m, m.driver)
    if name == "conv2_tuning_corr":
        return tuning_corrs(m, m.driver)
    if name.endswith("_neighbour_corr"):
        return m.grids[name.split("_")[0]].neighbour_corr.tolist()
    if name.endswith("_burst_like"):
        return m.grids[name.split("_")[0]].burst_like.float().tolist()
    pp = m.position_pattern["conv3"]
    values = {
        "conv3_position_omega2": pp.position_index,
        "conv3_interaction_omega2": pp.interaction_index,
        "conv3_position_minus_pattern": pp.position_index - pp.pattern_index,
    }[name]
    return [v for v in values.tolist() if not math.isnan(v)]


def average(samples: list[float], how: str) -> float:
    if not samples:
        return float("nan")
    return float(stats.median(samples)) if how == "median" else float(stats.fmean(samples))


# ---------------------------------------------------------------------------- nulls


# Noise grids a structure must beat: Gaussian, and uniform like PyTorch's init (an untrained net's grids).
NOISE_FAMILIES = ("noise", "uniform_noise")


def reference_samples(spec: Statistic, n_grids: int, seed: int) -> list[float]:
    """The statistic's per-grid values on the noise family closest to the claim (the harder
    reference to beat), so that neither kind of noise passes as structure."""
    grids = reference_grids(n_grids, seed=seed)
    per_family = [_grid_values(spec.name, grids[family]) for family in NOISE_FAMILIES]
    return max(per_family, key=lambda values: spec.direction * average(values, spec.average))


def _grid_values(name: str, grids: torch.Tensor) -> list[float]:
    if name == "conv1_line_fraction":
        return (fit_lines(grids).r2 >= LINE_R2).float().tolist()
    grid = grid_statistics(grids)
    return (grid.neighbour_corr if name.endswith("_neighbour_corr") else grid.burst_like.float()).tolist()


def shuffled_samples(m: Measurements, name: str, shuffles: int, seed: int) -> list[list[float]]:
    """The statistic's per-unit values with the conv2 channels' drivers permuted, once per shuffle."""
    g = torch.Generator().manual_seed(seed)
    measure = copies if name == "conv2_copy_fraction" else tuning_corrs
    return [measure(m, m.driver[torch.randperm(len(m.driver), generator=g)].clamp_min(0)) for _ in range(shuffles)]


# ---------------------------------------------------------------------------- one net's statistics


def _sd(values: list[float]) -> float:
    return stats.stdev(values) if len(values) > 1 else 0.0


# A null's own spread is this many sd of its draws: 2, or 3 with fewer than FEW_DRAWS draws
# (few untrained inits or random-input draws give a poor sd).
FEW_DRAWS = 10


def _null(values: list[float], samples: list[float] | None = None) -> dict:
    """A null from its draws (one value for chance or a reference): its mean and its spread."""
    spread = (2 if len(values) >= FEW_DRAWS else 3) * _sd(values)
    return {"value": stats.fmean(values), "spread": spread, "draws": len(values), "samples": samples}


def bootstrap_interval(
    samples: list[float], null_samples: list[float] | None, null_value: float, how: str, n: int, seed: int
) -> tuple[float, float]:
    """INTERVAL interval of statistic(samples) - statistic(null_samples) (or - null_value), both resampled with replacement."""
    g = torch.Generator().manual_seed(seed)
    x = torch.tensor(samples, dtype=torch.float64)
    diffs = _resampled(x, how, n, g)
    if null_samples:
        diffs = diffs - _resampled(torch.tensor(null_samples, dtype=torch.float64), how, n, g)
    else:
        diffs = diffs - null_value
    tail = (1 - INTERVAL) / 2
    low, high = torch.quantile(diffs, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return low, high


def _resampled(x: torch.Tensor, how: str, n: int, g: torch.Generator) -> torch.Tensor:
    picks = x[torch.randint(len(x), (n, len(x)), generator=g)]
    return picks.median(dim=1).values if how == "median" else picks.mean(dim=1)


def claim_statistics(
    m: Measurements,
    untrained: list[Measurements],
    settings,
    seed: int = 0,
    ablated: dict | None = None,
    ablated_untrained: list[dict] | None = None,
) -> dict[str, dict]:
    """{statistic: {"value", "claim", "what", "nulls": {name: {"value", "spread"}}, "holds", "learned"}}
    for every statistic of settings.statistics the net has. `holds` and `learned` are the
    one-seed verdicts of `verdict`; results_table applies the same rule over seeds."""
    names = list(STATISTICS) if settings.statistics == "all" else list(settings.statistics)
    out = {}
    for name in names:
        spec = STATISTICS[name]
        if name.startswith("ablation"):
            record = _ablation_record(spec, ablated, ablated_untrained)
        else:
            record = _unit_record(spec, m, untrained, settings, seed)
        if record is not None:
            out[name] = record
    return out


def _unit_record(spec: Statistic, m: Measurements, untrained: list[Measurements], settings, seed: int) -> dict | None:
    samples = unit_samples(m, spec.name)
    if not samples:
        return None
    how = spec.average
    if spec.holds_null == "chance":
        chance = 1.0 / m.widths[0] if spec.name == "conv2_top_share" else 0.0
        holds = _null([chance])
    elif spec.holds_null == "reference":
        ref = reference_samples(spec, settings.reference_grids, seed)
        holds = _null([average(ref, how)], ref)
    else:  # shuffled
        draws = shuffled_samples(m, spec.name, settings.shuffles, seed)
        values = [average(d, how) for d in draws if d]
        holds = _null(values, [v for d in draws for v in d])
    per_init = [s for s in (unit_samples(u, spec.name) for u in untrained) if s]
    values = [average(s, how) for s in per_init]
    learned = _null(values, [v for s in per_init for v in s])
    value = average(samples, how)
    record = {
        "claim": spec.claim,
        "what": spec.what,
        "value": value,
        "n_units": len(samples),
        "nulls": {spec.holds_null: holds, "untrained": learned},
    }
    for part, null in (("holds", holds), ("learned", learned)):
        interval = bootstrap_interval(samples, null["samples"], null["value"], how, settings.bootstrap, seed)
        null["interval"] = interval
        record[part] = verdict([value], [null["value"]], spec.direction, [interval], [null["spread"]])
    for null in record["nulls"].values():
        del null["samples"]
    return record


def _ablation_record(spec: Statistic, ablated: dict | None, ablated_untrained: list[dict] | None) -> dict | None:
    k = spec.name.removeprefix("ablation_top")
    if not ablated or f"top{k}" not in ablated:
        return None
    randoms = ablated[f"random{k}"]
    untrained = [a[f"top{k}"] for a in ablated_untrained or []]
    value = ablated[f"top{k}"]
    record = {
        "claim": spec.claim,
        "what": spec.what,
        "value": value,
        "full_net": ablated["full"],
        "nulls": {"random_inputs": _null(randoms), "untrained": _null(untrained)},
    }
    for part, null in zip(("holds", "learned"), record["nulls"].values()):
        null["spread"] = max(null["spread"], ACCURACY_SPREAD_FLOOR)
        # the binomial sampling error of two accuracies on n test images, as an INTERVAL interval
        p, q, n = value, null["value"], ablated["n_images"]
        half = INTERVAL_Z * math.sqrt((p * (1 - p) + q * (1 - q)) / n)
        null["interval"] = (p - q - half, p - q + half)
        record[part] = verdict([value], [q], 1, [null["interval"]], [null["spread"]])
        del null["samples"]
    return record


# ---------------------------------------------------------------------------- the verdict rule


def verdict(
    values: list[float],
    nulls: list[float],
    direction: int = 1,
    intervals: list[tuple[float, float]] | None = None,
    null_spreads: list[float] | None = None,
) -> str:
    """The one verdict rule (docs/measures.md). values and nulls: the statistic and its null, one
    per seed. The difference d = mean(values - nulls), signed so that the claim says d > 0, must
    exceed the spread: the largest of 2 sd over seeds of the values and of the nulls, the null's
    own spread (`_null`: 2 sd of its draws of untrained inits, shuffles or random inputs; 3 sd
    with fewer than 10 draws) and the half-width of the 99% interval of the difference
    (bootstrap over units, or binomial for an accuracy). Returns "supported" (d > spread),
    "reversed" (d < -spread) or "not supported"."""
    if not values or any(math.isnan(v) for v in values + nulls):
        return "not measured"
    d = direction * stats.fmean(v - n for v, n in zip(values, nulls))
    spreads = [2 * _sd(values), 2 * _sd(nulls)]
    spreads += list(null_spreads or [])
    spreads += [(high - low) / 2 for low, high in intervals or []]
    spread = max(spreads)
    if d > spread and d > 0:
        return "supported"
    if d < -spread:
        return "reversed"
    return "not supported"


def seed_verdicts(records: list[dict], name: str) -> dict[str, str]:
    """holds/learned verdicts of one statistic over the seeds' claims.json records."""
    spec = STATISTICS[name]
    values = [r["value"] for r in records]
    out = {}
    for part, null_name in (("holds", spec.holds_null), ("learned", "untrained")):
        nulls = [r["nulls"][null_name] for r in records]
        intervals = [tuple(n["interval"]) for n in nulls if n.get("interval")]
        out[part] = verdict(
            values, [n["value"] for n in nulls], spec.direction, intervals, [n["spread"] for n in nulls]
        )
    return out
