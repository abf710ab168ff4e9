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
    real: torch.Tensor  # [N, Cout, h, w] activation + max-pool of the real output on the scored images
    reference: torch.Tensor  # [1, Cin, H, W] the mean map, or [N, Cin, H, W] each image's resampled inputs
    activation: nn.Module | None = None  # the units' nonlinearity; None: ReLU


@torch.no_grad()
def record_layer(
    net: nn.Module, layer: str, fit_images: torch.Tensor, scored_images: torch.Tensor, ablation: str = "mean"
) -> tuple[LayerRecord, LayerRecord]:
    """A SimpleConvNet layer's records on the fit images and on the scored images (layer_records)."""
    recorded = [record_in_out(net, images, layer) for images in (fit_images, scored_images)]
    return layer_records(layer, getattr(net, layer), pool_after(net, layer), *recorded, ablation)


def layer_records(
    layer: str,
    conv: nn.Conv2d,
    pool: int,
    fit: tuple[torch.Tensor, torch.Tensor],
    scored: tuple[torch.Tensor, torch.Tensor],
    ablation: str = "mean",
    activation: nn.Module | None = None,
) -> tuple[LayerRecord, LayerRecord]:
    """A conv's records from its (inputs, outputs) on the fit and on the scored images, its outputs
    through `activation` (None: ReLU) and max-pooled by `pool`. Their reference is the fit images' mean
    map (ablation="mean"), or each image's inputs on another image of the same set ("resample")."""
    records = [(inputs, activated_pooled(outputs, pool, activation)) for inputs, outputs in (fit, scored)]
    mean = records[0][0].mean(dim=0)
    return tuple(
        LayerRecord(layer, conv, pool, inputs, mean, real, reference_inputs(inputs, mean, ablation), activation)
        for inputs, real in records
    )


def activated_pooled(x: torch.Tensor, pool: int, activation: nn.Module | None = None) -> torch.Tensor:
    """The activation (None: ReLU), then max-pool by `pool` (1: no pooling, a no-op that costs as much as the rest)."""
    x = activation(x) if activation is not None else x.relu()
    return F.max_pool2d(x, pool) if pool > 1 else x


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
    one_input = bool((per_input > 0).sum(1).eq(1).all())
    inputs = per_input.argmax(dim=1)  # [T] each term's input, where it has one
    if one_input and ((per_input == 0) | (per_input == w[0].numel())).all():
        # each term one whole input: one depthwise conv, Cin times cheaper
        a = F.conv2d(
            centred, w[:, None], padding=conv.padding, stride=conv.stride, dilation=conv.dilation, groups=len(w)
        )
        return a[:, inputs]
    if one_input:  # each term cells of one input (a burst): a grouped conv over its input, Cin times cheaper
        kernels = (masks * w)[torch.arange(len(masks)), inputs][:, None]  # [T, 1, kh, kw]
        geometry = {"padding": conv.padding, "stride": conv.stride, "dilation": conv.dilation}
        return F.conv2d(centred[:, inputs], kernels, groups=len(masks), **geometry)
    return F.conv2d(centred, masks * w, padding=conv.padding, stride=conv.stride, dilation=conv.dilation)


def reference_output(rec: LayerRecord, k: int) -> torch.Tensor:
    """Unit k's pre-activation [1 or N, 1, H', W'] when every input is at its reference (the empty label)."""
    conv = rec.conv
    bias = conv.bias.detach()[k : k + 1] if conv.bias is not None else None
    weight = conv.weight.detach()[k : k + 1]
    return F.conv2d(rec.reference, weight, bias, padding=conv.padding, stride=conv.stride, dilation=conv.dilation)


def prefix_fidelity(rec: LayerRecord, k: int, masks: torch.Tensor) -> torch.Tensor:
    """r of unit k's label grown term by term: masks [T, Cin, kh, kw] in the label's order -> [T],
    entry t the fidelity of the label made of terms 0..t."""
    pre = reference_output(rec, k) + term_outputs(rec, k, masks).cumsum(dim=1)
    return centred_r(activated_pooled(pre, rec.pool, rec.activation), rec.real[:, k])


def label_fidelity(rec: LayerRecord, k: int, masks: torch.Tensor) -> torch.Tensor:
    """r of unit k simulated from each label masks [M, Cin, kh, kw] (1 where the label keeps a weight) -> [M]."""
    pre = reference_output(rec, k) + term_outputs(rec, k, masks)
    return centred_r(activated_pooled(pre, rec.pool, rec.activation), rec.real[:, k])


def input_masks(cin: int, size: int, inputs: list[int]) -> torch.Tensor:
    """One mask [len(inputs), Cin, size, size] per input: all cells of that input's grid."""
    masks = torch.zeros(len(inputs), cin, size, size)
    masks[torch.arange(len(inputs)), torch.tensor(inputs, dtype=torch.long)] = 1.0
    return masks


@dataclass
class Conv1Record:
    """conv1's term templates (each term kernel applied to the images) and the real units: on the
    scored images in full; on the fit images as the sums a least-squares fit reads (the centred
    cross products of every template with every template and with every unit, in float64)."""

    pool: int
    gram: torch.Tensor  # [M, M] templates x templates, centred, over the fit images' pixels
    cross: torch.Tensor  # [M, C] templates x units' pre-activations, centred
    template_mean: torch.Tensor  # [M]
    unit_mean: torch.Tensor  # [C]
    fit_templates: torch.Tensor  # [N, M, H, W]
    fit_real: torch.Tensor  # [N, C, h, w] activation + max-pool
    scored_templates: torch.Tensor
    scored_real: torch.Tensor
    activation: nn.Module | None = None  # the units' nonlinearity; None: ReLU

    def least_squares(self, c: int, terms: list[int]) -> tuple[torch.Tensor, float]:
        """The gains [T] and bias that best fit unit c's pre-activations on the fit images by the templates `terms`."""
        gram = self.gram[terms][:, terms]
        ridge = 1e-9 * gram.diagonal().sum().clamp_min(1e-30) * torch.eye(len(terms), dtype=gram.dtype)
        gains = torch.linalg.solve(gram + ridge, self.cross[terms, c])
        return gains.float(), float(self.unit_mean[c] - gains @ self.template_mean[terms])

    def fidelity(self, c: int, terms: list[int], fit: bool = False) -> tuple[float, torch.Tensor, float]:
        """Unit c simulated by the kernels `terms`, gains and bias fitted by least squares on the fit
        images: (r on the scored images, or on the fit images with fit=True; the gains; the bias)."""
        gains, bias = self.least_squares(c, terms)
        templates, real = (self.fit_templates, self.fit_real) if fit else (self.scored_templates, self.scored_real)
        simulated = sum(templates[:, t : t + 1] * g for t, g in zip(terms, gains.tolist())) + bias
        simulated = activated_pooled(simulated, self.pool, self.activation)
        return float(centred_r(simulated, real[:, c])[0]), gains, bias


@torch.no_grad()
def record_first_conv(
    conv: nn.Conv2d,
    pool: int,
    kernels: torch.Tensor,
    fit_images: torch.Tensor,
    scored_images: torch.Tensor,
    chunk: int = 100,
    activation: nn.Module | None = None,
) -> Conv1Record:
    """A first conv's record for term kernels [M, k, k] (its outputs through `activation`, None: ReLU,
    and max-pooled by `pool`); the fit images' sums are taken `chunk` images at a time."""
    kernels = kernels.to(conv.weight.dtype)[:, None]
    m, c = len(kernels), conv.out_channels
    gram, cross = torch.zeros(m, m, dtype=torch.float64), torch.zeros(m, c, dtype=torch.float64)
    template_sum, unit_sum, pixels = torch.zeros(m, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    templates, units = [], []
    for start in range(0, len(fit_images), chunk):
        images = fit_images[start : start + chunk]
        templates.append(F.conv2d(images, kernels, padding=conv.padding, stride=conv.stride))
        units.append(conv(images))
        x = templates[-1].double().transpose(0, 1).flatten(1).cpu()  # [M, P]
        y = units[-1].double().transpose(0, 1).flatten(1).cpu()  # [C, P]
        gram += x @ x.T
        cross += x @ y.T
        template_sum += x.sum(dim=1)
        unit_sum += y.sum(dim=1)
        pixels += x.shape[1]
    template_mean, unit_mean = template_sum / pixels, unit_sum / pixels
    return Conv1Record(
        pool,
        gram - pixels * template_mean[:, None] * template_mean[None],
        cross - pixels * template_mean[:, None] * unit_mean[None],
        template_mean,
        unit_mean,
        torch.cat(templates),
        activated_pooled(torch.cat(units), pool, activation),
        F.conv2d(scored_images, kernels, padding=conv.padding, stride=conv.stride),
        activated_pooled(conv(scored_images), pool, activation),
        activation,
    )
