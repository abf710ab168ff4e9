"""Fits of free weight grids to the project's two parametric families, and the statistics that
tell bursts from strokes (docs/measures.md, "Grid statistics").

- `fit_lines`: the best line-family member per grid (conv1 labels, conv2 copies);
- `find_bursts`: the pixel bursts of a grid (conv3 labels);
- `grid_statistics`: kurtosis, burst-fit R² minus line-fit R², and the neighbour correlation,
  with `reference_grids` (noise, lines, strokes, single and double bursts) as their calibration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convdissect.analysis.families import KINDS, burst_grids, canonical_line, grid_xy, line_kernels, line_profile
from convdissect.conventions import clock_from_xy, edge_side, format_burst, stroke_label

_EPS = 1e-8


@dataclass
class LineFit:
    """Best-fitting line-family member per kernel (all fields indexed by kernel).

    theta_deg in [0, 180); amplitude is signed: a negative `line` is a dark-line detector, the sign
    of an `edge` picks its side (see convdissect.conventions). r2 is the share of the zero-meaned
    kernel's energy the fit explains (the kernel's mean is not part of the family).
    """

    theta_deg: torch.Tensor
    sigma: torch.Tensor
    offset: torch.Tensor
    amplitude: torch.Tensor
    kind: list[str]
    side: list[str | None]
    r2: torch.Tensor
    size: int

    def __len__(self) -> int:
        return len(self.kind)

    def labels(self) -> list[str]:
        """Human labels, e.g. 'vertical line', 'left side of a vertical line'."""
        return [stroke_label(k, float(t), float(a)) for k, t, a in zip(self.kind, self.theta_deg, self.amplitude)]

    def kernels(self) -> torch.Tensor:
        """The fitted kernels [N, size, size] (zero mean)."""
        out = torch.empty(len(self), self.size, self.size)
        for kind in KINDS:
            idx = torch.tensor([k == kind for k in self.kind], dtype=torch.bool)
            if idx.any():
                out[idx] = line_kernels(
                    torch.deg2rad(self.theta_deg[idx]),
                    self.sigma[idx],
                    self.offset[idx],
                    self.amplitude[idx],
                    kind,
                    self.size,
                )
        return out


# The dictionary of templates the fit searches: every degree, a few widths and offsets, both kinds.
FIT_SIGMAS = (0.2, 0.3, 0.45, 0.7, 1.1)
FIT_OFFSETS = (-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75)


def _template_dictionary(size: int):
    """Unit-norm, zero-mean templates [M, size*size] and their (theta, sigma, offset, is_edge).

    Templates whose profile is almost flat on the grid (a thin line far off the grid) are left out:
    normalising them would blow up rounding noise.
    """
    theta = torch.deg2rad(torch.arange(180.0))
    t, s, o = torch.meshgrid(theta, torch.tensor(FIT_SIGMAS), torch.tensor(FIT_OFFSETS), indexing="ij")
    t, s, o = t.flatten(), s.flatten(), o.flatten()
    parts = []
    for is_edge, kind in enumerate(KINDS):
        z = line_profile(t, s, o, kind, size).flatten(1)
        norm = z.norm(dim=1)
        keep = norm > 0.05 * norm.max()
        parts.append((z[keep] / norm[keep, None], t[keep], s[keep], o[keep], torch.full((int(keep.sum()),), is_edge)))
    return tuple(torch.cat(columns) for columns in zip(*parts))


def fit_lines(kernels: torch.Tensor, refine_steps: int = 30, chunk: int = 512) -> LineFit:
    """Fit each kernel [N, k, k] with its best line-family member.

    A dictionary search (one matmul per chunk of kernels against ~12k unit templates; the best
    |projection| wins, amplitude = projection) then `refine_steps` of gradient ascent on the
    explained energy over continuous θ, σ, offset. A refinement is kept only where it raises R².
    """
    kernels = kernels.detach().to(torch.float32).cpu()
    n, size = kernels.shape[0], kernels.shape[-1]
    flat = kernels.reshape(n, -1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    energy = centred.square().sum(dim=1).clamp_min(_EPS)

    templates, t_theta, t_sigma, t_offset, t_edge = _template_dictionary(size)
    best = torch.empty(n, dtype=torch.long)
    proj = torch.empty(n)
    for start in range(0, n, chunk):
        p = centred[start : start + chunk] @ templates.T
        best[start : start + chunk] = p.abs().argmax(dim=1)
        proj[start : start + chunk] = p.gather(1, best[start : start + chunk, None]).squeeze(1)

    theta, sigma, offset, is_edge = t_theta[best], t_sigma[best], t_offset[best], t_edge[best].bool()
    r2 = proj.square() / energy
    if refine_steps > 0:
        theta, sigma, offset = _refine(
            centred.reshape(n, size, size), energy, theta, sigma, offset, is_edge, r2, refine_steps
        )

    # θ into [0, 180); the amplitude (and so an edge's side) is re-read from the projection below.
    theta, offset, _ = canonical_line(theta, offset, torch.zeros_like(theta), is_edge)
    amplitude = torch.empty(n)
    for edge in (False, True):
        idx = is_edge == edge
        unit = line_kernels(theta[idx], sigma[idx], offset[idx], 1.0, KINDS[int(edge)], size)
        amplitude[idx] = (unit * centred[idx].reshape(-1, size, size)).sum(dim=(-2, -1))
    r2 = (amplitude.square() / energy).clamp(max=1.0)

    theta_deg = torch.rad2deg(theta).remainder(180.0)
    kinds = [KINDS[int(e)] for e in is_edge]
    sides = [edge_side(float(t), float(a)) if k == "edge" else None for k, t, a in zip(kinds, theta_deg, amplitude)]
    return LineFit(theta_deg, sigma, offset, amplitude, kinds, sides, r2, size)


def _refine(centred, energy, theta, sigma, offset, is_edge, r2_start, steps: int):
    """Gradient ascent of the explained energy share per kernel; keeps each kernel's better result."""
    params = [theta.clone().requires_grad_(), sigma.log().requires_grad_(), offset.clone().requires_grad_()]
    optimiser = torch.optim.Adam(params, lr=0.02)

    def explained(t, log_s, o):
        share = torch.empty_like(t)
        for edge in (False, True):
            idx = is_edge == edge
            unit = line_kernels(
                t[idx], log_s[idx].exp().clamp(0.1, 5.0), o[idx], 1.0, KINDS[int(edge)], centred.shape[-1]
            )
            share[idx] = (unit * centred[idx]).sum(dim=(-2, -1)).square() / energy[idx]
        return share

    with torch.enable_grad():  # a gradient ascent, also when called under no_grad
        for _ in range(steps):
            optimiser.zero_grad()
            (-explained(*params).sum()).backward()
            optimiser.step()
    with torch.no_grad():
        t, log_s, o = params
        better = explained(t, log_s, o) > r2_start
        return (
            torch.where(better, t, theta),
            torch.where(better, log_s.exp().clamp(0.1, 5.0), sigma),
            torch.where(better, o, offset),
        )


# ---------------------------------------------------------------------------- bursts


@dataclass
class Burst:
    """One pixel burst of a weight grid: position in grid cells from the centre (x right, y up)."""

    sign: int
    x: float
    y: float
    clock: str
    distance: float
    amplitude: float

    def __str__(self) -> str:
        return format_burst(self.sign, self.clock, self.distance)


def find_bursts(grid: torch.Tensor, max_bursts: int = 3, rel_threshold: float = 0.5):
    """Bursts of a grid [k, k] (-> list[Burst]) or of grids [N, k, k] (-> list[list[Burst]]).

    A burst is a positive local maximum or negative local minimum (over the 8 neighbours) whose
    |value| is at least rel_threshold * max|grid|; strongest first.
    """
    grid = grid.detach().to(torch.float32).cpu()
    if grid.dim() == 2:
        return find_bursts(grid[None], max_bursts, rel_threshold)[0]
    size = grid.shape[-1]
    x, y = grid_xy(size)
    g = grid[:, None]
    peak = (g == F.max_pool2d(g, 3, 1, 1)) & (g > 0)
    trough = (-g == F.max_pool2d(-g, 3, 1, 1)) & (g < 0)
    strong = grid.abs() >= rel_threshold * grid.abs().amax(dim=(-2, -1), keepdim=True)
    found = (peak | trough)[:, 0] & strong
    result = []
    for one, mask in zip(grid, found):
        rows, cols = mask.nonzero(as_tuple=True)
        values = one[rows, cols]
        order = values.abs().argsort(descending=True)[:max_bursts]
        bursts = []
        for i in order.tolist():
            bx, by = float(x[rows[i], cols[i]]), float(y[rows[i], cols[i]])
            clock, distance = clock_from_xy(bx, by)
            value = float(values[i])
            bursts.append(Burst(1 if value > 0 else -1, bx, by, clock, distance, value))
        result.append(bursts)
    return result


def peak_energy_share(grids: torch.Tensor, n: int = 2) -> torch.Tensor:
    """Share of each grid's energy (sum of squares) in its n strongest pixels: [..., k, k] -> [...]."""
    energy = grids.detach().flatten(-2).square()
    return energy.topk(n, dim=-1).values.sum(dim=-1) / energy.sum(dim=-1).clamp_min(_EPS)


# ---------------------------------------------------------------------------- bursts vs strokes


# Single Gaussian bursts the burst fit searches: centred on every cell, these widths (grid cells).
BURST_SIGMAS = (0.35, 0.6, 0.9)


def _burst_dictionary(size: int) -> torch.Tensor:
    """Unit-norm, zero-mean single-burst templates [M, size*size]."""
    x, y = grid_xy(size)
    xs, ys = x.flatten(), y.flatten()
    sx = torch.tensor(BURST_SIGMAS).repeat_interleave(len(xs))
    grids = burst_grids(
        xs.repeat(len(BURST_SIGMAS))[:, None],
        ys.repeat(len(BURST_SIGMAS))[:, None],
        sx[:, None],
        sx[:, None],
        torch.ones(len(sx), 1),
        size,
    ).flatten(1)
    grids = grids - grids.mean(dim=1, keepdim=True)
    return grids / grids.norm(dim=1, keepdim=True)


def burst_fit_r2(grids: torch.Tensor) -> torch.Tensor:
    """Share of each zero-meaned grid's energy [N, k, k] -> [N] explained by its best pair of
    Gaussian bursts (the best single one, then the best second one on what is left, by least squares)."""
    flat = grids.detach().to(torch.float32).cpu().flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    energy = centred.square().sum(dim=1).clamp_min(_EPS)
    templates = _burst_dictionary(grids.shape[-1])
    proj = centred @ templates.T  # [N, M]
    first = proj.abs().argmax(dim=1)
    t1 = templates[first]  # [N, D]
    p1 = proj.gather(1, first[:, None]).squeeze(1)
    residual = centred - p1[:, None] * t1
    # the second template made orthogonal to the first: t2' = t2 - (t2.t1) t1
    overlap = t1 @ templates.T  # [N, M]
    norm2 = (1.0 - overlap.square()).clamp_min(1e-6)
    p2 = (residual @ templates.T).square() / norm2
    p2 = torch.where(norm2 > 1e-3, p2, torch.zeros_like(p2))
    return ((p1.square() + p2.max(dim=1).values) / energy).clamp(max=1.0)


def neighbour_correlation(grids: torch.Tensor) -> torch.Tensor:
    """Moran's I of each grid [N, k, k] -> [N] over its horizontally and vertically adjacent
    pixel pairs: about 1 for smooth strokes, about -1/(k²-1) for independent noise."""
    g = grids.detach().to(torch.float32).cpu()
    z = g - g.mean(dim=(-2, -1), keepdim=True)
    pairs = (z[..., :, 1:] * z[..., :, :-1]).sum(dim=(-2, -1)) + (z[..., 1:, :] * z[..., :-1, :]).sum(dim=(-2, -1))
    n_pairs = 2 * g.shape[-1] * (g.shape[-1] - 1)
    n = g.shape[-1] * g.shape[-2]
    return n / n_pairs * pairs / z.square().sum(dim=(-2, -1)).clamp_min(_EPS)


def kurtosis(grids: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis of each grid's pixel values [N, k, k] -> [N]: 0 for Gaussian noise, large
    when a few pixels carry the energy."""
    g = grids.detach().to(torch.float32).cpu().flatten(1)
    z = g - g.mean(dim=1, keepdim=True)
    m2 = z.square().mean(dim=1).clamp_min(_EPS)
    return z.pow(4).mean(dim=1) / m2.square() - 3.0


@dataclass
class GridStatistics:
    """Per grid: the numbers that tell bursts from strokes (docs/measures.md)."""

    kurtosis: torch.Tensor  # [N]
    burst_r2: torch.Tensor  # [N] two-burst fit
    line_r2: torch.Tensor  # [N] line-family fit
    neighbour_corr: torch.Tensor  # [N]

    @property
    def burst_minus_line(self) -> torch.Tensor:
        return self.burst_r2 - self.line_r2

    @property
    def burst_like(self) -> torch.Tensor:
        """The cut-off, calibrated on `reference_grids`: bursts explain the grid better than a line."""
        return self.burst_minus_line > BURST_CUTOFF

    def summary(self) -> dict[str, float]:
        """Medians of each statistic and the share of burst-like grids."""
        return {
            "kurtosis": float(self.kurtosis.median()),
            "burst_minus_line": float(self.burst_minus_line.median()),
            "neighbour_corr": float(self.neighbour_corr.median()),
            "burst_like_share": float(self.burst_like.float().mean()),
        }


# burst_minus_line above this calls a grid burst-like (see docs/measures.md for the reference values).
BURST_CUTOFF = 0.25


def grid_statistics(grids: torch.Tensor) -> GridStatistics:
    """The burst-vs-stroke statistics of grids [N, k, k]."""
    grids = grids.detach().to(torch.float32).cpu().reshape(-1, *grids.shape[-2:])
    return GridStatistics(
        kurtosis(grids), burst_fit_r2(grids), fit_lines(grids, refine_steps=0).r2, neighbour_correlation(grids)
    )


REFERENCE_FAMILIES = ("noise", "uniform_noise", "line", "stroke", "single_burst", "double_burst")


def reference_grids(n: int = 200, size: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Planted grids [n, size, size] per family, with random positions, angles and widths:
    Gaussian noise; line-family lines and edges; Gabor-like strokes (a line times a Gaussian
    envelope); one and two pixel bursts (sigma 0.3-0.6 cells), each with 5% noise."""
    g = torch.Generator().manual_seed(seed)

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=g)

    def noisy(grids):
        scale = grids.flatten(1).norm(dim=1)[:, None, None] / size
        return grids + 0.05 * scale * torch.randn(grids.shape, generator=g)

    theta = uniform(0, math.pi, n)
    lines = line_kernels(theta, uniform(0.25, 0.6, n), uniform(-0.3, 0.3, n), 1.0, "line", size)
    half = n // 2
    lines[half:] = line_kernels(
        theta[half:], uniform(0.25, 0.6, n - half), uniform(-0.2, 0.2, n - half), 1.0, "edge", size
    )
    x, y = grid_xy(size)
    cx, cy = uniform(-1, 1, n, 1, 1), uniform(-1, 1, n, 1, 1)
    envelope = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 1.5**2))
    strokes = envelope * line_kernels(theta, uniform(0.3, 0.6, n), uniform(-0.3, 0.3, n), 1.0, "line", size)
    r = (size - 1) / 2

    def bursts(count):
        signs = torch.where(torch.rand(n, count, generator=g) < 0.5, -1.0, 1.0)
        return burst_grids(
            torch.randint(-int(r), int(r) + 1, (n, count), generator=g).float(),
            torch.randint(-int(r), int(r) + 1, (n, count), generator=g).float(),
            uniform(0.3, 0.6, n, count),
            uniform(0.3, 0.6, n, count),
            signs * uniform(0.6, 1.0, n, count),
            size,
        )

    return {
        "noise": torch.randn(n, size, size, generator=g),
        # PyTorch's default init (Kaiming uniform): an untrained net's grids
        "uniform_noise": uniform(-1, 1, n, size, size),
        "line": noisy(lines),
        "stroke": noisy(strokes),
        "single_burst": noisy(bursts(1)),
        "double_burst": noisy(bursts(2)),
    }
