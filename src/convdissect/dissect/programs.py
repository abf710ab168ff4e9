"""Every conv unit's label as a program: its terms ranked by signed contribution, grown until the
simulated unit reproduces the real one, scored on held-out images (docs/measures.md, "Fidelity").

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
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from convdissect.analysis.contributions import SignedContributions, blank_image, signed_contributions
from convdissect.analysis.fidelity import (
    LayerRecord,
    centred_r,
    label_fidelity,
    prefix_fidelity,
    record_conv1,
    record_layer,
    reference_inputs,
)
from convdissect.analysis.fits import LineFit, fit_lines
from convdissect.conventions import stroke_label

# The printed label grows until its fidelity on the fit images reaches PRINTED_R (conv1: PRINTED_R_CONV1,
# its terms being few and whole kernels), at most MAX_PRINTED terms.
PRINTED_R = 0.9
PRINTED_R_CONV1 = 0.95
MAX_PRINTED = {"conv1": 3, "conv2": 6, "conv3": 8, "fc4": 6}
# The numbers a reader reads per conv1 term: a line/edge (angle, width, offset, kind, gain); the
# brightness (its gain). Each conv1 label adds its bias.
CONV1_TERM_NUMBERS = (5, 1, 5)
# The description length: the terms a label needs to reach this fidelity.
DESCRIPTION_R = 0.9
# The curve of fidelity against the number of terms is reported at these lengths (and all).
CURVE_TERMS = (1, 2, 3, 5, 10)


@dataclass
class Term:
    """One term of a label: the cells of input `input`'s grid it keeps, and their signed contribution."""

    input: int  # 0-based input channel
    cells: torch.Tensor  # [kh, kw] bool
    contribution: float


@dataclass
class UnitProgram:
    """One unit's terms, strongest first, and how well each prefix reproduces it."""

    terms: list[Term]
    curve: torch.Tensor  # [len(terms)] fidelity on the scored images of the first t+1 terms
    fit_curve: torch.Tensor  # [len(terms)] the same on the fit images (where label lengths are chosen)
    printed: int  # terms in the printed label
    shuffled: float  # mean fidelity of the other units' printed labels run on this unit
    activity: str = "varies"  # or "silent" (never fires on the scored images) or "constant" (fires, never varies)

    @property
    def fidelity(self) -> float:
        return float(self.curve[self.printed - 1]) if self.printed else 0.0

    def length_for(self, fidelity: float) -> int:
        """The shortest prefix reaching `fidelity` on the fit images (every term where none does)."""
        reached = (self.fit_curve >= fidelity).nonzero()
        return int(reached[0]) + 1 if len(reached) else len(self.terms)

    @property
    def terms_for_r90(self) -> int | None:
        """The shortest prefix reaching DESCRIPTION_R on the scored images (None: not even with every term)."""
        reached = (self.curve >= DESCRIPTION_R).nonzero()
        return int(reached[0]) + 1 if len(reached) else None


@dataclass
class LayerPrograms:
    layer: str
    units: list[UnitProgram]
    means: torch.Tensor | None = None  # [Cin, H, W] the mean input map a left-out weight reads
    conv1: tuple[torch.Tensor, torch.Tensor] | None = None  # conv1: its labels' (weight, bias), gain included
    texts: list[list[str]] | None = None  # conv1: each unit's terms in words, its printed ones signed by their gains
    contributions: torch.Tensor | None = None  # fc4: [Cout, Cin] the signed contributions of its inputs

    def lengths(self, terms: int | None = None, fidelity: float | None = None) -> list[int]:
        """Per unit, the terms of its label: its first `terms`, the shortest reaching `fidelity` on the
        fit images, or (neither given) its printed label."""
        if fidelity is not None:
            return [unit.length_for(fidelity) for unit in self.units]
        return [unit.printed if terms is None else min(terms, len(unit.terms)) for unit in self.units]

    def masks(self, weight_shape: torch.Size, lengths: list[int]) -> torch.Tensor:
        """[Cout, Cin, kh, kw] ([Cout, Cin] for fc4) 1 where unit k's label of lengths[k] terms keeps a weight."""
        masks = torch.zeros(weight_shape)
        for k, (unit, n) in enumerate(zip(self.units, lengths)):
            for term in unit.terms[:n]:
                masks[k, term.input] += term.cells if masks.dim() == 4 else 1.0
        return masks.clamp_max(1.0)


def connected_bursts(grid: torch.Tensor) -> list[torch.Tensor]:
    """The connected (8-neighbour) sets of same-sign nonzero cells of a grid [kh, kw], as bool masks."""
    bursts = []
    for sign in (1, -1):
        components, n = ndimage.label((torch.sign(grid) == sign).numpy(), structure=np.ones((3, 3)))
        bursts += [torch.from_numpy(components == i) for i in range(1, n + 1)]
    return bursts


def unit_terms(layer: str, weight: torch.Tensor, contributions: SignedContributions, k: int) -> list[Term]:
    """Unit k's terms (inputs for conv2, bursts for conv3), largest |signed contribution| first."""
    cells = contributions.cells[k]  # [Cin, kh, kw]
    full = torch.ones(cells.shape[-2:], dtype=torch.bool)
    if layer == "conv2":
        terms = [Term(j, full, float(cells[j].sum())) for j in range(len(cells))]
    else:
        terms = [
            Term(j, burst, float(cells[j][burst].sum()))
            for j in range(len(cells))
            for burst in connected_bursts(weight[j])
        ]
    return sorted(terms, key=lambda t: -abs(t.contribution))


def term_masks(terms: list[Term], cin: int) -> torch.Tensor:
    masks = torch.zeros(len(terms), cin, *terms[0].cells.shape) if terms else torch.zeros(0)
    for t, term in enumerate(terms):
        masks[t, term.input] = term.cells.float()
    return masks


def activity(real: torch.Tensor) -> str:
    """'silent' where a unit's pooled output [N, ...] is 0 on every image, 'constant' where it never varies."""
    if float(real.abs().amax()) == 0.0:
        return "silent"
    return "constant" if float((real - real[:1]).abs().amax()) == 0.0 else "varies"


def printed_length(curve_fit: torch.Tensor, layer: str) -> int:
    """The shortest prefix reaching PRINTED_R (conv1: PRINTED_R_CONV1) on the fit images, at most
    MAX_PRINTED[layer] terms."""
    cap = min(MAX_PRINTED[layer], len(curve_fit))
    reached = (curve_fit[:cap] >= (PRINTED_R_CONV1 if layer == "conv1" else PRINTED_R)).nonzero()
    return int(reached[0]) + 1 if len(reached) else cap


def layer_programs(
    net: nn.Module,
    layer: str,
    fit_images: torch.Tensor,
    scored_images: torch.Tensor,
    shuffled: bool = True,
    ablation: str = "mean",
) -> LayerPrograms:
    """The programs of every unit of conv2 or conv3, with their shuffled null (unless shuffled=False);
    the weights a label leaves out read the `ablation` reference (fidelity.ABLATIONS)."""
    weight = getattr(net, layer).weight.detach().cpu()
    contributions = signed_contributions(net, layer, fit_images)
    fit, scored = record_layer(net, layer, fit_images, scored_images, ablation)
    cin = weight.shape[1]
    terms = [unit_terms(layer, weight[k], contributions, k) for k in range(len(weight))]
    masks = [term_masks(t, cin).to(scored.inputs.dtype) for t in terms]
    curves = [prefix_fidelity(scored, k, m) if len(m) else torch.zeros(0) for k, m in enumerate(masks)]
    fit_curves = [prefix_fidelity(fit, k, m) if len(m) else torch.zeros(0) for k, m in enumerate(masks)]
    printed = [printed_length(c, layer) if len(c) else 0 for c in fit_curves]
    labels = torch.stack(
        [m[:p].sum(dim=0).clamp_max(1.0) if p else torch.zeros(weight.shape[1:]) for m, p in zip(masks, printed)]
    )
    units = [
        UnitProgram(
            t, c, f, p, shuffled_fidelity(scored, k, labels) if shuffled else float("nan"), activity(scored.real[:, k])
        )
        for k, (t, c, f, p) in enumerate(zip(terms, curves, fit_curves, printed))
    ]
    return LayerPrograms(layer, units, means=scored.mean)


def shuffled_fidelity(rec: LayerRecord, k: int, labels: torch.Tensor) -> float:
    """The mean fidelity on unit k of the other units' printed labels (their kept weights on k's grids)."""
    others = [j for j in range(len(labels)) if j != k]
    if not others:
        return float("nan")
    return float(label_fidelity(rec, k, labels[others].to(rec.inputs.dtype)).nanmean())


def conv1_term_kernels(weight: torch.Tensor, fit: LineFit) -> tuple[torch.Tensor, LineFit]:
    """conv1's term kernels [2C + 1, k, k] for its kernels weight [C, k, k]: the C fitted lines/edges,
    one flat kernel (the local brightness), the C lines/edges fitted to the residuals; and that fit."""
    first = fit.kernels()
    residual_fit = fit_lines(weight - weight.mean(dim=(1, 2), keepdim=True) - first)
    flat = torch.ones(1, *weight.shape[1:])
    return torch.cat([first, flat, residual_fit.kernels()]), residual_fit


def conv1_term_texts(fit: LineFit, residual_fit: LineFit, c: int, gains: torch.Tensor) -> list[str]:
    """Unit c's terms in words, each read with the sign of its fitted gain."""
    texts = []
    for t, gain in enumerate(gains.tolist()):
        if t == 1:
            texts.append("brightness" if gain >= 0 else "darkness")
        else:
            f = fit if t == 0 else residual_fit
            texts.append(stroke_label(f.kind[c], float(f.theta_deg[c]), float(f.amplitude[c]) * gain))
    return texts


@torch.no_grad()
def conv1_programs(
    net: nn.Module, fit: LineFit, fit_images: torch.Tensor, scored_images: torch.Tensor, shuffled: bool = True
) -> LayerPrograms:
    """conv1's labels run as their term kernels, gains and bias fitted by least squares; the shuffled
    null runs each unit with the other units' printed terms (their gains refitted to this unit)."""
    weight = net.conv1.weight.detach()[:, 0].cpu()
    n = len(weight)
    kernels, residual_fit = conv1_term_kernels(weight, fit)
    rec = record_conv1(net, kernels.to(fit_images.device), fit_images, scored_images)
    units, printed_weights, biases, texts = [], [], [], []
    for c in range(n):
        terms = [c, n, n + 1 + c]  # the unit's line/edge, the flat kernel, its residual's line/edge
        curve = torch.tensor([rec.fidelity(c, terms[: t + 1])[0] for t in range(len(terms))])
        fit_curve = torch.tensor([rec.fidelity(c, terms[: t + 1], fit=True)[0] for t in range(len(terms))])
        printed = printed_length(fit_curve, "conv1")
        gains, bias = rec.least_squares(c, terms[:printed])
        printed_weights.append((gains[:, None, None] * kernels[terms[:printed]]).sum(dim=0))
        biases.append(bias)
        texts.append(conv1_term_texts(fit, residual_fit, c, gains))
        full = torch.ones(weight.shape[1:], dtype=torch.bool)
        units.append(
            UnitProgram(
                [Term(0, full, float(g)) for g in gains],
                curve,
                fit_curve,
                printed,
                float("nan"),
                activity(rec.scored_real[:, c]),
            )
        )
    if shuffled and n > 1:
        printed_terms = [[c, n, n + 1 + c][: u.printed] for c, u in enumerate(units)]
        for c, unit in enumerate(units):
            unit.shuffled = sum(rec.fidelity(c, printed_terms[j])[0] for j in range(n) if j != c) / (n - 1)
    weight = torch.stack(printed_weights)[:, None]
    return LayerPrograms("conv1", units, conv1=(weight, torch.tensor(biases)), texts=texts)


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


@torch.no_grad()
def fc4_programs(
    net: nn.Module,
    fit_images: torch.Tensor,
    scored_images: torch.Tensor,
    shuffled: bool = True,
    ablation: str = "mean",
) -> LayerPrograms:
    """fc4's units as programs over conv3's pooled features: a term is one conv3 unit, ranked by its
    signed contribution (w_kj (x_j - x_j on the blank image), where the unit survives its ReLU). The
    features a label leaves out read their mean, or another image's (ablation="resample")."""
    fc4, act = net.fc4, net.fc4_act
    x_fit, x_scored = net.features(fit_images), net.features(scored_images)
    x_blank = net.features(blank_image(fit_images))
    survives = (fc4(x_fit) > 0).to(x_fit) if isinstance(act, nn.ReLU) else torch.ones(len(x_fit), fc4.out_features)
    weight = fc4.weight.detach()
    contributions = torch.einsum("nk,kj,nj->kj", survives, weight, x_fit - x_blank) / len(x_fit)  # [Cout, Cin]
    mean = x_fit.mean(dim=0)
    real_fit, real_scored = act(fc4(x_fit)), act(fc4(x_scored))
    references = {id(x): reference_inputs(x, mean, ablation) for x in (x_fit, x_scored)}

    def prefix(x, k, order):
        reference = references[id(x)]  # [1 or N, Cin]
        return (reference @ weight[k] + fc4.bias[k])[:, None] + ((x - reference)[:, order] * weight[k, order]).cumsum(
            dim=1
        )

    units, labels = [], []
    for k in range(len(weight)):
        order = contributions[k].abs().argsort(descending=True)
        fit_curve = centred_r(act(prefix(x_fit, k, order))[:, :, None, None], real_fit[:, k, None, None])
        curve = centred_r(act(prefix(x_scored, k, order))[:, :, None, None], real_scored[:, k, None, None])
        terms = [Term(int(j), torch.ones(1, 1, dtype=torch.bool), float(contributions[k, j])) for j in order]
        printed = printed_length(fit_curve, "fc4")
        labels.append(torch.zeros(len(mean)).index_fill_(0, order[:printed], 1.0))
        units.append(UnitProgram(terms, curve, fit_curve, printed, float("nan"), activity(real_scored[:, k])))
    if shuffled:
        for k, unit in enumerate(units):
            others = [j for j in range(len(units)) if j != k]
            reference = references[id(x_scored)]
            pre = torch.stack([(weight[k] * m) @ (x_scored - reference).T for m in (labels[j] for j in others)], dim=1)
            pre = pre + (reference @ weight[k] + fc4.bias[k])[:, None]
            unit.shuffled = float(centred_r(act(pre)[:, :, None, None], real_scored[:, k, None, None]).nanmean())
    return LayerPrograms("fc4", units, means=mean, contributions=contributions)
