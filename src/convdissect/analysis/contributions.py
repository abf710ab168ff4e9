"""What the in channels of a conv layer contribute to its out channels.

- `signed_contributions`: over many images, each input's signed, background-corrected share of
  what survives ReLU and max-pool (drivers and inhibitors; docs/measures.md);
- `inner_contributions`: the article's big figure for one out channel on one image:
  a_j = x_j (*) w_kj, c_j = sum_{i<=j} a_i (+ bias at the last row), so c_last == y.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.analysis.activations import record, record_in_out
from convdissect.conventions import parse_unit_name
from convdissect.data.probes import normalise


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

    signed: torch.Tensor  # [Cin] the signed contributions c_kj on this image (SignedContributions)

    @property
    def order(self) -> torch.Tensor:
        """In channels, largest |signed contribution| first."""
        return self.signed.abs().argsort(descending=True)


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
    signed = signed_contributions(net, layer, image[None]).mean[index - 1]
    return InnerContributions(unit, seen[0], w, a, c, bias, out, signed)


# The max-pool after each inner conv layer of a SimpleConvNet (conv2: 14x14 -> 7x7, conv3: 3x3 -> 1x1).
POOL_AFTER = {"conv2": 2, "conv3": 3}


@dataclass
class SignedContributions:
    """What each in channel j adds to the part of out channel k that survives ReLU and max-pool,
    with its value on a blank image subtracted (docs/measures.md, "Signed contributions").

    Per image n: c_kj(n) = sum over the surviving cells p of (a_kj(n, p) - a_kj(blank, p)), where
    the surviving cells are the max-pool winners with y_k > 0. Exactly:
    output_k(n) = baseline_k(n) + sum_j c_kj(n), the sum of y_k over its surviving cells, and
    baseline_k(n) = the blank image's y_k (bias included) summed over the same cells.
    """

    layer: str
    cells: torch.Tensor  # [Cout, Cin, kh, kw] mean over the images of what each cell q of w_kj adds
    baseline: torch.Tensor  # [Cout] mean of baseline_k
    output: torch.Tensor  # [Cout] mean of output_k

    @property
    def mean(self) -> torch.Tensor:
        """[Cout, Cin] mean over the images of c_kj (the sum over the grid's cells)."""
        return self.cells.sum(dim=(-2, -1))

    @property
    def drive(self) -> torch.Tensor:
        """[Cout, Cin] share of each excitatory input (mean c_kj > 0) in the channel's drive
        (the sum of its positive mean c_kj); each row sums to 1 (0 for a silent channel)."""
        positive = self.mean.clamp_min(0.0)
        return positive / positive.sum(dim=1, keepdim=True).clamp_min(1e-12)

    @property
    def inhibition(self) -> torch.Tensor:
        """[Cout, Cin] share of each inhibitory input (mean c_kj < 0) in the channel's inhibition."""
        negative = (-self.mean).clamp_min(0.0)
        return negative / negative.sum(dim=1, keepdim=True).clamp_min(1e-12)

    def drivers(self, k: int) -> list[tuple[int, float]]:
        """(in channel j, its drive share) of out channel k's excitatory inputs, strongest first."""
        return _ranked(self.drive[k])

    def inhibitors(self, k: int) -> list[tuple[int, float]]:
        return _ranked(self.inhibition[k])


def _ranked(shares: torch.Tensor) -> list[tuple[int, float]]:
    order = shares.argsort(descending=True).tolist()
    return [(j, float(shares[j])) for j in order if shares[j] > 0]


def blank_image(like: torch.Tensor) -> torch.Tensor:
    """The normalised blank (all-black) image [1, 1, 28, 28]: MNIST's background."""
    return normalise(torch.zeros(1, *like.shape[1:], dtype=like.dtype, device=like.device))


@torch.no_grad()
def signed_contributions(net: nn.Module, layer: str, images: torch.Tensor) -> SignedContributions:
    """SignedContributions of conv2 or conv3 on normalised images [N, 1, 28, 28].

    sum_n c_kj(n) = sum_q w_kj(q) G_kj(q) with G the conv's weight gradient for the input
    x - x_blank and the surviving-cell mask as output gradient: one call, no [N, Cout, Cin, H, W] tensor.
    """
    conv = getattr(net, layer)
    images = images.to(next(net.parameters()).dtype)
    seen, y = record_in_out(net, images, layer)
    seen_blank, y_blank = record_in_out(net, blank_image(images), layer)
    pool = POOL_AFTER[layer]
    pooled, winners = F.max_pool2d(y.relu(), pool, return_indices=True)
    mask = (
        torch.zeros_like(y).flatten(2).scatter_(2, winners.flatten(2), (pooled > 0).to(y.dtype).flatten(2)).view_as(y)
    )
    return masked_contributions(layer, conv, seen, seen_blank, y, y_blank, mask)


# Activations that pass (almost) nothing below 0: a unit's drive is read where its output is positive.
RECTIFIERS = (nn.ReLU, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU)


def surviving(outputs: torch.Tensor, activation: nn.Module | None) -> torch.Tensor:
    """1 where the outputs survive the activation (None: a ReLU), else 0: a rectifier's positive cells,
    every cell of an activation that passes negative values on (Tanh, Sigmoid, Identity)."""
    if activation is None or isinstance(activation, RECTIFIERS):
        return (outputs > 0).to(outputs.dtype)
    return torch.ones_like(outputs)


@torch.no_grad()
def masked_contributions(
    layer: str,
    conv: nn.Conv2d,
    seen: torch.Tensor,
    seen_blank: torch.Tensor,
    y: torch.Tensor,
    y_blank: torch.Tensor,
    mask: torch.Tensor,
) -> SignedContributions:
    """SignedContributions of a conv from its inputs [N, Cin, H, W] and outputs [N, Cout, H', W'] on the
    images and on the blank image ([1, ...]), the surviving cells being mask's ones [N, Cout, H', W']."""
    grad = torch.nn.grad.conv2d_weight(
        seen - seen_blank, conv.weight.shape, mask, stride=conv.stride, padding=conv.padding, dilation=conv.dilation
    )
    n = len(seen)
    cells = grad * conv.weight.detach() / n
    baseline = (mask * y_blank).sum(dim=(0, 2, 3)) / n
    output = (mask * y).sum(dim=(0, 2, 3)) / n
    return SignedContributions(layer, cells.cpu(), baseline.cpu(), output.cpu())
