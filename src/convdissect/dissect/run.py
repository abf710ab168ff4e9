"""dissect(cfg): load a checkpoint, measure every unit, write labels.json (and superstimuli.pt).

Each step is a plain function of the net and the measurements before it, so a later step (the
figures and the report) is one more call at the end of dissect().
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from convdissect.dissect.checkpoint import load_net
from convdissect.dissect.describe import describe, write_labels
from convdissect.dissect.superstimuli import standard_transforms, superstimuli
from convdissect.errors import UserInputError

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")
LAYERS = ("conv1", "conv2", "conv3", "fc4", "fc5")


def check_settings(cfg: DictConfig) -> None:
    """Bad settings fail before any work is done."""
    if cfg.split not in SPLITS:
        raise UserInputError(f"split={cfg.split!r}: allowed {list(SPLITS)}")
    if not isinstance(cfg.n_images, int) or cfg.n_images < 1:
        raise UserInputError(f"n_images={cfg.n_images!r}: must be a positive integer")
    unknown = [layer for layer in cfg.superstimulus.layers if layer not in LAYERS]
    if unknown:
        raise UserInputError(f"superstimulus.layers: {unknown} unknown; allowed {list(LAYERS)}")


def dissection_images(cfg: DictConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The first cfg.n_images normalised images and labels of cfg.split."""
    datamodule = instantiate(cfg.data)
    return datamodule.tensors(cfg.split, cfg.n_images)


def compute_superstimuli(net, cfg: DictConfig) -> dict[str, torch.Tensor]:
    """{layer: raw images [C, 1, 28, 28]} for every layer of cfg.superstimulus.layers the net has
    (conv2 is skipped for the no_conv2 variant)."""
    s = cfg.superstimulus
    modules = dict(net.named_modules())
    transforms = standard_transforms(s.jitter, s.scale, s.rotate_deg)
    return {
        layer: superstimuli(net, layer, steps=s.steps, lr=s.lr, param=s.param, transforms=transforms,
                            l2=s.l2, tv=s.tv, seed=cfg.seed, progress=True).images.cpu()
        for layer in s.layers
        if layer in modules
    }  # fmt: skip


def dissect(cfg: DictConfig) -> dict:
    """Write labels.json (and, when cfg.superstimulus.enabled, superstimuli.pt) into
    cfg.paths.output_dir; return the labels."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    check_settings(cfg)
    net = load_net(cfg.ckpt_path)
    images, _ = dissection_images(cfg)
    labels = describe(net, images)
    write_labels(labels, out_dir / "labels.json")
    if cfg.superstimulus.enabled:
        torch.save(compute_superstimuli(net, cfg), out_dir / "superstimuli.pt")
    log.info("%d units described; outputs in %s", len(labels["units"]), out_dir)
    return labels
