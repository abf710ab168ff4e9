"""Machine-written labels for every conv unit, with the numbers behind them (labels.json), read
from one Measurements object (docs/measures.md says what each number is).

- conv1: the best-fitting line-family member (orientation, kind, edge side, R²) and a
  secondary orientation where the tuning curve on line probes has a second peak;
- conv2: its main driver(s) with their share of the drive and its strongest inhibitor(s)
  (signed, background-corrected contributions), and whether the grid on the main driver is
  a bright line along that input's orientation (a copy: the article's "conv2 only amplifies conv1");
- conv3: the same drivers and inhibitors, the pixel bursts of its grids on its main drivers, read
  as "pattern at clock position", and its omega² of position, pattern and their interaction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from torch import nn

from convdissect.analysis.fits import find_bursts
from convdissect.analysis.selectivity import tuning_peaks
from convdissect.conventions import CENTRE, angle_gap, orientation_name, unit_name
from convdissect.dissect.measure import Measurements, source_layer

# A conv1 kernel whose line fit explains less than this share of its energy is called noisy.
NOISY_R2 = 0.5
# A conv2 grid copies its main driver when it is a bright line (fit R² at least COPY_MIN_R2)
# within COPY_MAX_GAP_DEG of the driver's orientation.
COPY_MIN_R2 = 0.4
COPY_MAX_GAP_DEG = 22.5
# A secondary orientation is a tuning peak at least this far from the fitted orientation.
SECONDARY_MIN_GAP_DEG = 30.0
# Labels name the drivers down to this share of the drive (at most MAX_NAMED), and the inhibitors
# down to this share of the inhibition; labels.json lists them all.
NAMED_SHARE = 0.25
MAX_NAMED = 2
# conv3: bursts are read on the grids of its named drivers; a burst is kept when its score
# (|amplitude| x its input's drive share per unit of grid norm) is at least BURST_SHARE of the
# strongest burst's, at most MAX_BURSTS per unit.
BURST_SHARE = 0.5
MAX_BURSTS = 3


def _number(value, digits: int = 4):
    """A JSON-safe rounded float; NaN becomes null."""
    value = float(value)
    return None if math.isnan(value) else round(value, digits)


def _at(clock: str) -> str:
    """'12:00' -> 'at 12 o'clock', '7:30' -> 'at 7:30', centre -> 'at the centre'."""
    if clock == CENTRE:
        return "at the centre"
    return f"at {clock[:-3]} o'clock" if clock.endswith(":00") else f"at {clock}"


def describe_conv1(m: Measurements) -> list[dict]:
    fit, tuning = m.conv1_fit, m.tuning
    units = []
    for i, label in enumerate(fit.labels()):
        theta = float(fit.theta_deg[i])
        peaks = tuning_peaks(tuning.responses["conv1"][:, i], tuning.angles_deg, min_gap_deg=SECONDARY_MIN_GAP_DEG)
        others = [p for p in peaks if angle_gap(p, theta) >= SECONDARY_MIN_GAP_DEG]
        secondary = others[0] if len(peaks) > 1 and others else None
        text = label if fit.r2[i] >= NOISY_R2 else f"noisy; closest: {label}"
        if secondary is not None:
            text += f", secondary {orientation_name(secondary)}"
        units.append(
            {
                "layer": "conv1",
                "index": i + 1,
                "name": unit_name("conv1", i + 1),
                "label": text,
                "pattern": label,
                "orientation_deg": round(theta, 2),
                "kind": fit.kind[i],
                "side": fit.side[i],
                "fit_r2": _number(fit.r2[i]),
                "secondary_orientation_deg": secondary,
            }
        )
    return units


def drivers_and_inhibitors(m: Measurements, layer: str, k: int) -> tuple[list[dict], list[dict]]:
    """labels.json's `drivers` and `inhibitors` of out channel k: every input with its share, strongest first."""
    source = source_layer(m, layer)
    contributions = m.contributions[layer]
    return tuple(
        [{"input": unit_name(source, j + 1), "share": _number(share, 3)} for j, share in ranked]
        for ranked in (contributions.drivers(k), contributions.inhibitors(k))
    )


def named(entries: list[dict]) -> list[dict]:
    """The entries a label names: the strongest, then the others down to NAMED_SHARE, at most MAX_NAMED."""
    return [e for i, e in enumerate(entries[:MAX_NAMED]) if i == 0 or e["share"] >= NAMED_SHARE]


def signed_phrase(drivers: list[dict], inhibitors: list[dict], patterns: dict[str, str], through: str = "") -> str:
    """'conv1_4 (vertical line, 62% of its drive) + conv1_2 (30%), inhibited by conv1_7'; `through`
    follows the main driver (e.g. 'through a dark line grid')."""
    if not drivers:
        return "silent on the images"
    parts = []
    for i, d in enumerate(named(drivers)):
        what = f"{patterns[d['input']]}, " if patterns.get(d["input"]) else ""
        parts.append(
            f"{d['input']} ({what}{d['share']:.0%}{' of its drive' if i == 0 else ''})"
            + (f" {through}" if i == 0 and through else "")
        )
    text = " + ".join(parts)
    if inhibitors:
        text += ", inhibited by " + " and ".join(i["input"] for i in named(inhibitors))
    return text


def describe_conv2(m: Measurements, conv1_units: list[dict]) -> list[dict]:
    patterns = {u["name"]: u["pattern"] for u in conv1_units}
    fit = m.driver_fit
    grid_labels = fit.labels()
    units = []
    for k, j in enumerate(m.driver.tolist()):
        drivers, inhibitors = drivers_and_inhibitors(m, "conv2", k)
        copies = (
            j >= 0
            and fit.kind[k] == "line"
            and float(fit.amplitude[k]) > 0
            and float(fit.r2[k]) >= COPY_MIN_R2
            and angle_gap(float(fit.theta_deg[k]), conv1_units[j]["orientation_deg"]) <= COPY_MAX_GAP_DEG
        )
        name = unit_name("conv2", k + 1)
        if j < 0:
            label = signed_phrase(drivers, inhibitors, patterns)
        elif copies:
            label = f"≈ {signed_phrase(drivers, inhibitors, patterns)}"
        else:
            label = f"reads {signed_phrase(drivers, inhibitors, patterns, f'through a {grid_labels[k]} grid')}"
        units.append(
            {
                "layer": "conv2",
                "index": k + 1,
                "name": name,
                "label": label,
                "pattern": conv1_units[j]["pattern"] if copies else name,
                "drivers": drivers,
                "inhibitors": inhibitors,
                "copies_input": bool(copies),
                "grid_orientation_deg": _number(fit.theta_deg[k], 2) if j >= 0 else None,
                "grid_kind": fit.kind[k] if j >= 0 else None,
                "grid_fit_r2": _number(fit.r2[k]) if j >= 0 else None,
            }
        )
    return units


def describe_conv3(net: nn.Module, m: Measurements, input_units: list[dict]) -> list[dict]:
    weight = net.conv3.weight.detach().cpu()
    drive = m.contributions["conv3"].drive
    units = []
    for k in range(weight.shape[0]):
        drivers, inhibitors = drivers_and_inhibitors(m, "conv3", k)
        found = []  # (score, input j, burst)
        for entry in named(drivers):
            j = next(u["index"] - 1 for u in input_units if u["name"] == entry["input"])
            per_unit_norm = float(drive[k, j]) / max(float(weight[k, j].norm()), 1e-12)
            found += [(abs(b.amplitude) * per_unit_norm, j, b) for b in find_bursts(weight[k, j])]
        found.sort(key=lambda item: -item[0])
        kept = [item for item in found if item[0] >= BURST_SHARE * found[0][0]][:MAX_BURSTS] if found else []
        bursts, phrases = [], []
        for _, j, burst in kept:
            source = input_units[j]
            sign = "+" if burst.sign > 0 else "-"
            bursts.append(
                {
                    "sign": sign,
                    "clock": burst.clock,
                    "distance": _number(burst.distance, 3),
                    "input": source["name"],
                    "input_label": source["label"],
                    "notation": str(burst),
                    "amplitude": _number(burst.amplitude),
                }
            )
            phrases.append(f"{'' if not phrases and sign == '+' else sign + ' '}{source['pattern']} {_at(burst.clock)}")
        label = signed_phrase(drivers, inhibitors, {}) + (": " + " ".join(phrases) if phrases else "")
        units.append(
            {
                "layer": "conv3",
                "index": k + 1,
                "name": unit_name("conv3", k + 1),
                "label": label,
                "bursts": bursts,
                "drivers": drivers,
                "inhibitors": inhibitors,
            }
        )
    return units


def add_position_pattern(m: Measurements, layer: str, units: list[dict]) -> None:
    """Add position_index, pattern_index and interaction_index (omega² on the stroke sweep)."""
    pp = m.position_pattern[layer]
    for unit, pos, pat, inter in zip(units, pp.position_index, pp.pattern_index, pp.interaction_index):
        unit["position_index"], unit["pattern_index"], unit["interaction_index"] = (
            _number(pos),
            _number(pat),
            _number(inter),
        )


def describe(net: nn.Module, m: Measurements) -> dict:
    """labels.json's content for a SimpleConvNet from its measurements."""
    units = {"conv1": describe_conv1(m)}
    if "conv2" in m.layers:
        units["conv2"] = describe_conv2(m, units["conv1"])
    units["conv3"] = describe_conv3(net, m, units[source_layer(m, "conv3")])
    for layer, entries in units.items():
        add_position_pattern(m, layer, entries)
    grids = {layer: {k: _number(v) for k, v in stats.summary().items()} for layer, stats in m.grids.items()}
    return {
        "net": "simple_convnet",
        "widths": list(m.widths),
        "grid_statistics": grids,  # claim 3's numbers per layer
        "units": [u for entries in units.values() for u in entries],
    }


def write_labels(labels: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n")
    return path
