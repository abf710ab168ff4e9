"""Labels that execute: a label's content built into a simulated unit, scored against the real unit.

A label of a conv2/conv3 unit names some of the weights of its grids (whole inputs, or bursts: sets
of cells of one input's grid); the simulated unit keeps those weights and reads every other weight
against a reference input: the mean input map over the fit images (mean ablation, the default), or
another image's inputs (resample ablation). A conv1 label names up to
three kernels (a fitted line/edge, the local brightness, a second line/edge); their gains and bias are
fitted by least squares. Fidelity is the Pearson r of the
simulated unit's pooled, post-ReLU output with the real unit's over images and cells, after
subtracting each cell's mean over the images from both (docs/measures.md, "Fidelity").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.analysis.activations import conv_layers, record_in_out

# What a weight that a label leaves out reads: the mean input map, or another image's input.
ABLATIONS = ("mean", "resample")


def pool_after(net: nn.Module, layer: str) -> int:
    """The max-pool that follows a conv layer of a SimpleConvNet (conv1 of no_conv2 is pooled by 4)."""
    if layer == "conv1":
        return 2 if "conv2" in conv_layers(net) else 4
    return {"conv2": 2, "conv3": 3}[layer]


@dataclass
class LayerRecord:
    """What one conv layer reads and makes: its inputs on some images, its mean input map over the fit
    images, the reference a weight that a label leaves out reads, and the real pooled outputs."""

    layer: str
    conv: nn.Conv2d
    pool: int
    inputs: torch.Tensor  # [N, Cin, H, W] scored images
    mean: torch.Tensor  # [Cin, H, W] over the fit images
    real: torch.Tensor  # [N, Cout, h, w] relu + max-pool of the real output on the scored images
    reference: torch.Tensor  # [1, Cin, H, W] the mean map, or [N, Cin, H, W] each image's resampled inputs


@torch.no_grad()
def record_layer(
    net: nn.Module, layer: str, fit_images: torch.Tensor, scored_images: torch.Tensor, ablation: str = "mean"
) -> tuple[LayerRecord, LayerRecord]:
    """The layer's records on the fit images and on the scored images. Their reference is the fit images'
    mean map (ablation="mean"), or each image's inputs on another image of the same set ("resample")."""
    conv = getattr(net, layer)
    pool = pool_after(net, layer)
    records = []
    for images in (fit_images, scored_images):
        inputs, outputs = record_in_out(net, images, layer)
        records.append((inputs, F.max_pool2d(outputs.relu(), pool)))
    mean = records[0][0].mean(dim=0)
    return tuple(
        LayerRecord(layer, conv, pool, inputs, mean, real, reference_inputs(inputs, mean, ablation))
        for inputs, real in records
    )


def reference_inputs(inputs: torch.Tensor, mean: torch.Tensor, ablation: str) -> torch.Tensor:
    """[1, Cin, H, W] the mean map, or [N, Cin, H, W] the inputs of a seeded derangement of the images
    (image p[i] reads image p[i+1]: never its own)."""
    if ablation == "mean":
        return mean[None]
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0)).to(inputs.device)
    reference = torch.empty_like(inputs)
    reference[order] = inputs[order.roll(-1)]
    return reference


def centred_r(simulated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Pearson r over images and cells after removing each cell's mean over the images (dim 0):
    simulated [N, M, h, w] against real [N, h, w] -> [M]. A simulated unit that never varies scores 0;
    a real unit that never varies gives NaN (nothing to reproduce)."""
    s = (simulated - simulated.mean(dim=0)).flatten(2)  # [N, M, cells]
    r = (real - real.mean(dim=0)).flatten(1)[:, None]  # [N, 1, cells]
    cov = (s * r).sum(dim=(0, 2))
    s_norm, r_norm = s.square().sum(dim=(0, 2)).sqrt(), r.square().sum()
    if r_norm <= 0:
        return torch.full_like(cov, float("nan"))
    return torch.where(s_norm > 0, cov / (s_norm * r_norm.sqrt()).clamp_min(1e-30), torch.zeros_like(cov))


def term_outputs(rec: LayerRecord, k: int, masks: torch.Tensor) -> torch.Tensor:
    """The pre-activations [N, T, H', W'] that each term t of unit k adds on the scored images:
    the weights masks[t] [Cin, kh, kw] (0/1) of its grid applied to the inputs minus their mean map."""
    w = rec.conv.weight.detach()[k]  # [Cin, kh, kw]
    centred = rec.inputs - rec.reference
    conv = rec.conv
    per_input = masks.sum(dim=(-2, -1))  # [T, Cin] cells each term keeps on each input
    whole_inputs = ((per_input == 0) | (per_input == w[0].numel())).all() and bool((per_input > 0).sum(1).eq(1).all())
    if whole_inputs:  # each term one whole input: one depthwise conv, Cin times cheaper
        a = F.conv2d(centred, w[:, None], padding=conv.padding, stride=conv.stride, groups=len(w))
        return a[:, per_input.argmax(dim=1)]
    return F.conv2d(centred, masks * w, padding=conv.padding, stride=conv.stride)


def reference_output(rec: LayerRecord, k: int) -> torch.Tensor:
    """Unit k's pre-activation [1 or N, 1, H', W'] when every input is at its reference (the empty label)."""
    conv = rec.conv
    bias = conv.bias.detach()[k : k + 1] if conv.bias is not None else None
    return F.conv2d(rec.reference, conv.weight.detach()[k : k + 1], bias, padding=conv.padding, stride=conv.stride)


def prefix_fidelity(rec: LayerRecord, k: int, masks: torch.Tensor) -> torch.Tensor:
    """r of unit k's label grown term by term: masks [T, Cin, kh, kw] in the label's order -> [T],
    entry t the fidelity of the label made of terms 0..t."""
    pre = reference_output(rec, k) + term_outputs(rec, k, masks).cumsum(dim=1)
    return centred_r(F.max_pool2d(pre.relu(), rec.pool), rec.real[:, k])


def label_fidelity(rec: LayerRecord, k: int, masks: torch.Tensor) -> torch.Tensor:
    """r of unit k simulated from each label masks [M, Cin, kh, kw] (1 where the label keeps a weight) -> [M]."""
    pre = reference_output(rec, k) + term_outputs(rec, k, masks)
    return centred_r(F.max_pool2d(pre.relu(), rec.pool), rec.real[:, k])


def input_masks(cin: int, size: int, inputs: list[int]) -> torch.Tensor:
    """One mask [len(inputs), Cin, size, size] per input: all cells of that input's grid."""
    masks = torch.zeros(len(inputs), cin, size, size)
    masks[torch.arange(len(inputs)), torch.tensor(inputs, dtype=torch.long)] = 1.0
    return masks


def least_squares(templates: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The gains [T] and bias that best fit target [N, H, W] by templates [N, T, H, W] (in float64)."""
    x = templates.double().transpose(0, 1).flatten(1)  # [T, P]
    y = target.double().flatten()
    x_mean, y_mean = x.mean(dim=1, keepdim=True), y.mean()
    x = x - x_mean
    gram = x @ x.T
    ridge = 1e-9 * gram.diagonal().sum().clamp_min(1e-30) * torch.eye(len(x), dtype=x.dtype)
    gains = torch.linalg.solve(gram + ridge, x @ (y - y_mean))
    return gains.float(), float(y_mean - gains @ x_mean[:, 0])


@dataclass
class Conv1Record:
    """conv1's term templates (each term kernel applied to the images) and the real units, on the fit
    and the scored images."""

    pool: int
    fit_templates: torch.Tensor  # [N, M, H, W]
    fit_real: torch.Tensor  # [N, C, H, W] pre-activations
    scored_templates: torch.Tensor
    scored_real: torch.Tensor  # [N, C, h, w] relu + max-pool

    def fidelity(self, c: int, terms: list[int], fit: bool = False) -> tuple[float, torch.Tensor, float]:
        """Unit c simulated by the kernels `terms`, gains and bias fitted by least squares on the fit
        images: (r on the scored images, or on the fit images with fit=True; the gains; the bias)."""
        gains, bias = least_squares(self.fit_templates[:, terms], self.fit_real[:, c])
        templates = self.fit_templates if fit else self.scored_templates
        real = F.max_pool2d(self.fit_real[:, c].relu(), self.pool) if fit else self.scored_real[:, c]
        simulated = (templates[:, terms] * gains[:, None, None]).sum(dim=1, keepdim=True) + bias
        return float(centred_r(F.max_pool2d(simulated.relu(), self.pool), real)[0]), gains, bias


@torch.no_grad()
def record_conv1(net: nn.Module, kernels: torch.Tensor, fit_images: torch.Tensor, scored_images: torch.Tensor):
    """conv1's record for term kernels [M, k, k]."""
    conv = net.conv1
    kernels = kernels.to(conv.weight.dtype)[:, None]
    pool = pool_after(net, "conv1")
    scored_real = F.max_pool2d(conv(scored_images).relu(), pool)
    return Conv1Record(
        pool,
        F.conv2d(fit_images, kernels, padding=conv.padding),
        conv(fit_images),
        F.conv2d(scored_images, kernels, padding=conv.padding),
        scored_real,
    )
