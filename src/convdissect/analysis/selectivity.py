"""Selectivity of channels: to MNIST classes, to stroke orientation, to position vs pattern
(docs/measures.md).

Every measurement is a function of (net, inputs) and returns plain tensors; a channel's
response is the max of its output map (convdissect.analysis.activations.responses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convdissect.analysis.activations import channel_responses
from convdissect.data.probes import stroke_images, sweep_positions

N_CLASSES = 10


def class_means(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, layers) -> dict[str, torch.Tensor]:
    """Class-conditional mean ReLU'd response per channel: {layer: [10, C]} (NaN for a class absent)."""
    return {layer: response_class_means(resp, labels) for layer, resp in channel_responses(net, images, layers).items()}


def response_class_means(resp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Class-conditional mean ReLU'd response [10, C] of responses [N, C] (NaN for a class absent)."""
    resp = resp.relu()
    sums = torch.zeros(N_CLASSES, resp.shape[1], device=resp.device).index_add_(0, labels, resp)
    counts = torch.bincount(labels, minlength=N_CLASSES).to(resp.dtype)
    return sums / counts[:, None]


def selectivity_index(means: torch.Tensor) -> torch.Tensor:
    """Class selectivity [C] from means [10, C]: (mu_max - mu_rest) / (mu_max + mu_rest), where
    mu_rest is the mean over the other classes (Morcos et al. 2018). 0 = the same for every
    class, 1 = fires for one class only; a channel silent for all classes gets 0."""
    top, best = means.max(dim=0)
    rest = (means.sum(dim=0) - top) / (means.shape[0] - 1)
    return torch.where(top > 0, (top - rest) / (top + rest).clamp_min(1e-12), torch.zeros_like(top))


# ---------------------------------------------------------------------------- orientation


@dataclass
class OrientationTuning:
    angles_deg: torch.Tensor  # [A], 0 <= angle < 180
    responses: dict[str, torch.Tensor]  # {layer: [A, C]}, mean over the probe offsets


def orientation_tuning(
    net: nn.Module,
    layers,
    step_deg: float = 5.0,
    kind: str = "line",
    thickness: float = 2.0,
    offsets=(-1.0, -0.5, 0.0, 0.5, 1.0),
) -> OrientationTuning:
    """Responses to infinite strokes through the image centre at every step_deg in [0, 180),
    averaged over sub-pixel offsets so the curve does not depend on where a stroke falls on the grid."""
    device = next(net.parameters()).device
    angles = torch.arange(0.0, 180.0, step_deg)
    grid_a, grid_o = torch.meshgrid(angles, torch.tensor(offsets), indexing="ij")
    images = stroke_images(grid_a.flatten(), thickness=thickness, offset=grid_o.flatten(), kind=kind).to(device)
    resp = channel_responses(net, images, layers)
    return OrientationTuning(
        angles, {k: v.reshape(len(angles), len(offsets), -1).mean(dim=1).cpu() for k, v in resp.items()}
    )


def orientation_selectivity(tuning: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Orientation selectivity [C] of tuning curves [A, C] over [0, 180): the length of the mean
    doubled-angle vector of the ReLU'd curve, 0 = untuned, 1 = a single orientation."""
    r = tuning.relu()
    doubled = torch.deg2rad(angles_deg.to(r) * 2.0)[:, None]
    total = r.sum(dim=0)
    length = torch.hypot((r * doubled.cos()).sum(dim=0), (r * doubled.sin()).sum(dim=0))
    return torch.where(total > 0, length / total.clamp_min(1e-12), torch.zeros_like(total))


def tuning_depth(tuning: torch.Tensor) -> torch.Tensor:
    """Modulation depth [C] of tuning curves [A, C]: (max - min) / max |response|; 0 = flat (a blob)."""
    return (tuning.amax(dim=0) - tuning.amin(dim=0)) / tuning.abs().amax(dim=0).clamp_min(1e-12)


def tuning_peaks(
    curve: torch.Tensor, angles_deg: torch.Tensor, min_prominence: float = 0.25, min_gap_deg: float = 30.0
) -> list[float]:
    """Peaks of one circular (period 180°) tuning curve [A], strongest first.

    A peak is a local maximum whose prominence (its rise above the deeper of the two valleys that
    separate it from a higher point, walking either way round) is at least min_prominence of the
    curve's range, and at least min_gap_deg from every stronger peak. Shoulders and the pixel
    grid's small bumps at the diagonals are not peaks. The second one, if any, is the article's
    "secondary feature" of a filter.
    """
    values = curve.tolist()
    n, span = len(values), max(values) - min(values)
    if span <= 0:
        return []
    peaks: list[tuple[float, float]] = []
    for i, v in enumerate(values):
        if not (v >= values[i - 1] and v > values[(i + 1) % n]):
            continue
        valleys = []
        for direction in (1, -1):
            low, j = v, i
            for _ in range(n - 1):
                j = (j + direction) % n
                if values[j] > v:
                    break
                low = min(low, values[j])
            valleys.append(low)
        if v - max(valleys) >= min_prominence * span:
            peaks.append((v, float(angles_deg[i])))
    kept: list[float] = []
    for _, angle in sorted(peaks, reverse=True):
        if all(min(abs(angle - p) % 180, 180 - abs(angle - p) % 180) >= min_gap_deg for p in kept):
            kept.append(angle)
    return kept


# ---------------------------------------------------------------------------- position vs pattern


@dataclass
class PositionPattern:
    """R[c, p, q, r]: channel c's response to pattern p at position q (replicate r: the stroke
    shifted by half a pixel), and its bias-corrected omega² shares (docs/measures.md)."""

    patterns: list[tuple[str, float]]  # (kind, angle_deg) per p
    positions: torch.Tensor  # [Q, 2] (x, y) in pixels from the image centre, y up
    replicates: torch.Tensor  # [R, 2] the shift of each replicate
    responses: torch.Tensor  # [C, P, Q, R]
    position_index: torch.Tensor  # [C] omega² of position (NaN: no variance)
    pattern_index: torch.Tensor  # [C] omega² of pattern
    interaction_index: torch.Tensor  # [C] omega² of pattern x position: "this pattern at this position"


@dataclass
class VarianceShares:
    """Bias-corrected shares (omega²) of a response's variance, per unit [U]."""

    position: torch.Tensor
    pattern: torch.Tensor
    interaction: torch.Tensor  # NaN without replicates


def omega_squared(r: torch.Tensor) -> VarianceShares:
    """omega² of position, pattern and their interaction from responses [U, P, Q] or
    [U, P, Q, R] (R replicates per cell), by the two-way ANOVA:

        omega²_x = (SS_x - df_x MS_err) / (SS_total + MS_err)

    MS_err is the within-cell mean square with replicates; without them it is the interaction's,
    which then has no share of its own (NaN). Unlike eta² (SS_x / SS_total), the expected value is
    0 when x has no effect, whatever the numbers of levels. A unit without variance gets NaN.
    Reusable for any [units, patterns, positions] response tensor.
    """
    r = r.double()
    if r.dim() == 3:
        r = r[..., None]
    _, p, q, n = r.shape
    grand = r.mean(dim=(1, 2, 3), keepdim=True)
    cell = r.mean(dim=3, keepdim=True)
    m_p = r.mean(dim=(2, 3), keepdim=True)
    m_q = r.mean(dim=(1, 3), keepdim=True)
    ss_total = (r - grand).square().sum(dim=(1, 2, 3))
    ss_pat = (m_p - grand).square().sum(dim=(1, 2, 3)) * q * n
    ss_pos = (m_q - grand).square().sum(dim=(1, 2, 3)) * p * n
    ss_int = (cell - m_p - m_q + grand).square().sum(dim=(1, 2, 3)) * n
    df_pat, df_pos, df_int = p - 1, q - 1, (p - 1) * (q - 1)
    if n > 1:
        ms_err = (r - cell).square().sum(dim=(1, 2, 3)) / (p * q * (n - 1))
        interaction = (ss_int - df_int * ms_err) / (ss_total + ms_err)
    else:
        ms_err = ss_int / max(df_int, 1)
        interaction = torch.full_like(ss_total, float("nan"))
    dead = ss_total <= 1e-10 * r.square().sum(dim=(1, 2, 3)) + 1e-30  # constant up to rounding

    def share(ss, df):
        return torch.where(dead, torch.nan, (ss - df * ms_err) / (ss_total + ms_err)).float()

    return VarianceShares(
        share(ss_pos, df_pos), share(ss_pat, df_pat), torch.where(dead, torch.nan, interaction).float()
    )


# Replicates of every probe: the stroke shifted by half a pixel either way along both axes.
REPLICATE_SHIFTS = ((-0.5, -0.5), (0.5, 0.5))


def position_pattern(
    net: nn.Module,
    layer: str,
    angles_deg=(0.0, 45.0, 90.0, 135.0),
    kinds=("line",),
    step: float = 2.0,
    margin: float = 4.0,
    length: float = 7.0,
) -> PositionPattern:
    """7-pixel strokes of each kind and angle moved over a grid of positions, each twice (shifted
    half a pixel either way along both axes), and the omega² of position, pattern and their interaction (docs/measures.md)."""
    device = next(net.parameters()).device
    patterns = [(kind, float(angle)) for kind in kinds for angle in angles_deg]
    positions = sweep_positions(0.0, step=step, margin=margin)[1]
    shifts = torch.tensor(REPLICATE_SHIFTS)
    centres = (positions[:, None, :] + shifts[None]).reshape(-1, 2)  # [Q * R, 2]
    images = torch.cat([stroke_images(angle, center=centres, length=length, kind=kind) for kind, angle in patterns]).to(
        device
    )
    resp = channel_responses(net, images, [layer])[layer].cpu()  # [P * Q * R, C]
    r = resp.T.reshape(-1, len(patterns), len(positions), len(shifts))
    shares = omega_squared(r)
    return PositionPattern(patterns, positions, shifts, r, shares.position, shares.pattern, shares.interaction)
