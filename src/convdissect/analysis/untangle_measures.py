"""How untangled a set of units is, on the stroke probes and on images (docs/article_method.md).

A unit's selectivity is read on the stroke probes of the position x pattern sweep
(analysis/selectivity.position_pattern): its responses r[p, q, replicate] give the ANOVA's
interaction residuals e[p, q] = cell - pattern mean - position mean + grand mean (the part of
"this pattern at this position" that neither alone explains; omega_squared's interaction share is
their sum of squares, bias-corrected). Its concentration is the top cell's share of that sum,
max e² / Σ e²: (1 - 1/P)(1 - 1/Q) for a unit that fires on one cell only, about 1/(PQ)'s order
for one spread over many. At conv3's own resolution: the largest share in one pattern's window of
the positions closer to a centre than one conv3 cell (4 px: two 2 x 2 pools before conv3), a 3 x 3
window on the 2-px grid: (1 - 1/P)(1 - m/Q) for a unit firing on one pattern at a patch of m <= 9
positions that one window covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.analysis.selectivity import omega_squared


def interaction_cells(r: torch.Tensor) -> torch.Tensor:
    """Interaction residuals e [U, P, Q] of responses [U, P, Q] or [U, P, Q, R] (R replicates)."""
    cell = r.double().mean(dim=3) if r.dim() == 4 else r.double()
    grand = cell.mean(dim=(1, 2), keepdim=True)
    return cell - cell.mean(dim=2, keepdim=True) - cell.mean(dim=1, keepdim=True) + grand


def neighbourhood_share(r: torch.Tensor, radius: int) -> torch.Tensor:
    """[U] each unit's largest sum of squared interaction residuals over one pattern's square window of
    positions (2 radius + 1 on a side, clipped at the grid's edge; Q on a square grid) over their sum
    (NaN: no interaction). radius 0: the top-cell share."""
    e2 = interaction_cells(r).square()  # [U, P, Q]
    u, p, q = e2.shape
    side = math.isqrt(q)
    width = 2 * radius + 1
    windows = F.avg_pool2d(e2.reshape(u * p, 1, side, side), width, stride=1, padding=radius) * width**2
    total = e2.sum(dim=(1, 2))
    scale = r.double().flatten(1).square().sum(dim=1)
    best = windows.reshape(u, -1).amax(dim=1)
    return torch.where(total > 1e-12 * scale + 1e-30, best / total, torch.nan).float()


def top_cell_share(r: torch.Tensor) -> torch.Tensor:
    """[U] each unit's largest squared interaction residual over their sum (NaN: no interaction)."""
    return neighbourhood_share(r, 0)


def conv3_cell_px(net: nn.Module, side: int = 28) -> float:
    """The step of conv3's map in input pixels: 4 in SimpleConvNet (two 2 x 2 pools before it, or one 4 x 4)."""
    seen = []
    hook = net.conv3.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[-1]))
    try:
        net.features(torch.zeros(1, 1, side, side, device=next(net.parameters()).device))
    finally:
        hook.remove()
    return side / seen[0]


def window_radius(positions: torch.Tensor, cell_px: float) -> int:
    """Grid steps from a centre whose positions [Q, 2] are closer to it than one cell of cell_px pixels."""
    xs = positions[:, 0].unique()
    return math.ceil(cell_px / float(xs[1] - xs[0])) - 1


@dataclass
class Units:
    """One set of units on the probe sweep: raw conv3, fc4, or a basis."""

    name: str
    responses: torch.Tensor  # [U, P, Q, R], each unit signed so that its top interaction cell is positive
    share: torch.Tensor  # [U] top-cell share
    cell_share: torch.Tensor  # [U] share in a window of one conv3 cell
    interaction: torch.Tensor  # [U] omega² of the interaction (NaN: one replicate)
    readout_accuracy: float | None = None
    seconds: float | None = None

    @property
    def median_share(self) -> float:
        return float(self.share.nanmedian())

    @property
    def median_cell_share(self) -> float:
        return float(self.cell_share.nanmedian())


def units_on_probes(name: str, responses: torch.Tensor, radius: int, **extra) -> Units:
    """Units from their probe responses [U, P, Q, R], flipped so that the top cell is positive;
    radius: window_radius of a conv3 cell."""
    e = interaction_cells(responses).flatten(1)
    top = e.gather(1, e.abs().argmax(dim=1, keepdim=True)).squeeze(1)
    signed = responses * torch.where(top < 0, -1.0, 1.0).to(responses.dtype)[:, None, None, None]
    return Units(
        name,
        signed,
        top_cell_share(signed),
        neighbourhood_share(signed, radius),
        omega_squared(signed).interaction,
        **extra,
    )


def readout_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy of a linear discriminant readout. Unlike a regularised logistic regression,
    its decisions do not change under an invertible linear map of the units, so any difference
    between bases is information lost, not the readout's penalty."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    model = LinearDiscriminantAnalysis().fit(train_x.double().numpy(), train_y.numpy())
    return float(model.score(test_x.double().numpy(), test_y.numpy()))
