"""Superstimuli (feature visualisation, Lucent-like) sized for 28 x 28 grayscale MNIST nets.

Three parts kept apart, as in Lucent:
- parameterisations: PixelImage, FourierImage -> raw images in [0, 1] (a sigmoid), MNIST's range;
- transforms: Jitter, Scale, Rotate, random per image, applied before every step;
- objectives: the mean output of one channel per image (a conv map's mean, an fc unit or class logit).
All channels of a layer are optimised together: image i of the batch maximises channel i. The
net has no batch-coupled layers, so this is the same as one run per channel, only faster.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from convdissect.data.probes import IMAGE_SIZE, normalise
from convdissect.errors import UserInputError

# ---------------------------------------------------------------------------- parameterisations


class PixelImage(nn.Module):
    """One free logit per pixel."""

    def __init__(self, n: int, size: int = IMAGE_SIZE, std: float = 0.01, generator=None):
        super().__init__()
        self.logits = nn.Parameter(torch.randn(n, 1, size, size, generator=generator) * std)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class FourierImage(nn.Module):
    """The image's 2D spectrum, each frequency scaled by 1 / f^decay: the optimisation starts
    with low frequencies, so the superstimuli are smooth strokes rather than pixel noise."""

    def __init__(self, n: int, size: int = IMAGE_SIZE, std: float = 0.01, decay: float = 1.0, generator=None):
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freqs = (fx.square() + fy.square()).sqrt()
        self.register_buffer("scale", freqs.clamp_min(1.0 / size).pow(-decay) / size)
        self.spectrum = nn.Parameter(torch.randn(n, 1, size, size // 2 + 1, 2, generator=generator) * std)
        self.size = size

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        return torch.sigmoid(torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") * self.size)


PARAMETERISATIONS = {"pixel": PixelImage, "fourier": FourierImage}

# ---------------------------------------------------------------------------- transforms


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Affine resampling per image (theta [N, 2, 3] in normalised coordinates); outside is 0 (black)."""
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def _uniform(n: int, low: float, high: float, like: torch.Tensor, generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (high - low) + low).to(like)


class Jitter:
    """Shift each image by whole pixels, up to `pixels` in x and y."""

    def __init__(self, pixels: int = 2):
        self.pixels = pixels

    def __call__(self, images, generator=None):
        n, size = len(images), images.shape[-1]
        shift = torch.randint(-self.pixels, self.pixels + 1, (n, 2), generator=generator).to(images) * 2.0 / size
        theta = torch.zeros(n, 2, 3).to(images)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = shift
        return _warp(images, theta)


class Scale:
    """Zoom each image by a factor drawn from [low, high]."""

    def __init__(self, low: float = 0.9, high: float = 1.1):
        self.low, self.high = low, high

    def __call__(self, images, generator=None):
        factor = _uniform(len(images), self.low, self.high, images, generator)
        theta = torch.zeros(len(images), 2, 3).to(images)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factor
        return _warp(images, theta)


class Rotate:
    """Rotate each image by an angle drawn from [-degrees, degrees]."""

    def __init__(self, degrees: float = 10.0):
        self.degrees = degrees

    def __call__(self, images, generator=None):
        angle = _uniform(len(images), -self.degrees, self.degrees, images, generator) * math.pi / 180.0
        cos, sin = angle.cos(), angle.sin()
        theta = torch.zeros(len(images), 2, 3).to(images)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        return _warp(images, theta)


def standard_transforms(jitter: int = 2, scale=(0.9, 1.1), rotate_deg: float = 10.0) -> list:
    """The usual robustness transforms, sized for 28 x 28 (a 0 or null turns one off)."""
    transforms = []
    if jitter:
        transforms.append(Jitter(jitter))
    if scale:
        transforms.append(Scale(*scale))
    if rotate_deg:
        transforms.append(Rotate(rotate_deg))
    return transforms


# ---------------------------------------------------------------------------- objectives and regularisers


def channel_objective(outputs: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Image i's score: channel channels[i]'s output, [N, C, H, W] or [N, C] -> [N].

    A conv map counts through a leaky ReLU, averaged over positions: its zero-mean kernels
    would average a plain map to about 0 on any pattern, and the small leak keeps a gradient
    for a unit that is silent on the start image (Adam rescales it).
    """
    picked = outputs[torch.arange(len(channels), device=outputs.device), channels]
    return F.leaky_relu(picked, 0.01).flatten(1).mean(dim=1) if picked.dim() > 1 else picked


def l2_penalty(images: torch.Tensor) -> torch.Tensor:
    """Mean square brightness per image [N]: prefers a black background, like MNIST."""
    return images.square().flatten(1).mean(dim=1)


def tv_penalty(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels per image [N]: prefers smooth strokes."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(dim=1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(dim=1)
    return dx + dy


# ---------------------------------------------------------------------------- the optimisation


@dataclass
class Superstimuli:
    layer: str
    channels: list[int]  # 0-based
    images: torch.Tensor  # [C, 1, 28, 28], raw in [0, 1]
    activation: torch.Tensor  # [C] the objective on the final, untransformed images


def superstimuli(
    net: nn.Module,
    layer: str,
    channels=None,
    steps: int = 128,
    lr: float = 0.05,
    param: str = "fourier",
    transforms=None,
    l2: float = 0.3,
    tv: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> Superstimuli:
    """Superstimuli of the given channels (0-based; all of the layer's when None), in one batch.

    transforms=None uses standard_transforms(); pass [] for none. Works inside Lightning hooks
    and under inference mode; the net's weights get no gradients and its mode is restored.
    """
    if param not in PARAMETERISATIONS:
        raise UserInputError(f"superstimulus param={param!r}: allowed {sorted(PARAMETERISATIONS)}")
    modules = dict(net.named_modules())
    if layer not in modules or layer == "":
        raise UserInputError(f"superstimulus layer={layer!r}: allowed {sorted(n for n in modules if n)}")
    device = next(net.parameters()).device
    n_channels = _out_channels(modules[layer])
    channels = list(range(n_channels)) if channels is None else [int(c) for c in channels]
    if not channels or not all(0 <= c < n_channels for c in channels):
        raise UserInputError(f"superstimulus channels of {layer}: 0..{n_channels - 1} allowed, got {channels}")
    transforms = standard_transforms() if transforms is None else transforms
    generator = torch.Generator().manual_seed(seed)
    wanted = torch.tensor(channels, device=device)

    was_training = net.training
    net.eval()
    with torch.inference_mode(False), torch.enable_grad(), _stop_after(modules[layer]) as store:
        image = PARAMETERISATIONS[param](len(channels), generator=generator).to(device)
        optimiser = torch.optim.Adam(image.parameters(), lr=lr)
        for _ in tqdm(range(steps), desc=f"superstimuli {layer}", disable=not progress, leave=False):
            raw = image()
            seen = raw
            for transform in transforms:
                seen = transform(seen, generator)
            loss = -channel_objective(store(net, normalise(seen)), wanted) + l2 * l2_penalty(raw) + tv * tv_penalty(raw)
            optimiser.zero_grad()
            grads = torch.autograd.grad(loss.sum(), list(image.parameters()))
            for p, g in zip(image.parameters(), grads):
                p.grad = g
            optimiser.step()
        with torch.no_grad():
            final = image().detach()
            activation = channel_objective(store(net, normalise(final)), wanted)
    net.train(was_training)
    return Superstimuli(layer, channels, final, activation)


@torch.no_grad()
def best_image_objective(net: nn.Module, layer: str, images: torch.Tensor) -> torch.Tensor:
    """[C] each channel's largest `channel_objective` over normalised images [N, 1, 28, 28]: what a
    superstimulus must beat to be a real maximum."""
    was_training = net.training
    net.eval()
    with _stop_after(dict(net.named_modules())[layer]) as store:
        outputs = store(net, images)
    net.train(was_training)
    scores = F.leaky_relu(outputs, 0.01).flatten(2).mean(dim=2) if outputs.dim() > 2 else outputs
    return scores.amax(dim=0)


class _Reached(Exception):
    """Raised by the hook once the target layer has run: the rest of the net is not needed."""

    def __init__(self, output):
        self.output = output


@contextmanager
def _stop_after(module: nn.Module):
    """Yields run(net, x) -> the module's output, stopping the forward pass right there."""

    def hook(mod, args, output):
        raise _Reached(output)

    def run(net, x):
        try:
            net(x)
        except _Reached as reached:
            return reached.output
        raise RuntimeError(f"{type(module).__name__} was not called in the forward pass")

    handle = module.register_forward_hook(hook)
    try:
        yield run
    finally:
        handle.remove()


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.BatchNorm2d):  # an any net's conv, read where its BatchNorm is folded in
        return module.num_features
    if isinstance(
        getattr(module, "bias", None), nn.Parameter
    ):  # HandNet's LineConv2d, BurstConv2d: a bias per out channel
        return module.bias.numel()
    raise UserInputError(f"superstimulus layer of type {type(module).__name__}: only conv and linear layers")
