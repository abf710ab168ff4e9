"""Inner-channel dissection of a conv out channel (design.md §1, the article's big figure).

For out channel k of a conv layer and one input x (the layer's input, [Cin, H, W]):
a_j = x_j (*) w_kj (the contribution of in channel j), c_j = sum_{i<=j} a_i (+ bias at the last
row) and y = the channel's output, so c_last == y. Rows are ranked by strength ||a_j||.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.conventions import parse_unit_name
from convdissect.dissect.activations import record


@dataclass
class InnerContributions:
    """One out channel on one input; per-row tensors are indexed by in channel j (0-based)."""

    unit: str  # "conv2_3"
    x: torch.Tensor  # [Cin, H, W] the inputs x_j
    w: torch.Tensor  # [Cin, k, k] the weight grids w_j
    a: torch.Tensor  # [Cin, Ho, Wo] a_j = x_j (*) w_j
    c: torch.Tensor  # [Cin, Ho, Wo] running sums; c[-1] includes the bias
    bias: float
    y: torch.Tensor  # [Ho, Wo] the channel's real output

    @property
    def strength(self) -> torch.Tensor:
        """||a_j|| per in channel [Cin]."""
        return self.a.flatten(1).norm(dim=1)

    @property
    def order(self) -> torch.Tensor:
        """In channels, strongest contribution first."""
        return self.strength.argsort(descending=True)


def contributions(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """All a_kj for inputs x [N, Cin, H, W]: [N, Cout, Cin, Ho, Wo] (no bias).

    One depthwise conv: every in channel j is convolved with its grids w_kj for all k at once.
    """
    n, cin = x.shape[:2]
    cout, _, k, _ = conv.weight.shape
    # weight [Cin * Cout, 1, k, k]: group j holds w_{0..Cout-1, j}
    w = conv.weight.detach().to(x.dtype).transpose(0, 1).reshape(cin * cout, 1, k, k)
    a = F.conv2d(x, w, padding=conv.padding, stride=conv.stride, groups=cin)
    return a.reshape(n, cin, cout, *a.shape[-2:]).transpose(1, 2)


def inner_contributions(net: nn.Module, unit: str, image: torch.Tensor) -> InnerContributions:
    """Dissect one out channel ('conv2_3', 1-based) on one image [1, 28, 28] (normalised)."""
    layer, index = parse_unit_name(unit)
    conv = getattr(net, layer)
    image = image.to(next(net.parameters()).dtype)
    seen = record(net, image[None], [layer], what="input")[layer]
    out = record(net, image[None], [layer])[layer][0, index - 1]
    a = contributions(conv, seen)[0, index - 1]
    bias = float(conv.bias.detach()[index - 1]) if conv.bias is not None else 0.0
    c = a.cumsum(dim=0)
    c[-1] += bias
    w = conv.weight.detach()[index - 1]
    return InnerContributions(unit, seen[0], w, a, c, bias, out)


# Elements of a_kj held at once (x 4 bytes): bounds the memory of contribution_strengths.
CHUNK_ELEMENTS = 2**24


@torch.no_grad()
def contribution_strengths(net: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """Mean over the images of ||a_kj||: [Cout, Cin], how strongly in channel j drives out channel k."""
    conv = getattr(net, layer)
    seen = record(net, images, [layer], what="input")[layer]
    per_image = conv.out_channels * seen[0].numel()  # a_kj of one image has at most this many values
    chunk = max(1, CHUNK_ELEMENTS // per_image)
    total = torch.zeros(conv.out_channels, conv.in_channels, device=images.device)
    for start in range(0, len(seen), chunk):
        total += contributions(conv, seen[start : start + chunk]).flatten(3).norm(dim=3).sum(dim=0)
    return total / len(images)


@dataclass
class Redundancy:
    """Per out channel of conv2 (or conv3): its strongest in channel and that one's share."""

    dominant: torch.Tensor  # [Cout] 0-based in channel j with the strongest contribution
    share: torch.Tensor  # [Cout] its share of the summed strengths, 0-1
    strengths: torch.Tensor  # [Cout, Cin]


def redundancy(net: nn.Module, layer: str, images: torch.Tensor) -> Redundancy:
    """The article's conv2 finding as numbers: one in channel dominates each out channel."""
    strengths = contribution_strengths(net, layer, images)
    top, dominant = strengths.max(dim=1)
    share = top / strengths.sum(dim=1).clamp_min(1e-12)
    return Redundancy(dominant, share, strengths)
