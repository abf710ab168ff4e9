"""A HandNet explained from its parameters alone, completely: every conv1 line, every burst of
every conv3 unit and every readout term. Parameters -> labels.json entries (`explain`) ->
explanation.md (`explanation_markdown`) and its size (`explanation_metrics`). The words and the
printed precision are in handnet/sentences.py; the same numbers as a learned recipe file, which
rebuilds the net, in handnet/learned_recipes.py.
"""

from __future__ import annotations

import math

import torch

from convdissect.analysis.families import canonical_line
from convdissect.analysis.selectivity import position_pattern
from convdissect.conventions import REGION_NAMES, clock_from_xy, edge_side, stroke_label, unit_name
from convdissect.handnet.layers import width_as_used
from convdissect.handnet.recipes import BURST_KEYS, LINE_KEYS
from convdissect.handnet.sentences import (
    SIGNIFICANT,
    burst_place,
    burst_sentence,
    conv1_sentence,
    fmt,
    pattern_word,
    position_word,
    recipe_sentence,
)

# ---------------------------------------------------------------------------- parameters -> labels


@torch.no_grad()
def explain(net) -> dict:
    """Every unit of a HandNet described from its parameters: the labels.json dict. Each unit
    carries its numbers, `label` (short) and `sentence` (its line in the report)."""
    conv1 = _explain_conv1(net)
    conv3 = _explain_conv3(net, conv1)
    readout = _explain_readout(net, conv3)
    return {
        "net": "handnet",
        "widths": list(net.widths),
        "cell_pixels": net.cell_pixels,
        "grid_size": net.conv3.size,
        "final_pool": net.final_pool,
        "units": conv1 + conv3 + readout,
    }


def conv1_lines(net) -> list[dict]:
    """conv1's lines in canonical form (θ in degrees in [0, 180), width as used)."""
    c = net.conv1
    sigma = width_as_used(c.sigma)
    thetas, offsets, amplitudes = canonical_line(c.theta, c.offset, c.amplitude, c.is_edge)
    return [
        {
            "kind": kind,
            "theta_deg": math.degrees(float(thetas[i])) % 180.0,  # % guards rounding at exactly 180
            "sigma": float(sigma[i]),
            "offset": float(offsets[i]),
            "amplitude": float(amplitudes[i]),
            "bias": float(c.bias[i]),
        }
        for i, kind in enumerate(c.kinds)
    ]


def _explain_conv1(net) -> list[dict]:
    units = []
    for i, line in enumerate(conv1_lines(net)):
        kind, theta, amplitude = line["kind"], line["theta_deg"], line["amplitude"]
        units.append(
            {
                "layer": "conv1",
                "index": i + 1,
                "name": unit_name("conv1", i + 1),
                "label": stroke_label(kind, theta, amplitude),
                "sentence": conv1_sentence(kind, theta, line["sigma"], line["offset"], amplitude),
                "pattern": pattern_word(kind, theta, amplitude),
                "orientation_deg": theta,
                "kind": kind,
                "side": edge_side(theta, amplitude) if kind == "edge" else None,
                "fit_r2": 1.0,  # the kernel is a member of the family by construction
                "secondary_orientation_deg": None,  # one line or edge: a single-peaked tuning curve
                "sigma": line["sigma"],
                "offset": line["offset"],
                "amplitude": amplitude,
                "bias": line["bias"],
            }
        )
    return units


def _explain_conv3(net, conv1: list[dict]) -> list[dict]:
    c = net.conv3
    position_index, pattern_index = position_pattern_indices(net)
    channel = c.channel_weights().argmax(-1)  # [units, bursts]: the channel each burst reads (one-hot once frozen)
    sx, sy = (width_as_used(s) for s in (c.sigma_x, c.sigma_y))
    read = net.read_units()
    units = []
    for k in range(c.amplitude.shape[0]):
        bursts = []
        for b in sorted(range(c.n_bursts), key=lambda b: -abs(float(c.amplitude[k, b]))):  # strongest first
            j, a = int(channel[k, b]), float(c.amplitude[k, b])
            x, y = float(c.mean_x[k, b]), float(c.mean_y[k, b])
            clock, distance = clock_from_xy(x, y)
            bursts.append(
                {
                    "sign": "+" if a >= 0 else "-",
                    "clock": clock,
                    "distance": distance,
                    "input": conv1[j]["name"],
                    "input_label": conv1[j]["label"],
                    "x": x,
                    "y": y,
                    "sigma_x": float(sx[k, b]),
                    "sigma_y": float(sy[k, b]),
                    "amplitude": a,
                    "position": position_word(net.recipes.positions, x / net.recipe_cell, y / net.recipe_cell),
                    "pattern": conv1[j]["pattern"],
                }
            )
        strongest = bursts[0]
        label = f"{strongest['position']}({strongest['pattern']})" if strongest["amplitude"] != 0 else "silent"
        if strongest["amplitude"] < 0:
            label = "not " + label
        units.append(
            {
                "layer": "conv3",
                "index": k + 1,
                "name": unit_name("conv3", k + 1),
                "label": label,
                "sentence": "; ".join(burst_sentence(b) for b in bursts),
                "bursts": bursts,
                "bias": float(c.bias[k]),
                "read": bool(read[k]),
                "position_index": position_index[k],
                "pattern_index": pattern_index[k],
            }
        )
    return units


def _explain_readout(net, conv3: list[dict]) -> list[dict]:
    """Every nonzero readout weight of each digit, largest first; with final_pool > 1 each names
    its region ("conv3_12 top(horizontal) in the upper-left region")."""
    weight = net.readout.sparse_weight()
    regions = REGION_NAMES[net.final_pool]
    units = []
    for digit in range(10):
        w = weight[digit]
        keep = sorted(w.nonzero().flatten().tolist(), key=lambda k: -float(w[k]))
        terms = []
        for k in keep:
            unit, region = divmod(k, len(regions))
            term = {"weight": float(w[k]), "unit": conv3[unit]["name"], "label": conv3[unit]["label"]}
            if len(regions) > 1:
                term["region"] = regions[region]
                term["label"] += f" in the {regions[region]} region"
            terms.append(term)
        units.append(
            {
                "layer": "fc",
                "index": digit + 1,
                "name": f"digit_{digit}",
                "label": recipe_sentence(digit, terms),
                "terms": terms,
                "bias": float(net.readout.bias[digit]),
            }
        )
    return units


def position_pattern_indices(net) -> tuple[list[float | None], list[float | None]]:
    """Per conv3 unit, eta² of position and of pattern over line probes, measured as for a SimpleConvNet."""
    pp = position_pattern(net, "conv3")
    return tuple(
        [None if math.isnan(v) else round(v, 4) for v in share.tolist()]
        for share in (pp.position_index, pp.pattern_index)
    )


# ---------------------------------------------------------------------------- metrics of the explanation


def explanation_metrics(labels: dict) -> dict:
    """How long the explanation is: bursts per unit, terms per digit, units read by a digit, and
    the numbers a reader must read to know the whole net (each line's θ, σ, offset, amplitude and
    bias; each burst's x, y, two widths, amplitude and channel; each unit's bias; each readout
    weight, with final_pool > 1 its region too (a choice, like a burst's channel); each digit's bias)."""
    by_layer = {layer: [u for u in labels["units"] if u["layer"] == layer] for layer in ("conv1", "conv3", "fc")}
    bursts = [len(u["bursts"]) for u in by_layer["conv3"]]
    terms = [len(u["terms"]) for u in by_layer["fc"]]
    per_term = 2 if labels["final_pool"] > 1 else 1
    numbers = (
        len(by_layer["conv1"]) * len(LINE_KEYS)
        + sum(bursts) * (len(BURST_KEYS) + 1)
        + len(bursts)
        + sum(terms) * per_term
        + 10
    )
    return {
        "explanation/bursts_per_unit_max": max(bursts),
        "explanation/terms_per_digit_max": max(terms),
        "explanation/units_used": sum(u["read"] for u in by_layer["conv3"]),
        "explanation/numbers": numbers,
    }


# ---------------------------------------------------------------------------- markdown

# explanation.md's (and the dissection report's) section per labels.json layer
EXPLANATION_TITLES = {
    "conv1": "conv1: line detectors",
    "conv3": "conv3: pattern-at-position detectors (bursts on conv1 channels)",
    "fc": "readout: digit recipes",
}


def _line_numbers(unit: dict) -> str:
    return (
        f"θ {fmt(unit['orientation_deg'])}°, σ {fmt(unit['sigma'])}, offset {fmt(unit['offset'])}, "
        f"amplitude {fmt(unit['amplitude'])}, bias {fmt(unit['bias'])}"
    )


def _burst_line(burst: dict) -> str:
    return (
        f"{fmt(burst['amplitude'])} × burst {burst_place(burst)} "
        f"(x {fmt(burst['x'])}, y {fmt(burst['y'])}, σx {fmt(burst['sigma_x'])}, σy {fmt(burst['sigma_y'])}) "
        f"on {burst['input']} ({burst['input_label']})"
    )


def _recipe_line(unit: dict) -> str:
    text = f"{unit['index'] - 1} = {fmt(unit['bias'])}"
    for term in unit["terms"]:
        text += f" {'-' if term['weight'] < 0 else '+'} {fmt(abs(term['weight']))} {term['unit']} {term['label']}"
    return text


def explanation_markdown(labels: dict) -> str:
    """explanation.md: the whole net, every line, burst and readout term, numbers to SIGNIFICANT digits."""
    metrics = explanation_metrics(labels)
    size, final_pool = labels["grid_size"], labels["final_pool"]
    if final_pool == 1:
        pooled = "max-pooled over the image"
    else:
        pooled = (
            f"max-pooled over each of {final_pool}x{final_pool} regions of the image "
            f"({', '.join(REGION_NAMES[final_pool])}; neighbours overlap where the map does not divide evenly); "
            "a readout term reads one unit in one region"
        )
    lines = [
        f"# HandNet explained from its parameters (widths {labels['widths']})",
        "",
        f"Complete: every conv1 line, every burst of every conv3 unit and every readout term; "
        f"{metrics['explanation/numbers']} numbers, printed to {SIGNIFICANT} significant digits. "
        f"Positions are in grid cells of conv3's {size}x{size} grid (x right, y up; one cell = "
        f"{labels['cell_pixels']} pixels); a unit reads relu(its bursts summed + bias), {pooled}.",
    ]
    for layer, title in EXPLANATION_TITLES.items():
        lines += ["", f"## {title}", ""]
        for unit in labels["units"]:
            if unit["layer"] != layer:
                continue
            if layer == "conv1":
                lines.append(f"- **{unit['name']}**: {unit['sentence']} ({_line_numbers(unit)})")
            elif layer == "conv3":
                unread = "" if unit["read"] else "; read by no digit"
                lines.append(f"- **{unit['name']}** {unit['label']} (bias {fmt(unit['bias'])}{unread}):")
                lines += [f"  - {_burst_line(burst)}" for burst in unit["bursts"]]
            else:
                lines.append(f"- **{unit['name']}**: {_recipe_line(unit)}")
    return "\n".join(lines) + "\n"
