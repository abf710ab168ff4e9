"""The two parametric families of the project (their fits to free kernels are in convdissect.analysis.fits).

- Line family (conv1 of the HandNet; describes trained conv1 kernels): a stroke detector on a
  k x k grid with coordinates u (right) and v (UP) in [-1, 1]; see convdissect.conventions for
  angles, signs and edge sides.
- Burst family (conv3 of the HandNet; describes trained conv3 grids): a sum of a few Gaussian
  bursts, positions in grid cells from the grid centre (x right, y up).

Both are plain differentiable torch functions, batched over leading dimensions.
"""

from __future__ import annotations

import math

import torch

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


def line_profile(theta, sigma, offset, kind: str, size: int) -> torch.Tensor:
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
    z = line_profile(theta, sigma, offset, kind, size)
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
