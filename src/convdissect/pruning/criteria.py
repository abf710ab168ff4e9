"""Which channels to cut: a criterion gives each out channel of a layer a score (low = pruned first).

A criterion is a function `(Calibration, layer name) -> scores [out channels]`, registered in
CRITERIA with whether it has a meaning for fully connected units:
- activation_variance: variance of what the next layer reads of the channel (after its
  activation and pooling) over the calibration images - the article's main criterion
- weight_noise: R² of the best parametric fit of the channel's weight grids (a line, or a burst
  measured by the share of energy in the 2 strongest pixels), energy-weighted over its input
  grids: noise-like grids (1 - R² high) go first; conv layers only
- selectivity: class selectivity of the channel's mean activation, the share of its variance over
  the images explained by the class means (eta²); 0 for a constant channel
- superstimulus_contrast: contrast (pixel std) of what a short gradient ascent of the channel's
  centre unit adds to the mean calibration image it starts from; a plain superstimulus goes first
- magnitude: the Lp norm of the channel's weights (its out-channel slice), p = 1 or 2
- taylor: first-order Taylor estimate of the loss change when the channel is removed,
  |Σ_positions a·∂L/∂a| per calibration image, averaged over the images (Molchanov et al. 2017)
- random: the control
A config's `criterion` is one name or a {name: weight} map: the weighted sum of the criteria's
scores, each first normalised within the layer (`normalise`: rank, to [0, 1], or zscore, to mean 0
and sd 1; one for all or one per criterion) so that no criterion dominates by its scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from convdissect.analysis.fits import fit_lines, peak_energy_share
from convdissect.data.mnist import MNIST_MEAN, MNIST_STD
from convdissect.errors import UserInputError
from convdissect.models.prunable import layer_width

# Pixel range of an image normalised like the data.
PIXEL_LOW, PIXEL_HIGH = -MNIST_MEAN / MNIST_STD, (1.0 - MNIST_MEAN) / MNIST_STD


@dataclass
class Calibration:
    """What the criteria score from: the net (in eval mode), its producer -> consumer table, the
    calibration images and labels, and what each consumer read of each prunable layer's channels
    on them ([N, C, positions])."""

    net: nn.Module
    table: dict[str, str]
    images: torch.Tensor
    labels: torch.Tensor
    generator: torch.Generator
    acts: dict[str, torch.Tensor] = field(init=False)
    _taylor: dict[str, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.acts = consumer_inputs(self.net, self.table, self.images)

    def taylor(self) -> dict[str, torch.Tensor]:
        """Taylor scores of every prunable layer, from one backward pass over the calibration
        images (computed the first time a layer asks)."""
        if self._taylor is None:
            self._taylor = taylor_scores(self.net, self.table, self.images, self.labels)
        return self._taylor


def _capture_consumer_inputs(net: nn.Module, table: dict[str, str], store: dict) -> list:
    """Forward pre-hooks saving each consumer's input under its producer's name."""
    handles = []
    for producer, consumer in table.items():

        def hook(module, args, producer=producer):
            store[producer] = args[0]

        handles.append(net.get_submodule(consumer).register_forward_pre_hook(hook))
    return handles


def _by_channel(x: torch.Tensor, width: int) -> torch.Tensor:
    """A consumer's input as [N, C, positions] (after flatten a channel is a block of positions)."""
    return x.reshape(len(x), width, -1)


@torch.no_grad()
def consumer_inputs(net: nn.Module, table: dict[str, str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each producer layer: its channels as the consumer reads them, [N, C, positions]."""
    store = {}
    handles = _capture_consumer_inputs(net, table, store)
    try:
        net(images)
    finally:
        for handle in handles:
            handle.remove()
    return {name: _by_channel(x, layer_width(net.get_submodule(name))) for name, x in store.items()}


def taylor_scores(
    net: nn.Module, table: dict[str, str], images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250
) -> dict[str, torch.Tensor]:
    """Per prunable layer and channel: |Σ_positions a·∂L_i/∂a| averaged over the images i, where
    a is what the consumer reads of the channel and L_i the image's NLL loss. Removing the
    channel sets a to 0, so this is the first-order change of the loss. Gradients are taken
    with respect to the activations only: the parameters' .grad (the optimizer's) is left alone."""
    totals = {name: torch.zeros(layer_width(net.get_submodule(name)), device=images.device) for name in table}
    store = {}
    handles = _capture_consumer_inputs(net, table, store)
    try:
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                logits = net(images[start : start + batch_size])
                # a sum over images: each image's gradient is that of its own loss
                loss = F.nll_loss(logits, labels[start : start + batch_size], reduction="sum")
                names = list(store)
                grads = torch.autograd.grad(loss, [store[name] for name in names])
                for name, grad in zip(names, grads):
                    width = len(totals[name])
                    change = (_by_channel(store[name].detach(), width) * _by_channel(grad, width)).sum(dim=2)
                    totals[name] += change.abs().sum(dim=0)
                store.clear()
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / len(images) for name, total in totals.items()}


def activation_variance(cal: Calibration, layer: str) -> torch.Tensor:
    return cal.acts[layer].transpose(0, 1).flatten(1).var(dim=1)


def selectivity(cal: Calibration, layer: str) -> torch.Tensor:
    mean_act = cal.acts[layer].mean(dim=2)  # [N, C]
    total = mean_act.var(dim=0, unbiased=False)
    centred = mean_act - mean_act.mean(dim=0)
    between = torch.zeros_like(total)
    for label in cal.labels.unique():
        members = centred[cal.labels == label]
        between += len(members) * members.mean(dim=0).square()
    eta2 = between / len(mean_act) / total.clamp_min(1e-12)
    return torch.where(total > 1e-10, eta2, torch.zeros_like(eta2))


def weight_noise(cal: Calibration, layer: str) -> torch.Tensor:
    weight = cal.net.get_submodule(layer).weight.detach().cpu()  # [C, I, k, k]
    grids = weight.flatten(0, 1)
    r2 = torch.maximum(fit_lines(grids).r2, peak_energy_share(grids, n=2)).view(weight.shape[:2])
    energy = weight.square().sum(dim=(-2, -1))
    return (r2 * energy).sum(dim=1) / energy.sum(dim=1).clamp_min(1e-12)


# Ascent steps of superstimulus_contrast: the channels' ranks at 64 steps agree with those at 128
# (studies/superstimulus_steps.py measures it on a trained net; docs/article_method.md).
SUPERSTIMULUS_STEPS = 64


class _LayerReached(Exception):
    """Ends a forward pass at the layer being scored."""


def superstimulus_contrast(
    cal: Calibration, layer: str, steps: int = SUPERSTIMULUS_STEPS, lr: float = 2.0
) -> torch.Tensor:
    module = cal.net.get_submodule(layer)
    width = layer_width(module)
    # from the mean calibration image: from a grey one, channels that grey leaves silent get no
    # gradient and all score 0 (every conv2 channel of a trained baseline)
    start = cal.images.mean(dim=0).to(module.weight.device)
    images = start.expand(width, *start.shape).clone().requires_grad_(True)
    captured = {}

    def stop_at_layer(m, args, out):  # the layers after it would only cost time
        captured["out"] = out
        raise _LayerReached

    handle = module.register_forward_hook(stop_at_layer)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                try:
                    cal.net(images)
                except _LayerReached:
                    pass
                out = captured["out"]
                centre = out[..., out.shape[-2] // 2, out.shape[-1] // 2] if out.dim() == 4 else out  # [C images, C]
                (grad,) = torch.autograd.grad(centre.diagonal().sum(), images)
                with torch.no_grad():
                    images += lr * grad
                    images.clamp_(PIXEL_LOW, PIXEL_HIGH)
    finally:
        handle.remove()
    # what the ascent added to the start: 0 for a channel that no input moves
    return (images.detach() - start).flatten(1).std(dim=1)


def magnitude(cal: Calibration, layer: str, p: float = 2.0) -> torch.Tensor:
    return cal.net.get_submodule(layer).weight.detach().flatten(1).norm(p=p, dim=1)


def taylor(cal: Calibration, layer: str) -> torch.Tensor:
    return cal.taylor()[layer]


def random_scores(cal: Calibration, layer: str) -> torch.Tensor:
    return torch.rand(layer_width(cal.net.get_submodule(layer)), generator=cal.generator)


Score = Callable[..., torch.Tensor]  # (Calibration, layer, **options) -> [out channels]


@dataclass(frozen=True)
class Criterion:
    score: Score
    for_linear: bool  # whether it has a meaning for fully connected units


CRITERIA = {
    "activation_variance": Criterion(activation_variance, True),
    "weight_noise": Criterion(weight_noise, False),
    "selectivity": Criterion(selectivity, True),
    "superstimulus_contrast": Criterion(superstimulus_contrast, True),
    "magnitude": Criterion(magnitude, True),
    "taylor": Criterion(taylor, True),
    "random": Criterion(random_scores, True),
}
FALLBACK = "activation_variance"  # for a conv-only criterion on a fully connected layer


def parse_criterion(criterion) -> dict[str, float]:
    """'name' or {name: weight} -> {name: weight}, checked."""
    if isinstance(criterion, str):
        weights = {criterion: 1.0}
    else:
        weights = {str(k): float(v) for k, v in dict(criterion).items()}
    unknown = [name for name in weights if name not in CRITERIA]
    if not weights or unknown:
        raise UserInputError(
            f"callbacks.pruning.criterion={criterion!r}: unknown {unknown}; known criteria {list(CRITERIA)}"
        )
    if any(w <= 0 for w in weights.values()):
        raise UserInputError(f"callbacks.pruning.criterion={criterion!r}: weights must be positive")
    return weights


NORMALISATIONS = ("rank", "zscore")


def parse_normalise(normalise, weights: dict[str, float]) -> dict[str, str]:
    """'rank' | 'zscore' | {name: 'rank' | 'zscore'} -> {name: normalisation} for every criterion
    in `weights` (a criterion missing from a map is ranked), checked."""
    if isinstance(normalise, str):
        by_name = dict.fromkeys(weights, normalise)
    else:
        by_name = {str(k): str(v) for k, v in dict(normalise).items()}
        extra = [name for name in by_name if name not in weights]
        if extra:
            raise UserInputError(
                f"callbacks.pruning.normalise={normalise!r}: {extra} not in the criterion {list(weights)}"
            )
        by_name = {name: by_name.get(name, "rank") for name in weights}
    bad = {name: v for name, v in by_name.items() if v not in NORMALISATIONS}
    if bad:
        raise UserInputError(f"callbacks.pruning.normalise={normalise!r}: {bad}; allowed {list(NORMALISATIONS)}")
    return by_name


def rank01(scores: torch.Tensor) -> torch.Tensor:
    """Scores -> their ranks scaled to [0, 1] (comparable across criteria)."""
    ranks = scores.argsort().argsort().float()
    return ranks / max(1, len(scores) - 1)


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Scores -> (scores - mean) / sd within the layer; all 0 when they do not vary."""
    sd = scores.std(unbiased=False) if len(scores) > 1 else scores.new_zeros(())
    return (scores - scores.mean()) / sd if sd > 1e-12 else torch.zeros_like(scores)


NORMALISE = {"rank": rank01, "zscore": zscore}


def score_layer(
    cal: Calibration,
    layer: str,
    weights: dict[str, float],
    options: dict[str, dict] | None = None,
    normalise: dict[str, str] | None = None,
) -> tuple[torch.Tensor, dict[str, str]]:
    """Scores of the layer's out channels (on the CPU), and the criteria that fell back
    ({criterion: used}). `options` holds keyword arguments per criterion, e.g. {"magnitude": {"p": 1}};
    `normalise` {criterion: 'rank' | 'zscore'} how each is normalised in a combination (default rank).
    A single criterion's scores are returned as they are."""
    options, normalise = options or {}, normalise or {}
    is_conv = isinstance(cal.net.get_submodule(layer), nn.Conv2d)
    used, fallbacks = {}, {}
    for name, weight in weights.items():
        if not (CRITERIA[name].for_linear or is_conv):
            fallbacks[name] = FALLBACK
            name = FALLBACK
        used[name] = used.get(name, 0.0) + weight
    per_criterion = {name: CRITERIA[name].score(cal, layer, **options.get(name, {})).float().cpu() for name in used}
    if len(per_criterion) == 1:
        return next(iter(per_criterion.values())), fallbacks
    return sum(w * NORMALISE[normalise.get(name, "rank")](per_criterion[name]) for name, w in used.items()), fallbacks
