"""Measure a SimpleConvNet once, into one `Measurements` object: the first step of dissect
(measure -> label -> report). Labels (describe.py), the report and the claims (convdissect.dissect.claims)
all read their numbers from it; docs/measures.md defines each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convdissect.analysis.activations import channel_responses, conv_layers
from convdissect.analysis.contributions import SignedContributions, signed_contributions
from convdissect.analysis.fits import GridStatistics, LineFit, fit_lines, grid_statistics
from convdissect.analysis.selectivity import (
    OrientationTuning,
    PositionPattern,
    class_means,
    orientation_tuning,
    position_pattern,
)
from convdissect.dissect.programs import LayerPrograms, conv1_programs, fc4_programs, layer_programs

# A null (untrained) net's labels are fitted and scored on this many of each set of images.
NULL_NET_IMAGES = 300
# The grids of claim 3: those on each out channel's inputs with the largest |signed contribution|.
GRIDS_PER_CHANNEL = 3


@dataclass
class Measurements:
    """Every number dissect reports about one net (all tensors on the CPU)."""

    widths: list[int]
    layers: list[str]  # conv layers, e.g. ["conv1", "conv2", "conv3"]
    conv1_fit: LineFit  # conv1's kernels as lines/edges
    tuning: OrientationTuning  # conv1 and conv2 orientation tuning curves
    contributions: dict[str, SignedContributions]  # conv2 and conv3
    driver_fit: LineFit | None  # conv2: the grid w_kj on each channel k's main driver j
    driver: torch.Tensor | None  # [C2] that main driver j (0-based); -1 for a silent channel
    grids: dict[str, GridStatistics]  # conv2 and conv3: grids on the strongest inputs (claim 3)
    position_pattern: dict[str, PositionPattern]  # every conv layer
    responses: dict[str, torch.Tensor]  # {layer: [N, C]} responses to the dissection images
    programs: dict[str, LayerPrograms]  # every conv unit's label as a program, with its fidelity
    class_means: dict[str, torch.Tensor]  # {"fc4": [10, C]} mean response per digit (when the digits are known)


def main_drivers(contributions: SignedContributions) -> torch.Tensor:
    """[Cout] each out channel's input with the largest drive share; -1 where nothing drives it."""
    drive = contributions.drive
    top = drive.argmax(dim=1)
    return torch.where(drive.amax(dim=1) > 0, top, torch.full_like(top, -1))


def strongest_grids(
    weight: torch.Tensor, contributions: SignedContributions, per_channel: int = GRIDS_PER_CHANNEL
) -> torch.Tensor:
    """The weight grids [Cout * per_channel, k, k] on each out channel's inputs of largest |c_kj|."""
    order = contributions.mean.abs().argsort(dim=1, descending=True)[:, :per_channel]
    return weight.detach().cpu()[torch.arange(len(order))[:, None], order].flatten(0, 1)


def measure(
    net: nn.Module,
    images: torch.Tensor,
    for_labels: bool = True,
    scored_images: torch.Tensor | None = None,
    digits: torch.Tensor | None = None,
    programs: bool = True,
    ablation: str = "mean",
) -> Measurements:
    """All measurements of a SimpleConvNet on normalised images [N, 1, 28, 28] and on probes; the
    labels' programs are fitted on `images` and scored on `scored_images` (default: the second half
    of `images`, the first half fitting). for_labels=False (a null net) skips what only the labels
    and the report read: conv1's and conv2's position/pattern sweeps and the responses to the images.
    `digits` (the images' classes) adds fc4's class means; programs=False skips the labels' programs
    (what the claim statistics alone do not read); `ablation` is what a weight the label leaves out
    reads (analysis.fidelity.ABLATIONS)."""
    net.eval()
    images = images.to(next(net.parameters()).device)
    if scored_images is None:
        half = len(images) // 2
        fit_images, scored_images = images[:half], images[half:]
    else:
        fit_images, scored_images = images, scored_images.to(images.device)
    if not for_labels:  # a null net: its labels' fidelity only, on fewer images (docs/measures.md)
        fit_images, scored_images = fit_images[:NULL_NET_IMAGES], scored_images[:NULL_NET_IMAGES]
    layers = conv_layers(net)
    inner = [layer for layer in layers if layer != "conv1"]
    contributions = {layer: signed_contributions(net, layer, images) for layer in inner}
    grids = {
        layer: grid_statistics(strongest_grids(getattr(net, layer).weight, contributions[layer])) for layer in inner
    }
    driver_fit, driver = None, None
    if "conv2" in layers:
        driver = main_drivers(contributions["conv2"])
        weight = net.conv2.weight.detach().cpu()
        driver_fit = fit_lines(weight[torch.arange(len(driver)), driver.clamp_min(0)])
    conv1_fit = fit_lines(net.conv1.weight.detach()[:, 0])
    label_programs = {}
    if programs:
        label_programs = {"conv1": conv1_programs(net, conv1_fit, fit_images, scored_images, shuffled=for_labels)}
        label_programs |= {
            layer: layer_programs(net, layer, fit_images, scored_images, for_labels, ablation) for layer in inner
        }
        label_programs["fc4"] = fc4_programs(net, fit_images, scored_images, for_labels, ablation)
    return Measurements(
        widths=list(net.widths),
        layers=layers,
        conv1_fit=conv1_fit,
        tuning=orientation_tuning(net, [layer for layer in layers if layer != "conv3"]),
        contributions=contributions,
        driver_fit=driver_fit,
        driver=driver,
        grids=grids,
        position_pattern={layer: position_pattern(net, layer) for layer in layers if for_labels or layer == "conv3"},
        responses=channel_responses(net, images, layers) if for_labels else {},
        programs=label_programs,
        class_means={} if digits is None else class_means(net, images, digits.to(images.device), ["fc4"]),
    )


def source_layer(m: Measurements, layer: str) -> str:
    """The conv layer feeding `layer` in the measured net."""
    position = m.layers.index(layer)
    return m.layers[position - 1]
