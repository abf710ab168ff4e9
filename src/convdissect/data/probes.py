"""Synthetic probe images: strokes drawn from the same geometry as the parametric line family.

Image coordinates are in pixels from the image centre, x right and y UP: pixel (row, col) sits at
x = col - 13.5, y = 13.5 - row (see `pixel_xy`). A stroke at angle θ through position c has
normal n = (-sin θ, cos θ) and signed distance d = n · (p - c) - offset (convdissect.conventions).

- `line`: a bright stroke of `thickness` pixels centred on d = 0 (background 0, stroke 1, like MNIST).
- `edge`: a bright bar of `thickness` pixels on the n side (0 < d < thickness), so one boundary
  passes through the position; thickness=math.inf gives a half-plane. The probe at θ is the
  boundary an edge kernel line_kernels(θ, ..., amplitude > 0, kind="edge") fires on, i.e. the
  `edge_side(θ, +1)` side of a stroke; θ + 180° gives the opposite side.

Images come normalised like the data, (x - MNIST_MEAN) / MNIST_STD, or raw in [0, 1] (raw=True).
"""

from __future__ import annotations

import math

import torch

from convdissect.data.mnist import MNIST_MEAN, MNIST_STD

IMAGE_SIZE = 28
_CENTRE = (IMAGE_SIZE - 1) / 2.0


def pixel_xy(row: float, col: float) -> tuple[float, float]:
    """Pixel (row, col) -> (x, y) in pixels from the image centre, x right, y up."""
    return col - _CENTRE, _CENTRE - row


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Raw [0, 1] images -> the data's normalisation."""
    return (images - MNIST_MEAN) / MNIST_STD


def stroke_images(
    angle_deg,
    thickness=2.0,
    offset=0.0,
    center=(0.0, 0.0),
    length=None,
    kind: str = "line",
    raw: bool = False,
) -> torch.Tensor:
    """Stroke probes [N, 1, 28, 28], batched over N (angle_deg, thickness, offset broadcast to [N],
    center is (x, y) or [N, 2], in pixels from the image centre, y up).

    length=None draws an infinite stroke, else a segment of that length centred on the position.
    Boundaries are anti-aliased (one-pixel linear ramps), so small shifts change the image smoothly.
    """
    if kind not in ("line", "edge"):
        raise ValueError(f"kind={kind!r}: allowed 'line', 'edge'")
    theta = torch.deg2rad(torch.as_tensor(angle_deg, dtype=torch.float32).reshape(-1))
    center = torch.as_tensor(center, dtype=torch.float32).reshape(-1, 2)
    thickness = torch.as_tensor(thickness, dtype=torch.float32).reshape(-1)
    offset = torch.as_tensor(offset, dtype=torch.float32).reshape(-1)
    n = max(len(theta), len(center), len(thickness), len(offset))
    theta, thickness, offset = (t.expand(n)[:, None, None] for t in (theta, thickness, offset))
    cx, cy = (c[:, None, None] for c in center.expand(n, 2).unbind(1))

    axis = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    y, x = torch.meshgrid(_CENTRE - axis, axis - _CENTRE, indexing="ij")
    dx, dy = x - cx, y - cy
    d = -dx * torch.sin(theta) + dy * torch.cos(theta) - offset
    if kind == "line":
        image = (thickness / 2 + 0.5 - d.abs()).clamp(0.0, 1.0)
    else:
        image = torch.minimum(d + 0.5, thickness - d + 0.5).clamp(0.0, 1.0)
    if length is not None:
        along = dx * torch.cos(theta) + dy * torch.sin(theta)
        image = image * (length / 2 + 0.5 - along.abs()).clamp(0.0, 1.0)
    image = image[:, None]
    return image if raw else normalise(image)


def sweep_positions(
    angle_deg: float,
    step: float = 2.0,
    margin: float = 4.0,
    kind: str = "line",
    thickness: float = 2.0,
    length: float | None = 7.0,
    raw: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pattern moved across the image: (images [P, 1, 28, 28], positions [P, 2]).

    Positions (x, y, pixels from the centre, y up) form a square grid centred on the image with
    `step` spacing, at least `margin` pixels from the border, row-major from the top-left.
    """
    count = int(math.floor(2 * (_CENTRE - margin) / step)) + 1
    axis = (torch.arange(count, dtype=torch.float32) - (count - 1) / 2) * step
    ys, xs = torch.meshgrid(axis.flip(0), axis, indexing="ij")
    positions = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    images = stroke_images(angle_deg, thickness=thickness, center=positions, length=length, kind=kind, raw=raw)
    return images, positions
