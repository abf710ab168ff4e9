"""convdissect from Python, for notebooks: `dissect_net(net)` runs what `python dissect.py` runs,
on a net you hold instead of a checkpoint.

    from convdissect import dissect_net
    d = dissect_net(net, out_dir="my_dissection")          # MNIST's val images, like dissect.py
    d.labels["units"][0]["label"], d.claims["fidelity"], d.report   # report.html's path

The settings are dissect.py's (conf/dissect.yaml), changed with Hydra override strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from torch import nn

from convdissect.config import CONFIG_DIR
from convdissect.dissect.run import dissect


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


def dissect_net(
    net: nn.Module,
    images: torch.Tensor | None = None,
    digits: torch.Tensor | None = None,
    out_dir: str | Path = "dissection",
    overrides: list[str] = (),
) -> Dissection:
    """Dissect `net` (a SimpleConvNet or a HandNet) into out_dir: labels with their fidelity,
    the claims next to their nulls and, unless `report.enabled=false` is among the overrides, the
    report. images [N, 1, 28, 28], normalised as the net was trained, with their digits [N]; by
    default the data set's val images (`n_images`, `data=`). Fidelity and the ablation are
    scored on the data set's test images either way."""
    out_dir = Path(out_dir)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="dissect", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
    labels = dissect(cfg, net, images, digits)
    claims = out_dir / "claims.json"
    return Dissection(labels, json.loads(claims.read_text()) if claims.is_file() else None, out_dir)
