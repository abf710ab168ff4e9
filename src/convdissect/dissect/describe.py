"""Machine-written labels for every conv unit, with the numbers behind them (labels.json).

- conv1: the best-fitting line-family member (orientation, kind, edge side, R²) and a
  secondary orientation where the tuning curve on line probes has a second peak;
- conv2: the in channel that dominates the unit's inner contributions, its share, and whether
  the weight grid on it is a bright line along that input's orientation (a copy: the article's
  "conv2 only amplifies conv1");
- conv3: the pixel bursts of its grids on its strongest inputs, read as "pattern at clock
  position", and its position / pattern selectivity indices (eta², design.md §1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from convdissect.conventions import CENTRE, orientation_name, unit_name
from convdissect.dissect.activations import conv_layers, input_layer
from convdissect.dissect.contributions import Redundancy, contribution_strengths
from convdissect.dissect.selectivity import orientation_tuning, position_pattern, tuning_peaks
from convdissect.models.parametric import find_bursts, fit_lines

# A conv1 kernel whose line fit explains less than this share of its energy is called noisy.
NOISY_R2 = 0.5
# A conv2 grid copies its input when it is a bright line (fit R² at least COPY_MIN_R2) within
# COPY_MAX_GAP_DEG of the input's orientation. A conv2 unit whose strongest input has at least
# STRONG_SHARE of the contributions "reads" that input, else it "mixes" its inputs.
COPY_MIN_R2 = 0.4
COPY_MAX_GAP_DEG = 22.5
# A secondary orientation is a tuning peak at least this far from the fitted orientation.
SECONDARY_MIN_GAP_DEG = 30.0
# conv3: bursts are read on the inputs whose contribution is at least STRONG_SHARE of the
# strongest one's (at most MAX_INPUTS of them); a burst is kept when its score (|amplitude| x
# its input's contribution per unit of grid norm) is at least STRONG_SHARE of the strongest
# burst's, at most MAX_BURSTS per unit.
STRONG_SHARE = 0.5
MAX_INPUTS = 3
MAX_BURSTS = 3


def angle_gap(a: float, b: float) -> float:
    """Distance between two stroke orientations in degrees (period 180)."""
    gap = abs(a - b) % 180.0
    return min(gap, 180.0 - gap)


def _number(value, digits: int = 4):
    """A JSON-safe rounded float; NaN becomes null."""
    value = float(value)
    return None if math.isnan(value) else round(value, digits)


def _at(clock: str) -> str:
    """'12:00' -> 'at 12 o'clock', '7:30' -> 'at 7:30', centre -> 'at the centre'."""
    if clock == CENTRE:
        return "at the centre"
    return f"at {clock[:-3]} o'clock" if clock.endswith(":00") else f"at {clock}"


def describe_conv1(net: nn.Module) -> list[dict]:
    fit = fit_lines(net.conv1.weight.detach()[:, 0])
    tuning = orientation_tuning(net, ["conv1"])
    units = []
    for i, label in enumerate(fit.labels()):
        theta = float(fit.theta_deg[i])
        peaks = tuning_peaks(tuning.responses["conv1"][:, i], tuning.angles_deg, min_gap_deg=SECONDARY_MIN_GAP_DEG)
        others = [p for p in peaks if angle_gap(p, theta) >= SECONDARY_MIN_GAP_DEG]
        secondary = others[0] if len(peaks) > 1 and others else None
        text = label if fit.r2[i] >= NOISY_R2 else f"noisy; closest: {label}"
        if secondary is not None:
            text += f", secondary {orientation_name(secondary)}"
        units.append({
            "layer": "conv1", "index": i + 1, "name": unit_name("conv1", i + 1), "label": text, "pattern": label,
            "orientation_deg": round(theta, 2), "kind": fit.kind[i], "side": fit.side[i],
            "fit_r2": _number(fit.r2[i]), "secondary_orientation_deg": secondary,
        })  # fmt: skip
    return units


def describe_conv2(net: nn.Module, red: Redundancy, conv1_units: list[dict]) -> list[dict]:
    weight = net.conv2.weight.detach()
    dominant = red.dominant.tolist()
    grid_fit = fit_lines(weight[torch.arange(len(dominant)), red.dominant.cpu()])
    grid_labels = grid_fit.labels()
    units = []
    for k, j in enumerate(dominant):
        source = conv1_units[j]
        copies = (
            grid_fit.kind[k] == "line"
            and float(grid_fit.amplitude[k]) > 0
            and float(grid_fit.r2[k]) >= COPY_MIN_R2
            and angle_gap(float(grid_fit.theta_deg[k]), source["orientation_deg"]) <= COPY_MAX_GAP_DEG
        )
        share = float(red.share[k])
        if copies:
            label = f"amplifies {source['name']} ({source['pattern']})"
        elif share >= STRONG_SHARE:
            label = f"reads {source['name']} ({source['pattern']}) through a {grid_labels[k]} grid ({share:.0%})"
        else:
            label = f"mixes conv1, strongest {source['name']} ({source['pattern']}, {share:.0%})"
        units.append({
            "layer": "conv2", "index": k + 1, "name": unit_name("conv2", k + 1), "label": label,
            "pattern": source["pattern"] if copies else unit_name("conv2", k + 1),
            "dominant_input": source["name"], "dominant_share": _number(share), "copies_input": copies,
            "grid_orientation_deg": _number(grid_fit.theta_deg[k], 2), "grid_kind": grid_fit.kind[k],
            "grid_fit_r2": _number(grid_fit.r2[k]),
        })  # fmt: skip
    return units


def describe_conv3(net: nn.Module, images: torch.Tensor, input_units: list[dict]) -> list[dict]:
    strengths = contribution_strengths(net, "conv3", images).cpu()
    weight = net.conv3.weight.detach().cpu()
    units = []
    for k, row in enumerate(strengths):
        order = row.argsort(descending=True)[:MAX_INPUTS].tolist()
        inputs = [j for j in order if row[j] > 0 and row[j] >= STRONG_SHARE * row.max()]
        found = []  # (score, input j, burst)
        for j in inputs:
            per_unit_norm = float(row[j]) / max(float(weight[k, j].norm()), 1e-12)
            found += [(abs(b.amplitude) * per_unit_norm, j, b) for b in find_bursts(weight[k, j])]
        found.sort(key=lambda item: -item[0])
        kept = [item for item in found if item[0] >= STRONG_SHARE * found[0][0]][:MAX_BURSTS] if found else []
        bursts, phrases = [], []
        for _, j, burst in kept:
            source = input_units[j]
            sign = "+" if burst.sign > 0 else "-"
            bursts.append({
                "sign": sign, "clock": burst.clock, "distance": _number(burst.distance, 3),
                "input": source["name"], "input_label": source["label"], "notation": str(burst),
                "amplitude": _number(burst.amplitude),
            })  # fmt: skip
            phrases.append(f"{'' if not phrases and sign == '+' else sign + ' '}{source['pattern']} {_at(burst.clock)}")
        label = " ".join(phrases)
        units.append({
            "layer": "conv3", "index": k + 1, "name": unit_name("conv3", k + 1),
            "label": label or "silent on the images", "bursts": bursts,
        })  # fmt: skip
    return units


def add_position_pattern(net: nn.Module, layer: str, units: list[dict]) -> None:
    """Add position_index and pattern_index (eta² shares on the stroke sweep) to a layer's entries."""
    pp = position_pattern(net, layer)
    for unit, pos, pat in zip(units, pp.position_index, pp.pattern_index):
        unit["position_index"], unit["pattern_index"] = _number(pos), _number(pat)


def describe(net: nn.Module, images: torch.Tensor, conv2_redundancy: Redundancy | None) -> dict:
    """labels.json's content for a SimpleConvNet; images are normalised MNIST inputs [N, 1, 28, 28]
    (the inner contributions are measured on them); conv2_redundancy is conv2's, measured on the
    same images by the caller, which the report reuses (None without conv2)."""
    images = images.to(next(net.parameters()).device)
    units = {"conv1": describe_conv1(net)}
    if "conv2" in conv_layers(net):
        units["conv2"] = describe_conv2(net, conv2_redundancy, units["conv1"])
    units["conv3"] = describe_conv3(net, images, units[input_layer(net, "conv3")])
    for layer, entries in units.items():
        add_position_pattern(net, layer, entries)
    return {"net": "simple_convnet", "widths": list(net.widths), "units": [u for entries in units.values() for u in entries]}


def write_labels(labels: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n")
    return path
