"""The two parametric families of the project and fits of free kernels to them.

- Line family (conv1 of the HandNet; describes trained conv1 kernels): a stroke detector on a
  k x k grid with coordinates u (right) and v (UP) in [-1, 1]; see convdissect.conventions for
  angles, signs and edge sides.
- Burst family (conv3 of the HandNet; describes trained conv3 grids): a sum of a few Gaussian
  bursts, positions in grid cells from the grid centre (x right, y up).

Both are plain differentiable torch functions, batched over leading dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from convdissect.conventions import (
    clock_from_xy,
    edge_side,
    format_burst,
    stroke_label,
)

KINDS = ("line", "edge")
_EPS = 1e-8


def grid_uv(size: int = 5, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates u (right) and v (up) in [-1, 1] of a size x size grid; row 0 is the top (v=+1)."""
    axis = torch.linspace(-1.0, 1.0, size, device=device, dtype=dtype)
    v, u = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    return u, v


def grid_xy(size: int = 5, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates x (right) and y (up) in grid cells from the grid centre; row 0 is the top."""
    axis = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2.0
    y, x = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    return x, y


def _as_tensors(*values) -> list[torch.Tensor]:
    """Numbers and tensors -> tensors broadcast to one shape, on the device/dtype of the first tensor."""
    like = next((v for v in values if isinstance(v, torch.Tensor)), torch.empty(0))
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return torch.broadcast_tensors(*(torch.as_tensor(v, dtype=dtype, device=like.device) for v in values))


def _zero_mean_profile(theta, sigma, offset, kind: str, size: int) -> torch.Tensor:
    """The un-normalised, zero-mean profile of the line family, shape [..., size, size]."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: allowed {KINDS}")
    u, v = grid_uv(size, device=theta.device, dtype=theta.dtype)
    theta, sigma, offset = (t[..., None, None] for t in (theta, sigma, offset))
    d = -u * torch.sin(theta) + v * torch.cos(theta) - offset
    gauss = torch.exp(-(d**2) / (2.0 * sigma**2))
    profile = gauss if kind == "line" else d / sigma * gauss
    return profile - profile.mean(dim=(-2, -1), keepdim=True)


def line_kernels(theta, sigma, offset, amplitude, kind: str = "line", size: int = 5) -> torch.Tensor:
    """Line-family kernels: amplitude * normalise(zero-mean(profile(d))), d = -u sinθ + v cosθ - o.

    theta in radians; all four arguments broadcast to a common shape [...]; returns
    [..., size, size]. `line` has the even profile exp(-d²/2σ²), `edge` the odd (d/σ) exp(-d²/2σ²).
    Each kernel has zero mean and L2 norm |amplitude|.
    """
    theta, sigma, offset, amplitude = _as_tensors(theta, sigma, offset, amplitude)
    z = _zero_mean_profile(theta, sigma, offset, kind, size)
    norm = z.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(_EPS)
    return amplitude[..., None, None] * z / norm


def burst_grids(mean_x, mean_y, sigma_x, sigma_y, amplitude, size: int = 5) -> torch.Tensor:
    """Sum of Gaussian bursts on a size x size grid: arguments [..., B] -> [..., size, size].

    Positions and widths are in grid cells from the grid centre (x right, y up); a burst's peak
    value is its signed amplitude.
    """
    mean_x, mean_y, sigma_x, sigma_y, amplitude = _as_tensors(mean_x, mean_y, sigma_x, sigma_y, amplitude)
    x, y = grid_xy(size, device=mean_x.device, dtype=mean_x.dtype)
    mx, my, sx, sy, a = (t[..., None, None, :] for t in (mean_x, mean_y, sigma_x, sigma_y, amplitude))
    bursts = a * torch.exp(-((x[..., None] - mx) ** 2) / (2 * sx**2) - ((y[..., None] - my) ** 2) / (2 * sy**2))
    return bursts.sum(dim=-1)


def canonical_line(theta, offset, amplitude, is_edge):
    """The same kernels with θ (radians) in [0, π): a half turn of θ negates d, which the offset
    absorbs, and flips an edge's (odd) profile, which its amplitude absorbs."""
    turns = torch.floor(theta / math.pi)
    flipped = turns.remainder(2) == 1
    return (
        theta - turns * math.pi,
        torch.where(flipped, -offset, offset),
        torch.where(flipped & is_edge, -amplitude, amplitude),
    )


# ---------------------------------------------------------------------------- line fits


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
                    torch.deg2rad(self.theta_deg[idx]), self.sigma[idx], self.offset[idx], self.amplitude[idx], kind, self.size
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
        z = _zero_mean_profile(t, s, o, kind, size).flatten(1)
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
        theta, sigma, offset = _refine(centred.reshape(n, size, size), energy, theta, sigma, offset, is_edge, r2, refine_steps)

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
            unit = line_kernels(t[idx], log_s[idx].exp().clamp(0.1, 5.0), o[idx], 1.0, KINDS[int(edge)], centred.shape[-1])
            share[idx] = (unit * centred[idx]).sum(dim=(-2, -1)).square() / energy[idx]
        return share

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
