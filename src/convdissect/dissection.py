"""dissect(cfg), top to bottom: load a checkpoint; measure every unit once (with its nulls);
label (labels.json, claims.json); superstimuli; report (PNGs, report.html, TensorBoard).

A net is handled by its strategy: a SimpleConvNet is measured (convdissect.dissect.measure) and
its claims judged against untrained nets of the same widths (convdissect.dissect.claims); a HandNet is
explained from its parameters instead (also written as explanation.md).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from convdissect.analysis.ablation import ablation
from convdissect.analysis.fidelity import ABLATIONS
from convdissect.analysis.projections import projections, stage_activations, subsample
from convdissect.analysis.selectivity import OrientationTuning, orientation_tuning
from convdissect.analysis.superstimuli import Superstimuli, best_image_objective, standard_transforms, superstimuli
from convdissect.analysis.traced import trace, untrained_copy
from convdissect.analysis.traced_measures import LayerMeasures, measure_layers, sweep_position_pattern
from convdissect.config import instantiate, threads_within
from convdissect.conventions import unit_name
from convdissect.dissect import any_net
from convdissect.dissect.claims import check_claim_settings, claim_statistics
from convdissect.dissect.label_scores import class_selectivity_record, fidelity_record, label_net_record
from convdissect.dissect.labels import add_original_names, describe, write_labels
from convdissect.dissect.measure import NULL_NET_IMAGES, Measurements, measure
from convdissect.errors import UserInputError
from convdissect.handnet.explanation import explain, explanation_markdown
from convdissect.handnet.net import HandNet
from convdissect.models.checkpoint import pruned_channels, training_run_dir
from convdissect.models.simple_convnet import SimpleConvNet, equivalent_simple_convnet
from convdissect.pruning.rebuild import load_trained_net
from convdissect.report import figures
from convdissect.report.assemble import handnet_figures, raw, report_figures, superstimulus_figure
from convdissect.report.choices import check_report_settings, labels_markdown
from convdissect.report.figure import ReportFigure
from convdissect.report.page import write_report
from convdissect.runs import DISSECTED, check_run_dir, clear_outputs

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")
LAYERS = ("conv1", "conv2", "conv3", "fc4", "fc5")
ALIASES = {"fc5": "readout"}  # a HandNet's classes
# Seeds of the untrained nets (the nulls), far from the seeds runs are trained with.
UNTRAINED_SEED_BASE = 1000
# The images on which a net of another class is compared with the SimpleConvNet of its weights.
EQUIVALENCE_IMAGES = 64
# What a dissection writes besides its figures (*.png): removed first when overwrite=true.
DISSECTION_OUTPUTS = (
    "labels.json",
    "claims.json",
    "report.html",
    "superstimuli.pt",
    "separation.json",
    "explanation.md",
    "tensorboard",
)


MIN_PROJECTION_POINTS = 10
# An any net's report shows the superstimuli of each layer's first units (all are in superstimuli.pt).
SHOWN_SUPERSTIMULI = 32


def check_settings(cfg: DictConfig) -> None:
    """Bad settings fail before any work is done."""
    if cfg.split not in SPLITS:
        raise UserInputError(f"split={cfg.split!r}: allowed {list(SPLITS)}")
    for key in ("n_images", "claims.ablation_images", "fidelity.images"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserInputError(f"{key}={value!r}: must be a positive integer")
    points = cfg.report.projection_points
    if isinstance(points, bool) or not isinstance(points, int) or points < MIN_PROJECTION_POINTS:
        raise UserInputError(
            f"report.projection_points={points!r}: must be an integer >= {MIN_PROJECTION_POINTS} "
            "(the PCA / t-SNE subsample needs images of several digits)"
        )
    if cfg.fidelity.ablation not in ABLATIONS:
        raise UserInputError(f"fidelity.ablation={cfg.fidelity.ablation!r}: allowed {list(ABLATIONS)}")
    unknown = [layer for layer in cfg.superstimulus.layers if layer not in LAYERS]
    if unknown:
        raise UserInputError(f"superstimulus.layers: {unknown} unknown; allowed {list(LAYERS)}")
    check_claim_settings(cfg.claims)


def configured_superstimulus_layers(net, cfg: DictConfig) -> dict[str, str]:
    """{layer: layer} of cfg.superstimulus.layers the net has (conv2 is skipped for the no_conv2 variant
    and a HandNet; fc5 is a HandNet's readout)."""
    modules = dict(net.named_modules())
    layers = [layer if layer in modules else ALIASES.get(layer) for layer in cfg.superstimulus.layers]
    return {layer: layer for layer in layers if layer in modules}


def compute_superstimuli(net, cfg: DictConfig, layers: dict[str, str]) -> dict[str, Superstimuli]:
    """{layer: Superstimuli} of every unit of each labelled layer, its objective read by a forward hook
    on the module `layers` maps it to (an any net's conv: its folded BatchNorm, when folded)."""
    s = cfg.superstimulus
    transforms = standard_transforms(s.jitter, s.scale, s.rotate_deg)
    return {
        layer: superstimuli(
            net,
            module,
            steps=s.steps,
            lr=s.lr,
            param=s.param,
            transforms=transforms,
            l2=s.l2,
            tv=s.tv,
            seed=cfg.seed,
            progress=True,
        )
        for layer, module in layers.items()
    }


class SimpleConvNetDissection:
    """Measured: labels and claims from one Measurements, next to untrained nets of the same widths."""

    def __init__(self, net: SimpleConvNet, cfg: DictConfig, images: torch.Tensor, digits: torch.Tensor):
        self.net, self.cfg, self.images, self.digits = net, cfg, images, digits
        self.measured: Measurements | None = None
        self.claims: dict | None = None  # claims.json, once labelled

    def check(self) -> None:
        if self.cfg.report.enabled:
            check_report_settings(self.cfg.report, self.net, self.digits)

    def superstimulus_layers(self) -> dict[str, str]:
        return configured_superstimulus_layers(self.net, self.cfg)

    def label(self, out_dir: Path) -> dict:
        """Measure the net and its nulls; write labels.json and claims.json; return the labels."""
        cfg, net = self.cfg, self.net
        scored, scored_digits = instantiate(cfg.data).tensors("test", cfg.fidelity.images)
        left_out = cfg.fidelity.ablation  # what a weight a label leaves out reads
        self.measured = measure(net, self.images, scored_images=scored, digits=self.digits, ablation=left_out)
        untrained_nets = [untrained_like(net, UNTRAINED_SEED_BASE + i) for i in range(cfg.claims.untrained_seeds)]
        untrained = [measure(u, self.images, False, scored, self.digits, ablation=left_out) for u in untrained_nets]
        ablated, ablated_untrained = None, None
        if cfg.claims.ablation and "conv2" in self.measured.layers:
            test_images, test_digits = instantiate(cfg.data).tensors("test", cfg.claims.ablation_images)
            draws, seed = cfg.claims.ablation_draws, cfg.seed
            ablated = ablation(net, self.measured.contributions["conv2"], test_images, test_digits, draws, seed)
            ablated_untrained = [
                ablation(u, m.contributions["conv2"], test_images, test_digits, 0, seed)
                for u, m in zip(untrained_nets, untrained)
            ]
        claims = claim_statistics(self.measured, untrained, cfg.claims, cfg.seed, ablated, ablated_untrained)
        claims["fidelity"] = fidelity_record(self.measured, untrained)
        claims["settings"] = {"fidelity_ablation": left_out}
        claims["label_net"] = label_net_record(net, self.measured, scored, scored_digits)
        claims["class_selectivity"] = class_selectivity_record(self.measured, untrained)
        self.claims = claims
        (out_dir / "claims.json").write_text(json.dumps(claims, indent=2, ensure_ascii=False) + "\n")
        labels = describe(net, self.measured)
        add_original_names(labels, pruned_channels(cfg.ckpt_path))
        return labels

    def figures(self, labels: dict, stimuli: dict, writer: SummaryWriter, out_dir: Path):
        """Projections (their scores also to separation.json), the projector embeddings, then every figure."""
        cfg, net, images, digits = self.cfg, self.net, self.images, self.digits
        chosen = subsample(len(images), cfg.report.projection_points, cfg.seed)
        activations = stage_activations(net, images[chosen])
        projected = projections(activations, digits[chosen].cpu(), cfg.seed, progress=True)
        separation = {p.stage: {"silhouette": p.silhouette, "knn_acc": p.knn_accuracy} for p in projected}
        (out_dir / "separation.json").write_text(json.dumps(separation, indent=2) + "\n")
        log_embeddings(writer, activations, digits[chosen].cpu(), raw(images[chosen]).cpu())
        figures = report_figures(
            net, self.measured, images, digits, labels, stimuli, projected, digits[chosen].cpu(), cfg.report, cfg.seed
        )
        return figures, projected, ""


class HandNetDissection:
    """Explained from its parameters (handnet/explanation.py); its report has the figures that apply to
    conv1 -> conv3 -> readout."""

    def __init__(self, net: HandNet, cfg: DictConfig, images: torch.Tensor, digits: torch.Tensor):
        self.net, self.cfg, self.images, self.digits = net, cfg, images, digits
        self.claims = None  # explained from its parameters: no claims to judge

    def check(self) -> None:
        pass  # the report's channel choices pick dissections, which a HandNet does not get

    def superstimulus_layers(self) -> dict[str, str]:
        return configured_superstimulus_layers(self.net, self.cfg)

    def label(self, out_dir: Path) -> dict:
        labels = explain(self.net)
        (out_dir / "explanation.md").write_text(explanation_markdown(labels))
        return labels

    def figures(self, labels: dict, stimuli: dict, writer: SummaryWriter, out_dir: Path):
        cfg = self.cfg
        return (
            handnet_figures(self.net, self.images, self.digits, labels, stimuli, cfg.report, cfg.seed),
            [],
            " Explained from its parameters.",
        )


class AnyConvNetDissection:
    """Measured through forward hooks: any convolutional classifier other than a SimpleConvNet or HandNet."""

    def __init__(self, net: nn.Module, cfg: DictConfig, images: torch.Tensor, digits: torch.Tensor):
        self.net, self.cfg, self.images, self.digits = net, cfg, images, digits
        self.measured: list[LayerMeasures] = []
        self.claims: dict | None = None

    def check(self) -> None:
        pass  # the report's channel choices pick a SimpleConvNet's units; this report shows every layer

    def label(self, out_dir: Path) -> dict:
        """Measure the net and its untrained copy, labels fitted on the dissection images and scored on
        cfg.fidelity.images test images (as a SimpleConvNet's); write claims.json; return the labels."""
        cfg, ablation = self.cfg, self.cfg.fidelity.ablation
        scored = instantiate(cfg.data).tensors("test", cfg.fidelity.images)[0].to(self.images.device)
        self.measured = measure_layers(
            trace(self.net, self.images), trace(self.net, scored), self.digits, ablation=ablation
        )
        copy = untrained_copy(self.net, any_net.UNTRAINED_SEED)
        n = NULL_NET_IMAGES  # as a SimpleConvNet's null nets: fitted and scored on fewer images
        traced_copy = (trace(copy, self.images[:n]), trace(copy, scored[:n]))
        untrained = measure_layers(*traced_copy, self.digits[:n], shuffled=False, ablation=ablation)
        sweep_position_pattern(self.net, self.measured)
        sweep_position_pattern(copy, untrained)
        self.claims = any_net.claims_record(self.measured, untrained, any_net.UNTRAINED_SEED) | {
            "settings": {"fidelity_ablation": ablation}
        }
        (out_dir / "claims.json").write_text(json.dumps(self.claims, indent=2, ensure_ascii=False) + "\n")
        labels = {
            "net": any_net.ANY_NET,
            "class": type(self.net).__name__,
            "layers": [m.name for m in self.measured],
            "widths": [m.traced.outputs.shape[1] for m in self.measured],
            "units": any_net.describe(self.measured, self._first_conv_tuning()),
        }
        add_original_names(labels, pruned_channels(self.cfg.ckpt_path))
        return labels

    def superstimulus_layers(self) -> dict[str, str]:
        """Every traced layer, read where its labels read it (a conv's folded BatchNorm)."""
        return {m.name: m.traced.folded or m.name for m in self.measured}

    def _first_conv_tuning(self) -> OrientationTuning | None:
        """The first conv's responses (its BatchNorm's, when folded) to line strokes at every orientation."""
        first = next((m.traced for m in self.measured if m.fit is not None), None)
        return None if first is None else orientation_tuning(self.net, [first.folded or first.name])

    def figures(self, labels: dict, stimuli: dict, writer: SummaryWriter, out_dir: Path):
        superstimuli = (superstimulus_figure(m.name, stimuli, m.name, SHOWN_SUPERSTIMULI) for m in self.measured)
        kernels = self._kernel_figures(labels)
        return itertools.chain(kernels, *superstimuli), [], " Measured through forward hooks (docs/own_net.md)."

    def _kernel_figures(self, labels: dict):
        """The first conv's kernels, each beside its fitted line/edge pattern."""
        for m in self.measured:
            if m.fit is None:
                continue
            kernels = m.traced.layer.weight.detach().cpu()[:, 0]
            grids = torch.stack([kernels, m.fit.kernels()], dim=1).flatten(0, 1)
            units = [u for u in labels["units"] if u["layer"] == m.name]
            names = [name for u in units for name in (u["name"], "fit")]
            texts = [text for u in units for text in ("", u["label"])]
            title = f"{m.name}: kernels and their fitted line/edge patterns"
            entry = ReportFigure(
                m.name,
                f"{m.name}_kernels",
                title,
                "Each kernel (left) beside the line-family member fitted to it (right), with its R².",
            )
            yield entry, figures.weight_grids(grids, names, texts, title)


def strategy_for(net, cfg: DictConfig, images: torch.Tensor, digits: torch.Tensor):
    """The one place a net's kind picks how it is dissected."""
    if isinstance(net, HandNet):
        return HandNetDissection(net, cfg, images, digits)
    if isinstance(net, SimpleConvNet):
        return SimpleConvNetDissection(net, cfg, images, digits)
    equivalent = equivalent_simple_convnet(net, images[:EQUIVALENCE_IMAGES])
    if equivalent is not None:
        log.info("the net computes the SimpleConvNet %s: dissected as it (conv1 ... fc5)", equivalent.widths)
        return SimpleConvNetDissection(equivalent, cfg, images, digits)
    return AnyConvNetDissection(net, cfg, images, digits)


def untrained_like(net: SimpleConvNet, seed: int) -> SimpleConvNet:
    """A freshly initialised SimpleConvNet of the same widths (the null of "learned")."""
    torch.manual_seed(seed)
    return SimpleConvNet(net.widths, conv2=net.has_conv2).to(next(net.parameters()).device).eval()


def tensorboard_dir(cfg: DictConfig, out_dir: Path) -> Path:
    """Beside the training run's events when the checkpoint lies in a run dir, so one
    `tensorboard --logdir RUN` shows training and dissection; else <out_dir>/tensorboard."""
    run = training_run_dir(cfg.ckpt_path)
    return (
        run / "tensorboard" / f"dissect_{out_dir.name}"
        if run is not None and run not in out_dir.parents
        else out_dir / "tensorboard"
    )


def dissect(
    cfg: DictConfig,
    net: nn.Module | None = None,
    images: torch.Tensor | None = None,
    digits: torch.Tensor | None = None,
) -> dict:
    """Write labels.json (claims.json for a SimpleConvNet; when enabled, superstimuli.pt and the
    report) into cfg.paths.output_dir; return the labels. The net is cfg.ckpt_path's unless given;
    the images and their digits are cfg.split's first cfg.n_images unless given."""
    with threads_within(cfg.get("threads")):  # a caller in Python keeps its own threads
        return _dissect(cfg, net, images, digits)


def _dissect(cfg: DictConfig, net: nn.Module | None, images: torch.Tensor | None, digits: torch.Tensor | None) -> dict:
    L.seed_everything(cfg.seed, verbose=False)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    if cfg.get("overwrite"):  # none of a previous dissection's files may pass for this one's
        previous = [p.name for p in out_dir.iterdir() if p.suffix == ".png" or p.name in DISSECTION_OUTPUTS]
        clear_outputs(out_dir, keep=[cfg.ckpt_path], outputs=previous)
    elif (out_dir / DISSECTED).exists():  # a dir named in Python (dissect_net); dissect.py checks it earlier
        check_run_dir(out_dir, overwrite=False, resuming=False)
    net = (load_trained_net(cfg.ckpt_path)[0] if net is None else net).eval()
    if images is None:
        images, digits = instantiate(cfg.data).tensors(cfg.split, cfg.n_images)
    elif len(images) == 0 or digits is None or len(digits) != len(images):
        raise UserInputError(f"digits: one class per image needed ({len(images)} images, got {digits!r:.40})")
    strategy = strategy_for(net, cfg, images, digits)
    strategy.check()

    start = time.perf_counter()
    labels = strategy.label(out_dir)
    log.info("%d units measured and labelled in %.1f s", len(labels["units"]), time.perf_counter() - start)

    start = time.perf_counter()
    found = compute_superstimuli(net, cfg, strategy.superstimulus_layers()) if cfg.superstimulus.enabled else {}
    stimuli = {layer: s.images.cpu() for layer, s in found.items()}
    if stimuli:
        torch.save(stimuli, out_dir / "superstimuli.pt")
        add_superstimulus_strength(labels, net, found, images)
        log.info("superstimuli in %.1f s", time.perf_counter() - start)
    write_labels(labels, out_dir / "labels.json")

    if cfg.report.enabled:
        start = time.perf_counter()
        header = (
            f"checkpoint {cfg.ckpt_path or 'none (a net given in Python)'}; {len(images)} images"
            f"{'' if cfg.ckpt_path is None else ' of the ' + cfg.split + ' split'}; channel numbers are 1-based."
        )
        with SummaryWriter(str(tensorboard_dir(cfg, out_dir))) as writer:
            writer.add_text("labels", labels_markdown(labels))
            figures, projected, note = strategy.figures(labels, stimuli, writer, out_dir)
            write_report(figures, labels, projected, out_dir, writer, cfg.report.dpi, header + note, strategy.claims)
        log.info("report in %.1f s", time.perf_counter() - start)
    log.info("outputs in %s", out_dir)
    return labels


def add_superstimulus_strength(labels: dict, net, found: dict[str, Superstimuli], images: torch.Tensor) -> None:
    """Each labelled unit's superstimulus objective next to the best dissection image's: a real
    maximum scores above every image (labels.json's `superstimulus_objective`, `best_image_objective`)."""
    units = {u["name"]: u for u in labels["units"]}
    for layer, s in found.items():
        best = best_image_objective(net, s.layer, images.to(next(net.parameters()).device)).cpu()
        for channel, value in zip(s.channels, s.activation.tolist()):
            unit = units.get(unit_name(layer, channel + 1))
            if unit is not None:
                unit["superstimulus_objective"] = round(value, 4)
                unit["best_image_objective"] = round(float(best[channel]), 4)


def log_embeddings(
    writer: SummaryWriter, activations: dict[str, torch.Tensor], digits: torch.Tensor, thumbnails: torch.Tensor
) -> None:
    """Each stage's activations as a TensorBoard projector embedding (interactive 3D PCA and
    t-SNE), with the digit as metadata and the 28x28 image as its sprite."""
    metadata = [str(int(d)) for d in digits]
    for stage, x in activations.items():
        writer.add_embedding(x, metadata=metadata, label_img=thumbnails, tag=stage)
