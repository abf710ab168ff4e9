"""dissect(cfg): load a checkpoint, measure every unit, write labels.json (and superstimuli.pt),
then the report: every figure as a PNG, report.html, and TensorBoard events in <run>/tensorboard
(the figures, and the input/conv3/fc4/fc5 activations as projector embeddings).

A HandNet is not measured: its labels are its explanation from its parameters (HandNet.explain,
also written as explanation.md), and its report has the figures that apply to conv1 -> conv3 -> readout.

Each step is a plain function of the net and the measurements before it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from convdissect.config import instantiate
from convdissect.dissect.activations import conv_layers
from convdissect.dissect.checkpoint import load_any_net
from convdissect.dissect.contributions import Redundancy, redundancy
from convdissect.dissect.describe import describe, write_labels
from convdissect.dissect.handnet_explanation import explain, explanation_markdown
from convdissect.dissect.projections import projections, stage_activations, subsample
from convdissect.dissect.report import check_report_settings, handnet_figures, raw, report_figures, write_report
from convdissect.dissect.superstimuli import standard_transforms, superstimuli
from convdissect.errors import UserInputError
from convdissect.models.handnet import HandNet

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")
LAYERS = ("conv1", "conv2", "conv3", "fc4", "fc5")
ALIASES = {"fc5": "readout"}  # a HandNet's classes


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
    (conv2 is skipped for the no_conv2 variant and a HandNet; fc5 is a HandNet's readout)."""
    s = cfg.superstimulus
    modules = dict(net.named_modules())
    transforms = standard_transforms(s.jitter, s.scale, s.rotate_deg)
    layers = [layer if layer in modules else ALIASES.get(layer) for layer in s.layers]
    return {
        layer: superstimuli(net, layer, steps=s.steps, lr=s.lr, param=s.param, transforms=transforms,
                            l2=s.l2, tv=s.tv, seed=cfg.seed, progress=True).images.cpu()
        for layer in layers
        if layer in modules
    }  # fmt: skip


def dissect(cfg: DictConfig) -> dict:
    """Write labels.json (and, when enabled, superstimuli.pt and the report) into
    cfg.paths.output_dir; return the labels."""
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    check_settings(cfg)
    net = load_any_net(cfg.ckpt_path)
    handnet = isinstance(net, HandNet)
    images, digits = dissection_images(cfg)
    if cfg.report.enabled and not handnet:  # its choices pick the dissections, which a HandNet does not get
        check_report_settings(cfg.report, net, digits)
    start = time.perf_counter()
    red = redundancy(net, "conv2", images) if "conv2" in conv_layers(net) else None
    labels = explain(net) if handnet else describe(net, images, red)
    write_labels(labels, out_dir / "labels.json")
    if handnet:
        (out_dir / "explanation.md").write_text(explanation_markdown(labels))
    log.info("%d units described in %.1f s", len(labels["units"]), time.perf_counter() - start)
    start = time.perf_counter()
    stimuli = compute_superstimuli(net, cfg) if cfg.superstimulus.enabled else {}
    if stimuli:
        torch.save(stimuli, out_dir / "superstimuli.pt")
        log.info("superstimuli in %.1f s", time.perf_counter() - start)
    if cfg.report.enabled:
        start = time.perf_counter()
        report(net, images, digits, labels, stimuli, red, cfg, out_dir)
        log.info("report in %.1f s", time.perf_counter() - start)
    log.info("outputs in %s", out_dir)
    return labels


def log_embeddings(writer: SummaryWriter, activations: dict[str, torch.Tensor], digits: torch.Tensor, thumbnails: torch.Tensor) -> None:
    """Each stage's activations as a TensorBoard projector embedding (interactive 3D PCA and
    t-SNE), with the digit as metadata and the 28x28 image as its sprite."""
    metadata = [str(int(d)) for d in digits]
    for stage, x in activations.items():
        writer.add_embedding(x, metadata=metadata, label_img=thumbnails, tag=stage)


def report(net, images: torch.Tensor, digits: torch.Tensor, labels: dict, stimuli: dict, red: Redundancy | None, cfg: DictConfig,
           out_dir: Path) -> Path:  # fmt: skip
    """Projections on a subsample (their separation scores also to separation.json), the projector
    embeddings, every figure (PNG + TensorBoard) and report.html. A HandNet: its figures and
    explanation only."""
    header = f"checkpoint {cfg.ckpt_path}; {len(images)} images of the {cfg.split} split; channel numbers are 1-based."
    if isinstance(net, HandNet):
        with SummaryWriter(str(out_dir / "tensorboard")) as writer:
            figures = handnet_figures(net, images, digits, labels, stimuli, cfg.report, cfg.seed)
            return write_report(figures, labels, [], out_dir, writer, cfg.report.dpi, header + " Explained from its parameters.")
    chosen = subsample(len(images), cfg.report.projection_points, cfg.seed)
    activations = stage_activations(net, images[chosen])
    projected = projections(activations, digits[chosen].cpu(), cfg.seed, progress=True)
    separation = {p.stage: {"silhouette": p.silhouette, "knn_acc": p.knn_accuracy} for p in projected}
    (out_dir / "separation.json").write_text(json.dumps(separation, indent=2) + "\n")
    with SummaryWriter(str(out_dir / "tensorboard")) as writer:
        log_embeddings(writer, activations, digits[chosen].cpu(), raw(images[chosen]).cpu())
        figures = report_figures(net, images, digits, labels, stimuli, projected, digits[chosen].cpu(), red, cfg.report, cfg.seed)
        return write_report(figures, labels, projected, out_dir, writer, cfg.report.dpi, header)
