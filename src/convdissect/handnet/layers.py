"""Convolutions whose kernels are members of the parametric families (analysis/families.py).

The only parameters are the family's own (plus a bias per out channel); the kernels are
computed from them in every forward pass, so they can never leave the family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.analysis.families import KINDS, burst_grids, line_kernels

# Widths never shrink below this (grid units / grid cells): a vanishing width makes a kernel
# a single noisy pixel and its gradient explode.
MIN_SIGMA = 0.05


def width_as_used(sigma: torch.Tensor) -> torch.Tensor:
    """A width parameter as the layers compute with it: |sigma|, at least MIN_SIGMA (training may leave
    the parameter negative; the recipe files take the widths as used)."""
    return sigma.abs().clamp_min(MIN_SIGMA)


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
        args = (self.theta, width_as_used(self.sigma), self.offset, self.amplitude)
        lines = line_kernels(*args, kind="line", size=self.size)
        if not self.is_edge.any():
            return lines
        edges = line_kernels(*args, kind="edge", size=self.size)
        return torch.where(self.is_edge[:, None, None], edges, lines)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernels()[:, None], self.bias, padding=self.size // 2)


# BurstConv2d's channel choice: soft (softmax over the logits at `temperature`), hard (the argmax
# channel forward, the softmax's gradient backward: straight-through) or frozen (the `channel` buffer).
CHANNEL_MODES = ("soft", "hard", "frozen")


class BurstConv2d(nn.Module):
    """in_channels -> out_channels; each out channel owns n_bursts Gaussian bursts, each reading ONE in channel.

    Parameters per burst, each of shape [out, n_bursts]: mean_x, mean_y (grid cells from the grid
    centre, x right, y up), sigma_x, sigma_y, amplitude (signed peak value); channel_logits
    [out, n_bursts, in] (the learnable channel choice; None with learn_channels=False, where the
    channels are given by fix_channels); and bias [out]. Buffers: `channel` [out, n_bursts] (the
    chosen channel once frozen), `temperature` and `mode` (an index of CHANNEL_MODES), set by the
    training schedule (handnet/schedule.py). No padding (7x7 -> 3x3).
    """

    def __init__(
        self, in_channels: int, out_channels: int, n_bursts: int = 1, size: int = 5, learn_channels: bool = True
    ):
        super().__init__()
        self.size, self.in_channels = size, in_channels
        shape = (out_channels, n_bursts)
        self.mean_x = nn.Parameter(torch.zeros(shape))
        self.mean_y = nn.Parameter(torch.zeros(shape))
        self.sigma_x = nn.Parameter(torch.ones(shape))
        self.sigma_y = nn.Parameter(torch.ones(shape))
        self.amplitude = nn.Parameter(torch.zeros(shape))
        self.channel_logits = nn.Parameter(torch.zeros(*shape, in_channels)) if learn_channels else None
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("channel", torch.zeros(shape, dtype=torch.long))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("mode", torch.tensor(0 if learn_channels else CHANNEL_MODES.index("frozen")))

    @property
    def n_bursts(self) -> int:
        return self.mean_x.shape[1]

    @property
    def frozen(self) -> bool:
        return CHANNEL_MODES[int(self.mode)] == "frozen"

    def set_channel_mode(self, mode: str, temperature: float | None = None) -> None:
        """Switch the channel choice; freezing fixes each burst's channel at its logits' argmax."""
        if self.channel_logits is None:
            raise ValueError("BurstConv2d(learn_channels=False) has fixed channels; nothing to switch")
        if mode == "frozen" and not self.frozen:
            self.channel.copy_(self.channel_logits.detach().argmax(-1))
        self.mode.fill_(CHANNEL_MODES.index(mode))
        self.channel_logits.requires_grad_(mode != "frozen")
        if temperature is not None:
            self.temperature.fill_(temperature)

    def fix_channels(self, channel: torch.Tensor) -> None:
        """Set the fixed channels [out, n_bursts] of a layer with learn_channels=False."""
        self.channel.copy_(channel)

    def reset_random(self, sigma: float, amplitude_std: float) -> None:
        """Bursts anywhere on the grid with random signed amplitudes and nearly uniform channel
        logits (the random initialisation)."""
        half = (self.size - 1) / 2.0
        with torch.no_grad():
            self.mean_x.uniform_(-half, half)
            self.mean_y.uniform_(-half, half)
            self.sigma_x.fill_(sigma)
            self.sigma_y.fill_(sigma)
            self.amplitude.normal_(0.0, amplitude_std)
            if self.channel_logits is not None:
                self.channel_logits.normal_(0.0, 0.1)
            self.bias.zero_()

    def channel_weights(self) -> torch.Tensor:
        """How much each burst reads each in channel [out, n_bursts, in]: one-hot unless soft."""
        if self.frozen:
            return F.one_hot(self.channel, self.in_channels).to(self.mean_x.dtype)
        soft = torch.softmax(self.channel_logits / self.temperature, dim=-1)
        if CHANNEL_MODES[int(self.mode)] == "soft":
            return soft
        hard = F.one_hot(soft.argmax(-1), self.in_channels).to(soft.dtype)
        return hard + soft - soft.detach()  # straight-through: hard forward, softmax gradient

    def burst_grids(self) -> torch.Tensor:
        """Each burst's own Gaussian [out, n_bursts, size, size]."""
        sx, sy = (width_as_used(s)[..., None] for s in (self.sigma_x, self.sigma_y))
        return burst_grids(
            self.mean_x[..., None], self.mean_y[..., None], sx, sy, self.amplitude[..., None], size=self.size
        )

    def grids(self) -> torch.Tensor:
        """The current weight grids [out, in, size, size]."""
        return torch.einsum("okc,okij->ocij", self.channel_weights(), self.burst_grids())

    def keep(self, units: torch.Tensor) -> None:
        """Keep only these out channels (in this order)."""
        for name in ("mean_x", "mean_y", "sigma_x", "sigma_y", "amplitude", "channel_logits", "bias"):
            old = getattr(self, name)
            if old is None:
                continue
            setattr(self, name, nn.Parameter(old.detach()[units].clone(), requires_grad=old.requires_grad))
        self.channel = self.channel[units].clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.grids(), self.bias)
