"""Machine-written labels for every conv unit, with the numbers behind them (labels.json), read
from one Measurements object (docs/measures.md says what each number is).

- conv1: its program's terms (a line/edge with orientation, kind, side and R², then brightness and a
  second line/edge where needed) and a secondary orientation where its tuning has a second peak;
- conv2: the inputs its program keeps (dissect/programs.py), drivers and inhibitors with their
  share, and whether the grid on the main driver is a bright line along that input's orientation
  (a copy: the article's "conv2 only amplifies conv1");
- conv3: the bursts its program keeps, read as "+input's pattern at clock position", and its
  omega² of position, pattern and their interaction;
- fc4: the conv3 units its program keeps, and the digits it prefers (class selectivity).
Every label ends with its fidelity "(r 0.91)": the label run as a unit, against the real unit.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from convdissect.analysis.families import grid_xy
from convdissect.analysis.selectivity import selectivity_index, tuning_depth, tuning_peaks
from convdissect.analysis.unit_programs import Term, UnitProgram
from convdissect.conventions import CENTRE, angle_gap, clock_from_xy, format_burst, orientation_name, unit_name
from convdissect.dissect.measure import Measurements, source_layer

# A conv1 kernel whose line fit explains less than this share of its energy is called noisy.
NOISY_R2 = 0.5
# A conv2 grid copies its main driver: a bright line (fit R² ≥ COPY_MIN_R2) within COPY_MAX_GAP_DEG of its angle.
COPY_MIN_R2 = 0.4
COPY_MAX_GAP_DEG = 22.5
# Labels name an input by its pattern without the slope (labels.json keeps the whole pattern).
SLOPE = re.compile(r" \(slope [^)]*\)")
# labels.json's long label: the terms a unit's label needs for this fidelity on the fit images
# (claims.json's label net with these labels reaches ~99% agreement on a pruned net).
LONG_LABEL_R = 0.98
# A conv1 kernel whose tuning over stroke orientations is flatter than this is unoriented (a blob):
# the 5th percentile of the modulation depth of 200 Gaussian-noise kernels (analysis.fits.reference_grids;
# their median 0.52). A centre-surround blob scores 0.06, a trained pruned net's kernels 0.59-0.74.
UNORIENTED_DEPTH = 0.296
# A secondary orientation is a tuning peak at least this far from the fitted orientation.
SECONDARY_MIN_GAP_DEG = 30.0
# An fc4 label names at most this many digits the unit responds to most.
PREFERRED_DIGITS = 2


def json_number(value, digits: int = 4):
    """A JSON-safe rounded float; NaN becomes null."""
    value = float(value)
    return None if math.isnan(value) else round(value, digits)


def inactive(program: UnitProgram | None) -> str | None:
    """'silent on the images' or 'constant on the images' for a unit with nothing to label, else None."""
    if program is None or program.activity == "varies":
        return None
    return f"{program.activity} on the images"


def short_pattern(pattern: str) -> str:
    """An input's pattern as a label names it: 'line at 99°' for 'line at 99° (slope -6.46)'."""
    return SLOPE.sub("", pattern)


def with_fidelity(text: str, program: UnitProgram | None) -> str:
    if program is None or program.activity != "varies":
        return text
    return f"{text} (r {program.fidelity:.2f})"


def program_fields(program: UnitProgram | None) -> dict:
    """labels.json's fidelity, its shuffled null, the description length and the curve r(terms)."""
    if program is None:
        return {}
    return {
        "activity": program.activity,
        "fidelity": json_number(program.fidelity, 3),
        "fidelity_shuffled": json_number(program.shuffled, 3),
        "terms": program.printed,
        "terms_for_r90": program.terms_for_r90,
        "fidelity_curve": [json_number(r, 3) for r in program.curve.tolist()],
        "long_terms": program.length_for(LONG_LABEL_R) if program.terms else None,
    }


def _at(clock: str) -> str:
    """'12:00' -> 'at 12 o'clock', '7:30' -> 'at 7:30', centre -> 'at the centre'."""
    if clock == CENTRE:
        return "at the centre"
    return f"at {clock[:-3]} o'clock" if clock.endswith(":00") else f"at {clock}"


def describe_conv1(m: Measurements) -> list[dict]:
    fit, tuning, programs = m.conv1_fit, m.tuning, m.programs.get("conv1")
    depth = tuning_depth(tuning.responses["conv1"])
    units = []
    for i, label in enumerate(fit.labels()):
        program = programs.units[i] if programs else None
        theta = float(fit.theta_deg[i])
        peaks = tuning_peaks(tuning.responses["conv1"][:, i], tuning.angles_deg, min_gap_deg=SECONDARY_MIN_GAP_DEG)
        others = [p for p in peaks if angle_gap(p, theta) >= SECONDARY_MIN_GAP_DEG] if len(peaks) > 1 else []
        secondary = others[0] if others else None
        oriented = float(depth[i]) >= UNORIENTED_DEPTH
        terms = programs.texts[i] if programs else [label]
        printed = " + ".join([label, *terms[1:]])
        text = printed if fit.r2[i] >= NOISY_R2 else f"noisy; closest: {printed}"
        if not oriented:
            text = f"unoriented (blob); closest: {printed}"
        if secondary is not None and oriented:
            text += f", secondary {orientation_name(secondary)}"
        text = inactive(program) or text
        units.append(
            {
                "layer": "conv1",
                "index": i + 1,
                "name": unit_name("conv1", i + 1),
                "label": with_fidelity(text, program),
                "pattern": label,
                "label_terms": terms,
                "orientation_deg": round(theta, 2),
                "kind": fit.kind[i],
                "side": fit.side[i],
                "fit_r2": json_number(fit.r2[i]),
                "secondary_orientation_deg": secondary,
                "tuning_depth": json_number(depth[i], 3),
                "oriented": oriented,
                **program_fields(program),
            }
        )
    return units


def drivers_and_inhibitors(m: Measurements, layer: str, k: int) -> tuple[list[dict], list[dict]]:
    """labels.json's `drivers` and `inhibitors` of out channel k: every input with its share, strongest first."""
    source = source_layer(m, layer)
    contributions = m.contributions[layer]
    return tuple(
        [{"input": unit_name(source, j + 1), "share": json_number(share, 3)} for j, share in ranked]
        for ranked in (contributions.drivers(k), contributions.inhibitors(k))
    )


def kept_inputs(program: UnitProgram | None, source: str) -> list[str]:
    """The inputs a unit's printed label keeps, strongest term first."""
    if program is None:
        return []
    return list(dict.fromkeys(unit_name(source, t.input + 1) for t in program.terms[: program.printed]))


def long_inputs(program: UnitProgram | None, source: str) -> list[str]:
    """The long label of a conv2 unit: '+conv1_4', '-conv1_2', ... up to fidelity LONG_LABEL_R."""
    if program is None:
        return []
    terms = program.terms[: program.length_for(LONG_LABEL_R)]
    return [f"{'+' if t.contribution >= 0 else '-'}{unit_name(source, t.input + 1)}" for t in terms]


def signed_phrase(
    drivers: list[dict], inhibitors: list[dict], kept: list[str], patterns: dict[str, str], through: str = ""
) -> str:
    """'conv1_4 (vertical line, 62% of its drive) + conv1_2 (30%), inhibited by conv1_7': the drivers and
    inhibitors the label keeps; `through` follows the main driver (e.g. 'through a dark line grid')."""
    if not drivers:
        return "silent on the images"
    named_drivers = [d for d in drivers if d["input"] in kept] or drivers[:1]
    parts = []
    for i, d in enumerate(named_drivers):
        what = f"{patterns[d['input']]}, " if patterns.get(d["input"]) else ""
        parts.append(
            f"{d['input']} ({what}{d['share']:.0%}{' of its drive' if i == 0 else ''})"
            + (f" {through}" if i == 0 and through else "")
        )
    text = " + ".join(parts)
    named_inhibitors = [e["input"] for e in inhibitors if e["input"] in kept]
    if named_inhibitors:
        text += ", inhibited by " + " and ".join(named_inhibitors)
    return text


def copies_driver(m: Measurements, k: int, j: int) -> bool:
    """conv2 channel k's grid on its main driver is a bright line along conv1 channel j's orientation
    (labels.json's copies_input; claims.json's copy fraction and its shuffled null ask the same)."""
    fit = m.driver_fit
    return (
        fit.kind[k] == "line"
        and float(fit.amplitude[k]) > 0
        and float(fit.r2[k]) >= COPY_MIN_R2
        and angle_gap(float(fit.theta_deg[k]), float(m.conv1_fit.theta_deg[j])) <= COPY_MAX_GAP_DEG
    )


def describe_conv2(m: Measurements, conv1_units: list[dict]) -> list[dict]:
    patterns = {u["name"]: short_pattern(u["pattern"]) for u in conv1_units}
    fit = m.driver_fit
    grid_labels = fit.labels()
    programs = m.programs.get("conv2")
    units = []
    for k, j in enumerate(m.driver.tolist()):
        drivers, inhibitors = drivers_and_inhibitors(m, "conv2", k)
        program = programs.units[k] if programs else None
        kept = kept_inputs(program, "conv1")
        copies = j >= 0 and copies_driver(m, k, j)
        name = unit_name("conv2", k + 1)
        if inactive(program):
            label = inactive(program)
        elif j < 0:
            label = signed_phrase(drivers, inhibitors, kept, patterns)
        elif copies:
            label = f"≈ {signed_phrase(drivers, inhibitors, kept, patterns)}"
        else:
            grid = short_pattern(grid_labels[k])
            article = "an" if grid[:1] in "aeiou" else "a"
            label = f"reads {signed_phrase(drivers, inhibitors, kept, patterns, f'through {article} {grid} grid')}"
        units.append(
            {
                "layer": "conv2",
                "index": k + 1,
                "name": name,
                "label": with_fidelity(label, program),
                "pattern": conv1_units[j]["pattern"] if copies else name,
                "drivers": drivers,
                "inhibitors": inhibitors,
                "kept_inputs": kept,
                "long_label": long_inputs(program, "conv1"),
                "copies_input": bool(copies),
                "grid_orientation_deg": json_number(fit.theta_deg[k], 2) if j >= 0 else None,
                "grid_kind": fit.kind[k] if j >= 0 else None,
                "grid_fit_r2": json_number(fit.r2[k]) if j >= 0 else None,
                **program_fields(program),
            }
        )
    return units


def burst_entry(term: Term, grid: torch.Tensor, source: dict) -> dict:
    """labels.json's record of one burst term: its input, sign, clock position (its strongest cell),
    extent in cells and signed contribution; a flat burst over more than half the grid (no cell twice its
    mean |weight|) is `anywhere`: it has no position."""
    x, y = grid_xy(grid.shape[-1])
    strongest = int((grid.abs() * term.cells).flatten().argmax())
    clock, distance = clock_from_xy(float(x.flatten()[strongest]), float(y.flatten()[strongest]))
    sign = 1 if float(grid.flatten()[strongest]) >= 0 else -1
    weights = grid.abs()[term.cells]
    anywhere = len(weights) > grid.numel() / 2 and float(weights.max()) < 2 * float(weights.mean())  # flat and wide
    return {
        "sign": "+" if sign > 0 else "-",
        "clock": clock,
        "distance": json_number(distance, 3),
        "cells": int(term.cells.sum()),
        "input": source["name"],
        "input_label": source["pattern"],
        "anywhere": anywhere,
        "notation": f"{'+' if sign > 0 else '-'}[anywhere]" if anywhere else format_burst(sign, clock, distance),
        "contribution": json_number(term.contribution),
    }


def burst_phrase(burst: dict, first: bool) -> str:
    """'+conv2_3 (vertical line) at 12 o'clock' (the input's short pattern, when it has one)."""
    pattern = f" ({short_pattern(burst['input_label'])})" if burst["input_label"] != burst["input"] else ""
    sign = "" if first and burst["sign"] == "+" else burst["sign"]
    return f"{sign}{burst['input']}{pattern} {'anywhere' if burst['anywhere'] else _at(burst['clock'])}"


def describe_conv3(net: nn.Module, m: Measurements, input_units: list[dict]) -> list[dict]:
    weight = net.conv3.weight.detach().cpu()
    programs = m.programs.get("conv3")
    units = []
    for k in range(weight.shape[0]):
        drivers, inhibitors = drivers_and_inhibitors(m, "conv3", k)
        program = programs.units[k] if programs else None
        printed = program.terms[: program.printed] if program else []
        bursts = [burst_entry(t, weight[k, t.input], input_units[t.input]) for t in printed]
        label = inactive(program) or (
            ", ".join(burst_phrase(b, i == 0) for i, b in enumerate(bursts)) if drivers else "silent on the images"
        )
        units.append(
            {
                "layer": "conv3",
                "index": k + 1,
                "name": unit_name("conv3", k + 1),
                "label": with_fidelity(label, program),
                "bursts": bursts,
                "long_label": [
                    burst_phrase(burst_entry(t, weight[k, t.input], input_units[t.input]), False)
                    for t in program.terms[: program.length_for(LONG_LABEL_R)]
                ]
                if program
                else [],
                "drivers": drivers,
                "inhibitors": inhibitors,
                **program_fields(program),
            }
        )
    return units


def preferred_digits(means: torch.Tensor | None, k: int) -> dict:
    """A unit's class selectivity from its mean response per digit [10, C] (Morcos et al. 2018) and
    the digits it responds to most, strongest first; {} where the digits were not given."""
    if means is None:
        return {}
    present = ~means[:, k].isnan()  # digits absent from the images have no mean
    digits, column = present.nonzero()[:, 0], means[present, k]
    order = column.argsort(descending=True)[:PREFERRED_DIGITS]
    return {
        "class_selectivity": json_number(float(selectivity_index(column[:, None])[0]), 3),
        "preferred_digits": [int(digits[i]) for i in order if column[i] > 0],
    }


def digits_phrase(classes: dict) -> str:
    digits = ", ".join(str(d) for d in classes.get("preferred_digits", []))
    return f"; prefers digits {digits} (class selectivity {classes['class_selectivity']:.2f})" if digits else ""


def describe_fc4(m: Measurements) -> list[dict]:
    """fc4's units: the conv3 units their labels keep, drivers and inhibitors by signed contribution,
    and the digits each prefers."""
    programs = m.programs["fc4"]
    means = m.class_means.get("fc4")
    units = []
    for k, program in enumerate(programs.units):
        row = programs.contributions[k]
        positive, negative = row.clamp_min(0), (-row).clamp_min(0)
        drivers, inhibitors = (
            [
                {"input": unit_name("conv3", j + 1), "share": json_number(float(part[j] / part.sum()), 3)}
                for j in part.argsort(descending=True).tolist()
                if part[j] > 0
            ]
            for part in (positive, negative)
        )
        classes = preferred_digits(means, k)
        label = inactive(program) or signed_phrase(drivers, inhibitors, kept_inputs(program, "conv3"), {})
        if not inactive(program):
            label += digits_phrase(classes)
        units.append(
            {
                "layer": "fc4",
                "index": k + 1,
                "name": unit_name("fc4", k + 1),
                "label": with_fidelity(label, program),
                "drivers": drivers,
                "inhibitors": inhibitors,
                "kept_inputs": kept_inputs(program, "conv3"),
                "long_label": long_inputs(program, "conv3"),
                **classes,
                **program_fields(program),
            }
        )
    return units


def add_position_pattern(m: Measurements, layer: str, units: list[dict]) -> None:
    """Add position_index, pattern_index and interaction_index (omega² on the stroke sweep)."""
    pp = m.position_pattern[layer]
    for unit, pos, pat, inter in zip(units, pp.position_index, pp.pattern_index, pp.interaction_index):
        unit["position_index"], unit["pattern_index"], unit["interaction_index"] = (
            json_number(pos),
            json_number(pat),
            json_number(inter),
        )


def describe(net: nn.Module, m: Measurements) -> dict:
    """labels.json's content for a SimpleConvNet from its measurements."""
    units = {"conv1": describe_conv1(m)}
    if "conv2" in m.layers:
        units["conv2"] = describe_conv2(m, units["conv1"])
    units["conv3"] = describe_conv3(net, m, units[source_layer(m, "conv3")])
    for layer, entries in units.items():
        add_position_pattern(m, layer, entries)
    units["fc4"] = describe_fc4(m)
    grids = {layer: {k: json_number(v) for k, v in stats.summary().items()} for layer, stats in m.grids.items()}
    return {
        "net": "simple_convnet",
        "widths": list(m.widths),
        "grid_statistics": grids,  # claim 3's numbers per layer
        "units": [u for entries in units.values() for u in entries],
    }


def add_original_names(labels: dict, kept: dict[str, list[int]]) -> None:
    """Each unit's name in the net it was pruned from (`was`: conv1_2 was conv1_6), from the pruning
    history's kept channels {layer: 1-based original numbers}, where the widths match."""
    for unit in labels["units"]:
        original = kept.get(unit["layer"], [])
        if len(original) == sum(u["layer"] == unit["layer"] for u in labels["units"]):
            unit["was"] = unit_name(unit["layer"], original[unit["index"] - 1])


def write_labels(labels: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n")
    return path
