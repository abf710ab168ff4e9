"""convdissect from Python, for notebooks: `dissect_net(net)` runs what `python dissect.py` runs,
on a net you hold instead of a checkpoint; `prune_net` is one pruning step for your own training loop.

    from convdissect import dissect_net, prune_net
    d = dissect_net(net, out_dir="my_dissection")          # MNIST's val images, like dissect.py
    d.labels["units"][0]["label"], d.claims["fidelity"], d.report   # report.html's path
    d.to_tensorboard(writer)                               # labels and fidelity into your SummaryWriter
    kept = prune_net(net, images, labels, {"conv2": 16}, "activation_variance")   # then retrain

The settings are dissect.py's (conf/dissect.yaml), changed with Hydra override strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from convdissect.config import compose_for
from convdissect.dissection import dissect
from convdissect.errors import UserInputError
from convdissect.models.prunable import layer_width, producer_consumer_table
from convdissect.pruning.criteria import Calibration, parse_criterion, score_layer
from convdissect.pruning.cut import cut_channels
from convdissect.pruning.schedule import best
from convdissect.report.choices import labels_markdown


@dataclass
class Dissection:
    """What dissect wrote, read back: labels.json, claims.json (None for a HandNet) and where the rest is."""

    labels: dict
    claims: dict | None
    out_dir: Path

    @property
    def report(self) -> Path | None:
        """report.html, or None where report.enabled=false."""
        path = self.out_dir / "report.html"
        return path if path.is_file() else None

    @property
    def tensorboard_dir(self) -> Path:
        """The dissection's TensorBoard events (its figures, labels and embeddings)."""
        return self.out_dir / "tensorboard"

    def to_tensorboard(self, writer: SummaryWriter, step: int = 0) -> None:
        """Into your own SummaryWriter: the labels as one text table (`dissect/labels`) and each layer's
        median fidelity next to its shuffled null (`dissect/fidelity/<layer>`, `.../shuffled`)."""
        writer.add_text("dissect/labels", labels_markdown(self.labels), step)
        for layer, record in ((self.claims or {}).get("fidelity") or {}).items():
            for key, tag in (("median", layer), ("shuffled", f"{layer}/shuffled")):
                if record.get(key) is not None:
                    writer.add_scalar(f"dissect/fidelity/{tag}", record[key], step)


def dissect_net(
    net: nn.Module,
    images: torch.Tensor | None = None,
    digits: torch.Tensor | None = None,
    out_dir: str | Path = "dissection",
    overrides: list[str] = (),
) -> Dissection:
    """Dissect `net` (a SimpleConvNet, a HandNet or any other ConvNet, measured through forward hooks:
    docs/own_net.md) into out_dir: labels with their fidelity,
    the claims next to their nulls and, unless `report.enabled=false` is among the overrides, the
    report. images [N, 1, 28, 28], normalised as the net was trained, with their digits [N]; by
    default the data set's val images (`n_images`, `data=`). Fidelity and the ablation are
    scored on the data set's test images either way."""
    out_dir = Path(out_dir)
    labels = dissect(compose_for("dissect", overrides, out_dir), net, images, digits)
    claims = out_dir / "claims.json"
    return Dissection(labels, json.loads(claims.read_text()) if claims.is_file() else None, out_dir)


def prune_net(
    net: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    widths: dict[str, int],
    criterion: str | dict[str, float] = "activation_variance",
    seed: int = 0,
) -> dict[str, list[int]]:
    """One pruning step, in place: score each named layer's out channels by `criterion` (a name of
    convdissect.pruning.criteria.CRITERIA, or {name: weight}) on the calibration images and their
    labels, keep the widths[layer] best, and cut them with Torch-Pruning (what reads them is cut
    too). Returns {layer: the kept channels, 0-based}. Rebuild your optimizer, retrain, repeat."""
    if len(images) == 0 or len(labels) != len(images):
        raise UserInputError(
            f"images, labels: need as many labels as images, at least one ({len(images)}, {len(labels)})"
        )
    table = producer_consumer_table(net)
    unknown = [layer for layer in widths if layer not in table]
    if unknown:
        raise UserInputError(f"widths: {unknown} not prunable; allowed layers {list(table)}")
    for layer, width in widths.items():
        now = layer_width(net.get_submodule(layer))
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= now:
            raise UserInputError(f"widths[{layer!r}]={width!r}: must be an integer in 1..{now} (its width now)")
    weights = parse_criterion(criterion)
    was_training = net.training
    net.eval()
    cal = Calibration(net, table, images, labels, torch.Generator().manual_seed(seed))
    keep = {layer: best(score_layer(cal, layer, weights)[0], width) for layer, width in widths.items()}
    cut_channels(net, keep, images[:1])
    net.train(was_training)
    return {layer: kept.tolist() for layer, kept in keep.items()}
