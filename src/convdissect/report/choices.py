"""Which channels and digits the report's figures show (checked before any figure is drawn), and
the unit names it prints."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from convdissect.analysis.activations import conv_layers
from convdissect.conventions import parse_unit_name, unit_name
from convdissect.errors import UserInputError


def check_report_settings(settings: DictConfig, net, digits: torch.Tensor) -> None:
    """Bad channel or digit choices fail before any figure is drawn."""
    for layer, unit in (("conv2", settings.conv2.unit), ("conv3", settings.conv3.unit)):
        if unit is None:
            continue
        width = getattr(net, layer).out_channels if layer in conv_layers(net) else 0
        try:
            name, index = parse_unit_name(str(unit))
        except ValueError:
            name, index = None, 0
        if name != layer or not 1 <= index <= width:
            raise UserInputError(
                f"report.{layer}.unit={unit!r}: expected {layer}_K with K in 1..{width}"
                if width
                else f"report.{layer}.unit={unit!r}: this net has no {layer}"
            )
    for key, digit in [("conv2.digit", settings.conv2.digit)] + [("conv3.digits", d) for d in settings.conv3.digits]:
        if isinstance(digit, bool) or not isinstance(digit, int) or not 0 <= digit <= 9:
            raise UserInputError(f"report.{key}: {digit!r} is not a digit 0..9")
        if not (digits == digit).any():
            raise UserInputError(
                f"report.{key}: no image of digit {digit} among the n_images={len(digits)} dissection images"
            )
    if not settings.conv3.digits:
        raise UserInputError("report.conv3.digits is empty: give at least one digit, e.g. [5, 7]")


def most_copying_conv2(labels: dict) -> str:
    """The conv2 unit that copies its main driver with the largest share of its drive (the
    article's conv2_3); the largest main-driver share overall where none copies."""
    units = [u for u in labels["units"] if u["layer"] == "conv2"]
    copying = [u for u in units if u["copies_input"]] or units
    return max(copying, key=lambda u: u["drivers"][0]["share"] if u["drivers"] else 0.0)["name"]


def display_name(unit: dict) -> str:
    """'conv1_2 (was conv1_6)' for a pruned net's unit, else its name."""
    return f"{unit['name']} (was {unit['was']})" if unit.get("was") else unit["name"]


def labels_markdown(labels: dict) -> str:
    """labels.json as one markdown table (unit, label), for TensorBoard's text tab."""
    rows = ["| unit | label |", "|---|---|"] + [
        f"| {display_name(u)} | {u['label'].replace('|', '∣')} |" for u in labels["units"]
    ]
    return "\n".join(rows)


def strongest_on(responses: torch.Tensor, digits: torch.Tensor, layer: str, digit: int) -> str:
    """The channel with the highest mean response on images of `digit` (the article's conv3_6 on 5)."""
    return unit_name(layer, int(responses[digits == digit].mean(dim=0).argmax()) + 1)


def best_image(responses: torch.Tensor, digits: torch.Tensor, unit: str, digit: int) -> int:
    """Index of the image of `digit` that drives `unit` most."""
    channel = parse_unit_name(unit)[1] - 1
    candidates = (digits == digit).nonzero().flatten()
    return int(candidates[responses[candidates, channel].argmax()])
