"""Convolutions whose kernels are members of the parametric families (models/parametric.py).

The only parameters are the family's own (plus a bias per out channel); the kernels are
computed from them in every forward pass, so they can never leave the family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.models.parametric import KINDS, burst_grids, line_kernels

# Widths never shrink below this (grid units / grid cells): a vanishing width makes a kernel
# a single noisy pixel and its gradient explode.
MIN_SIGMA = 0.05


class LineConv2d(nn.Module):
    """One input channel -> n line/edge detectors on a size x size grid ("same" padding).

    Parameters per kernel: theta (radians, counter-clockwise from horizontal), sigma (width, in
    grid units where the grid spans [-1, 1]), offset (perpendicular shift), amplitude; and bias.
    `is_edge` (a buffer, not trained) says which kernels have the odd (edge) profile.
    """

    def __init__(self, n: int, size: int = 5, kinds: list[str] | None = None):
        super().__init__()
        kinds = list(kinds or ["line"] * n)
        if len(kinds) != n or any(k not in KINDS for k in kinds):
            raise ValueError(f"kinds={kinds}: expected {n} values from {KINDS}")
        self.size = size
        self.theta = nn.Parameter(torch.zeros(n))
        self.sigma = nn.Parameter(torch.full((n,), 0.3))
        self.offset = nn.Parameter(torch.zeros(n))
        self.amplitude = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))
        self.register_buffer("is_edge", torch.tensor([k == "edge" for k in kinds]))

    @property
    def kinds(self) -> list[str]:
        return [KINDS[int(e)] for e in self.is_edge]

    def kernels(self) -> torch.Tensor:
        """The current kernels [n, size, size]."""
        args = (self.theta, self.sigma.abs().clamp_min(MIN_SIGMA), self.offset, self.amplitude)
        lines = line_kernels(*args, kind="line", size=self.size)
        if not self.is_edge.any():
            return lines
        edges = line_kernels(*args, kind="edge", size=self.size)
        return torch.where(self.is_edge[:, None, None], edges, lines)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernels()[:, None], self.bias, padding=self.size // 2)


class BurstConv2d(nn.Module):
    """in_channels -> out_channels; each (out, in) grid is a sum of n_bursts Gaussian bursts.

    Parameters per burst, each of shape [out, in, n_bursts]: mean_x, mean_y (grid cells from the
    grid centre, x right, y up), sigma_x, sigma_y, amplitude (signed peak value); and bias [out].
    No padding (the conv3 of docs/measures.md: 7x7 -> 3x3).
    """

    def __init__(self, in_channels: int, out_channels: int, n_bursts: int = 1, size: int = 5):
        super().__init__()
        self.size = size
        shape = (out_channels, in_channels, n_bursts)
        self.mean_x = nn.Parameter(torch.zeros(shape))
        self.mean_y = nn.Parameter(torch.zeros(shape))
        self.sigma_x = nn.Parameter(torch.ones(shape))
        self.sigma_y = nn.Parameter(torch.ones(shape))
        self.amplitude = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def reset_random(self, sigma: float, amplitude_std: float) -> None:
        """Bursts anywhere on the grid with random signed amplitudes (the random initialisation)."""
        half = (self.size - 1) / 2.0
        with torch.no_grad():
            self.mean_x.uniform_(-half, half)
            self.mean_y.uniform_(-half, half)
            self.sigma_x.fill_(sigma)
            self.sigma_y.fill_(sigma)
            self.amplitude.normal_(0.0, amplitude_std)
            self.bias.zero_()

    def grids(self) -> torch.Tensor:
        """The current weight grids [out, in, size, size]."""
        sx, sy = (s.abs().clamp_min(MIN_SIGMA) for s in (self.sigma_x, self.sigma_y))
        return burst_grids(self.mean_x, self.mean_y, sx, sy, self.amplitude, size=self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.grids(), self.bias)
