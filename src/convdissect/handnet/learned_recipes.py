"""The executable explanation: the learned recipe file (learned_recipes.yaml) written from a
HandNet's parameters, which rebuilds the net (handnet/recipes.py reads it back)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from convdissect.conventions import REGION_NAMES, clock_from_xy, stroke_label, unit_name
from convdissect.handnet.explanation import conv1_lines
from convdissect.handnet.layers import width_as_used
from convdissect.handnet.recipes import BURST_KEYS, LINE_KEYS
from convdissect.handnet.sentences import rounded


@torch.no_grad()
def learned_recipes(net, exact: bool = True) -> dict:
    """The learned recipe file (same schema as conf/handnet/recipes.yaml, extended) that rebuilds
    this net. exact: the parameters as stored, the widths as the layers use them (the rebuilt net's outputs
    the same bit for bit); else every number rounded as explanation.md
    prints it (θ in degrees, the canonical line), i.e. the net a reader of explanation.md knows."""
    r = net.recipes
    number = (lambda v: v) if exact else rounded
    return {
        "positions": {
            name: {"clock": clock, "distance": distance}
            for name, (clock, distance) in ((name, clock_from_xy(x, y)) for name, (x, y) in r.positions.items())
        },
        "clock_distance": r.clock_distance,
        "cell_pixels": net.cell_pixels,
        "final_pool": net.final_pool,
        "lines": _learned_lines(net, exact),
        "units": _learned_units(net, number),
        "digits": _learned_digits(net, number),
    }


def _learned_lines(net, exact: bool) -> list[dict]:
    """conv1's lines: the parameters as stored, the width as used (exact), or the canonical line rounded,
    θ via degrees."""
    c1 = net.conv1
    lines = conv1_lines(net)
    labels = [stroke_label(line["kind"], line["theta_deg"], line["amplitude"]) for line in lines]
    if exact:
        stored = {key: getattr(c1, key).tolist() for key in LINE_KEYS}
        stored["sigma"] = width_as_used(c1.sigma).tolist()  # the file refuses a width <= 0; the same kernels
        numbers = [{key: stored[key][i] for key in LINE_KEYS} for i in range(len(labels))]
    else:
        numbers = [
            {
                "theta": math.radians(rounded(line["theta_deg"])),
                **{k: rounded(line[k]) for k in ("sigma", "offset", "amplitude", "bias")},
            }
            for line in lines
        ]
    return [{"kind": kind, **line, "label": label} for kind, line, label in zip(c1.kinds, numbers, labels)]


def _learned_units(net, number: Callable[[float], float]) -> list[dict]:
    """conv3's units: bias and every burst with the conv1 channel it reads (widths as the layer uses them)."""
    c3 = net.conv3
    channel = c3.channel_weights().argmax(-1).tolist()
    widths = [width_as_used(s) for s in (c3.sigma_x, c3.sigma_y)]
    values = {key: t.tolist() for key, t in zip(BURST_KEYS, (c3.mean_x, c3.mean_y, *widths, c3.amplitude))}
    return [
        {
            "name": unit_name("conv3", k + 1),
            "bias": number(float(c3.bias[k])),
            "bursts": [
                {
                    "input": unit_name("conv1", channel[k][b] + 1),
                    **{key: number(values[key][k][b]) for key in BURST_KEYS},
                }
                for b in range(c3.n_bursts)
            ],
        }
        for k in range(len(channel))
    ]


def _learned_digits(net, number: Callable[[float], float]) -> dict[int, dict]:
    """Per digit its bias and readout terms (unit, with final_pool > 1 its region, and weight)."""
    weight = net.readout.sparse_weight()
    regions = REGION_NAMES[net.final_pool]

    def term(k: int, w: float) -> dict:
        unit, region = divmod(k, len(regions))
        where = {"region": regions[region]} if len(regions) > 1 else {}
        return {"unit": unit_name("conv3", unit + 1), **where, "weight": number(w)}

    return {
        digit: {
            "bias": number(float(net.readout.bias[digit])),
            "terms": [term(k, float(weight[digit, k])) for k in weight[digit].nonzero().flatten().tolist()],
        }
        for digit in range(10)
    }
