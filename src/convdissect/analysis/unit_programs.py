"""A unit's label as a program, for any Conv2d or Linear given what it reads and makes: its terms
ranked by signed contribution, grown until the simulated unit reproduces the real one on the fit
images, scored on held-out images (docs/measures.md, "Fidelity"). convdissect.dissect.programs runs
them on a SimpleConvNet's layers, convdissect.analysis.traced_measures on any net's traced layers.

- a first conv (one input channel): up to three terms: the fitted line/edge kernel, the local
  brightness (a flat kernel), and a line/edge fitted to what the first two leave of the kernel
  (gains and bias by least squares);
- a later conv: a term is one input (its whole grid) or one burst (a connected set of same-sign
  cells of one input's grid);
- a Linear: a term is one block of its inputs (one feature, or one source channel's positions).
The printed label is the shortest prefix whose fidelity on the fit images reaches PRINTED_R (at most
a cap of terms); `terms_for_r90` is the shortest prefix reaching 0.9 on the scored images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from convdissect.analysis.contributions import SignedContributions, surviving
from convdissect.analysis.fidelity import (
    LayerRecord,
    centred_r,
    label_fidelity,
    prefix_fidelity,
    record_first_conv,
    reference_inputs,
)
from convdissect.analysis.fits import LineFit, fit_lines
from convdissect.conventions import stroke_label

# The printed label grows until its fidelity on the fit images reaches PRINTED_R (conv1: PRINTED_R_CONV1,
# its terms being few and whole kernels), at most MAX_PRINTED terms.
PRINTED_R = 0.9
PRINTED_R_CONV1 = 0.95
MAX_PRINTED = {"conv1": 3, "conv2": 6, "conv3": 8, "fc4": 6}
# The description length: the terms a label needs to reach this fidelity.
DESCRIPTION_R = 0.9


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
    conv1: tuple[torch.Tensor, torch.Tensor] | None = None  # a first conv: its labels' (weight, bias), gain included
    texts: list[list[str]] | None = (
        None  # a first conv: each unit's terms in words, its printed ones signed by their gains
    )
    contributions: torch.Tensor | None = None  # a Linear: [Cout, blocks] the signed contributions of its inputs

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


def unit_terms(bursts: bool, weight: torch.Tensor, contributions: SignedContributions, k: int) -> list[Term]:
    """Unit k's terms (its inputs, or bursts of its grids), largest |signed contribution| first."""
    cells = contributions.cells[k]  # [Cin, kh, kw]
    full = torch.ones(cells.shape[-2:], dtype=torch.bool)
    if not bursts:
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


def printed_length(curve_fit: torch.Tensor, cap: int, target: float = PRINTED_R) -> int:
    """The shortest prefix reaching `target` on the fit images, at most `cap` terms."""
    cap = min(cap, len(curve_fit))
    reached = (curve_fit[:cap] >= target).nonzero()
    return int(reached[0]) + 1 if len(reached) else cap


def conv_programs(
    layer: str,
    contributions: SignedContributions,
    fit: LayerRecord,
    scored: LayerRecord,
    bursts: bool,
    cap: int,
    shuffled: bool = True,
) -> LayerPrograms:
    """The programs of every unit of a conv from its records on the fit and scored images and its
    contributions (on the fit images); terms are bursts or whole inputs; at most `cap` printed."""
    weight = fit.conv.weight.detach().cpu()
    cin = weight.shape[1]
    terms = [unit_terms(bursts, weight[k], contributions, k) for k in range(len(weight))]
    masks = [term_masks(t, cin).to(scored.inputs.dtype) for t in terms]
    curves = [prefix_fidelity(scored, k, m) if len(m) else torch.zeros(0) for k, m in enumerate(masks)]
    fit_curves = [prefix_fidelity(fit, k, m) if len(m) else torch.zeros(0) for k, m in enumerate(masks)]
    printed = [printed_length(c, cap) if len(c) else 0 for c in fit_curves]
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
    """A first conv's term kernels [2C + 1, k, k] for its kernels weight [C, k, k]: the C fitted lines/edges,
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
def first_conv_programs(
    layer: str,
    conv: nn.Conv2d,
    pool: int,
    fit: LineFit,
    fit_inputs: torch.Tensor,
    scored_inputs: torch.Tensor,
    shuffled: bool = True,
    activation: nn.Module | None = None,
) -> LayerPrograms:
    """A first conv's labels run as their term kernels on its inputs (the images), gains and bias fitted
    by least squares, its output through `activation` (None: ReLU) and max-pooled by `pool`; the shuffled null runs each unit with
    the other units' printed terms (their gains refitted to this unit)."""
    weight = conv.weight.detach()[:, 0].cpu()
    n = len(weight)
    kernels, residual_fit = conv1_term_kernels(weight, fit)
    rec = record_first_conv(conv, pool, kernels.to(fit_inputs.device), fit_inputs, scored_inputs, activation=activation)
    units, printed_weights, biases, texts = [], [], [], []
    for c in range(n):
        terms = [c, n, n + 1 + c]  # the unit's line/edge, the flat kernel, its residual's line/edge
        curve = torch.tensor([rec.fidelity(c, terms[: t + 1])[0] for t in range(len(terms))])
        fit_curve = torch.tensor([rec.fidelity(c, terms[: t + 1], fit=True)[0] for t in range(len(terms))])
        printed = printed_length(fit_curve, MAX_PRINTED["conv1"], PRINTED_R_CONV1)
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
    return LayerPrograms(layer, units, conv1=(weight, torch.tensor(biases)), texts=texts)


@torch.no_grad()
def linear_programs(
    layer: str,
    linear: nn.Linear,
    act: nn.Module,
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    blocks: int | None = None,
    shuffled: bool = True,
    ablation: str = "mean",
) -> LayerPrograms:
    """A Linear's units as programs over its inputs (x_fit, x_scored, x_blank) [N, F], the F features
    cut into `blocks` equal blocks (default: one per feature): a term is one block, ranked by its signed
    contribution (w_kj (x_j - x_j on the blank image) summed over the block, where the unit survives
    `act`: contributions.surviving). The features a label leaves out read their mean, or another image's (ablation="resample")."""
    x_fit, x_scored, x_blank = inputs
    n_blocks = blocks or x_fit.shape[1]
    survives = surviving(linear(x_fit), act)
    weight = linear.weight.detach()
    cells = torch.einsum("nk,kj,nj->kj", survives, weight, x_fit - x_blank) / len(x_fit)  # [Cout, F]
    contributions = cells.view(len(weight), n_blocks, -1).sum(dim=2)  # [Cout, blocks]
    mean = x_fit.mean(dim=0)
    real_fit, real_scored = act(linear(x_fit)), act(linear(x_scored))
    references = {id(x): reference_inputs(x, mean, ablation) for x in (x_fit, x_scored)}

    def prefix(x, k, order):
        reference = references[id(x)]  # [1 or N, F]
        terms = ((x - reference) * weight[k]).view(len(x), n_blocks, -1).sum(dim=2)  # [N, blocks]
        return (reference @ weight[k] + linear.bias[k])[:, None] + terms[:, order].cumsum(dim=1)

    units, labels = [], []
    for k in range(len(weight)):
        order = contributions[k].abs().argsort(descending=True)
        fit_curve = centred_r(act(prefix(x_fit, k, order))[:, :, None, None], real_fit[:, k, None, None])
        curve = centred_r(act(prefix(x_scored, k, order))[:, :, None, None], real_scored[:, k, None, None])
        terms = [Term(int(j), torch.ones(1, 1, dtype=torch.bool), float(contributions[k, j])) for j in order]
        printed = printed_length(fit_curve, MAX_PRINTED["fc4"])
        kept = torch.zeros(n_blocks).index_fill_(0, order[:printed], 1.0)
        labels.append(kept.repeat_interleave(len(mean) // n_blocks))
        units.append(UnitProgram(terms, curve, fit_curve, printed, float("nan"), activity(real_scored[:, k])))
    if shuffled and len(units) > 1:
        for k, unit in enumerate(units):
            others = [j for j in range(len(units)) if j != k]
            reference = references[id(x_scored)]
            pre = torch.stack([(weight[k] * m) @ (x_scored - reference).T for m in (labels[j] for j in others)], dim=1)
            pre = pre + (reference @ weight[k] + linear.bias[k])[:, None]
            unit.shuffled = float(centred_r(act(pre)[:, :, None, None], real_scored[:, k, None, None]).nanmean())
    return LayerPrograms(layer, units, means=mean, contributions=contributions)
