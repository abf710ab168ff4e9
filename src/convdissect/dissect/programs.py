"""Every SimpleConvNet unit's label as a program (convdissect.analysis.unit_programs runs them on any
conv or Linear): its terms ranked by signed contribution, grown until the simulated unit reproduces the
real one, scored on held-out images (docs/measures.md, "Fidelity").

- conv1: up to three terms: the fitted line/edge kernel, the local brightness (a flat kernel), and a
  line/edge fitted to what the first two leave of the kernel (gains and bias by least squares);
- conv2: a term is one input (its whole grid);
- conv3: a term is one burst: a connected set of same-sign cells of one input's grid;
- fc4: a term is one conv3 unit (its pooled output).
The printed label is the shortest prefix whose fidelity on the fit images reaches PRINTED_R (at most
MAX_PRINTED terms); `terms_for_r90` is the shortest prefix reaching 0.9 on the scored images.
"""

from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.analysis.contributions import blank_image, signed_contributions
from convdissect.analysis.fidelity import pool_after, record_layer
from convdissect.analysis.fits import LineFit
from convdissect.analysis.unit_programs import (
    MAX_PRINTED,
    LayerPrograms,
    conv_programs,
    first_conv_programs,
    linear_programs,
)

# The numbers a reader reads per conv1 term: a line/edge (angle, width, offset, kind, gain); the
# brightness (its gain). Each conv1 label adds its bias.
CONV1_TERM_NUMBERS = (5, 1, 5)
# The curve of fidelity against the number of terms is reported at these lengths (and all).
CURVE_TERMS = (1, 2, 3, 5, 10)


def layer_programs(
    net: nn.Module,
    layer: str,
    fit_images: torch.Tensor,
    scored_images: torch.Tensor,
    shuffled: bool = True,
    ablation: str = "mean",
) -> LayerPrograms:
    """The programs of every unit of conv2 (a term: one input) or conv3 (a term: one burst), with their
    shuffled null (unless shuffled=False); the weights a label leaves out read the `ablation` reference
    (fidelity.ABLATIONS)."""
    contributions = signed_contributions(net, layer, fit_images)
    fit, scored = record_layer(net, layer, fit_images, scored_images, ablation)
    return conv_programs(layer, contributions, fit, scored, layer != "conv2", MAX_PRINTED[layer], shuffled)


def conv1_programs(
    net: nn.Module, fit: LineFit, fit_images: torch.Tensor, scored_images: torch.Tensor, shuffled: bool = True
) -> LayerPrograms:
    """conv1's labels run as their term kernels (analysis.unit_programs.first_conv_programs)."""
    return first_conv_programs("conv1", net.conv1, pool_after(net, "conv1"), fit, fit_images, scored_images, shuffled)


@torch.no_grad()
def fc4_programs(
    net: nn.Module,
    fit_images: torch.Tensor,
    scored_images: torch.Tensor,
    shuffled: bool = True,
    ablation: str = "mean",
) -> LayerPrograms:
    """fc4's units as programs over conv3's pooled features: a term is one conv3 unit
    (analysis.unit_programs.linear_programs)."""
    features = tuple(net.features(x) for x in (fit_images, scored_images, blank_image(fit_images)))
    return linear_programs("fc4", net.fc4, net.fc4_act, features, shuffled=shuffled, ablation=ablation)


class ProgramConv(nn.Module):
    """A conv layer whose units run their labels: the weights a label keeps read the input, every
    other weight reads the mean input map (a constant map, folded into the bias)."""

    def __init__(self, conv: nn.Conv2d, masks: torch.Tensor, means: torch.Tensor):
        super().__init__()
        weight = conv.weight.detach()
        masks = masks.to(weight)
        self.padding, self.stride = conv.padding, conv.stride
        self.weight = nn.Parameter(weight * masks, requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros(len(weight)).to(weight)
        folded = F.conv2d(means[None].to(weight), weight * (1 - masks), bias, padding=self.padding, stride=self.stride)
        self.register_buffer("bias_map", folded[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=self.padding, stride=self.stride) + self.bias_map


def label_net(
    net: nn.Module, programs: dict[str, LayerPrograms], terms: int | None = None, fidelity: float | None = None
) -> nn.Module:
    """A copy of the net whose conv units run their labels: conv1 its fitted kernels (when `programs`
    has conv1), conv2, conv3 and fc4 labels of the length LayerPrograms.lengths(terms, fidelity) gives."""
    copy = deepcopy(net).eval()
    for layer, layer_programs_ in programs.items():
        conv = getattr(net, layer)
        if layer_programs_.conv1 is not None:
            weight, bias = layer_programs_.conv1
            replaced = deepcopy(conv)
            with torch.no_grad():
                replaced.weight.copy_(weight)
                replaced.bias.copy_(bias)
            setattr(copy, layer, replaced)
        else:
            masks = layer_programs_.masks(conv.weight.shape, layer_programs_.lengths(terms, fidelity))
            program = ProgramLinear if isinstance(conv, nn.Linear) else ProgramConv
            setattr(copy, layer, program(conv, masks, layer_programs_.means))
    return copy


class ProgramLinear(nn.Module):
    """fc4 whose units run their labels: the kept inputs read the features, the others their means."""

    def __init__(self, linear: nn.Linear, masks: torch.Tensor, means: torch.Tensor):
        super().__init__()
        weight = linear.weight.detach()
        masks = masks.to(weight)
        self.weight = nn.Parameter(weight * masks, requires_grad=False)
        self.register_buffer("folded_bias", linear.bias.detach() + (weight * (1 - masks)) @ means.to(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.folded_bias)
