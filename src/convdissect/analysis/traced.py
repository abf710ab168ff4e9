"""Any ConvNet seen through forward hooks: one forward pass records the input and output of every
Conv2d and Linear, in the order the net calls them (docs/own_net.md).

- A BatchNorm2d whose input is a conv's output is folded into that conv (eval mode: its running
  statistics), so the layer's output is the BatchNorm's;
- the layer's nonlinearity is the activation module the net applies next to that output; where the
  net does something else (a functional relu, an add), it is unknown and measured as a ReLU;
- the layer's source is the traced layer its input comes from through modules that keep channels
  (activations, pooling, dropout, flatten); unknown after a functional op, an add or a concatenation,
  except for a Linear: then the last conv before it whose width divides its in_features.
A module called more than once (a shared layer) is traced at its first call only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from convdissect.analysis.contributions import blank_image

LAYER_TYPES = (nn.Conv2d, nn.Linear)
ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.SiLU)
CHANNEL_KEEPING = ACTIVATIONS + (
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Identity,
    nn.Flatten,
)


@dataclass
class TracedLayer:
    """One Conv2d or Linear of a net, as the net ran it on the images."""

    name: str  # its module path, e.g. "features.3"
    layer: nn.Module  # the Conv2d or Linear, with a BatchNorm2d reading its output folded in
    inputs: torch.Tensor  # [N, Cin, H, W] or [N, F]
    outputs: torch.Tensor  # [N, Cout, H', W'] or [N, Cout]: the (folded) layer's pre-activations
    blank_inputs: torch.Tensor  # [1, ...] its inputs on the blank image
    activation: nn.Module | None = None  # the activation module the net applies next; None: unknown
    source: str | None = None  # the traced layer whose channels the inputs are
    folded: str | None = None  # the BatchNorm2d folded in

    @property
    def nonlinearity(self) -> str:
        """What the measures apply to the outputs: the net's own activation, or an assumed ReLU."""
        return type(self.activation).__name__ if self.activation is not None else "ReLU (assumed)"

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) if self.activation is not None else x.relu()

    @property
    def is_conv(self) -> bool:
        return isinstance(self.layer, nn.Conv2d)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of conv computing bn(conv(x)) with bn's running statistics (eval mode)."""
    folded = copy.deepcopy(conv).eval()
    scale = bn.weight.detach() / (bn.running_var + bn.eps).sqrt() if bn.affine else 1 / (bn.running_var + bn.eps).sqrt()
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
    folded.weight = nn.Parameter(conv.weight.detach() * scale[:, None, None, None], requires_grad=False)
    folded.bias = nn.Parameter((bias - bn.running_mean) * scale + shift, requires_grad=False)
    return folded


@torch.no_grad()
def module_calls(net: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
    """(module path, module, first input, output) of every leaf module the net calls on x, in call order."""
    calls = []
    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: calls.append((name, m, args[0], out)))
        for name, module in net.named_modules()
        if not list(module.children()) and isinstance(module, LAYER_TYPES + CHANNEL_KEEPING)
    ]
    try:
        net(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@torch.no_grad()
def trace(net: nn.Module, images: torch.Tensor) -> list[TracedLayer]:
    """Every Conv2d and Linear of the net (eval mode) on normalised images, in call order."""
    net.eval()
    images = images.to(next(net.parameters()).dtype)
    calls = module_calls(net, images)
    blank = {}  # each layer's input on the blank image, at its first call as in `layers`
    for name, module, x, _ in module_calls(net, blank_image(images)):
        if isinstance(module, LAYER_TYPES):
            blank.setdefault(name, x)
    layers: dict[str, TracedLayer] = {}
    origin: dict[int, str] = {}  # id of a tensor -> the traced layer whose channels it holds
    made_by: dict[int, TracedLayer] = {}  # id of a layer's (or its folded BatchNorm's) output -> the layer
    for name, module, x, out in calls:
        if isinstance(module, LAYER_TYPES):
            if name in layers:
                continue
            layers[name] = t = TracedLayer(name, module, x, out, blank[name], source=origin.get(id(x)))
            made_by[id(out)] = t
        elif id(x) not in origin:
            continue
        elif isinstance(module, nn.BatchNorm2d) and id(x) in made_by and made_by[id(x)].folded is None:
            t = made_by[id(x)]
            t.layer, t.outputs, t.folded = fold_batchnorm(t.layer, module), out, name
            made_by[id(out)] = t
        elif isinstance(module, ACTIVATIONS) and id(x) in made_by and made_by[id(x)].activation is None:
            made_by[id(x)].activation = module
        if isinstance(module, LAYER_TYPES):
            origin[id(out)] = name
        else:
            origin[id(out)] = origin[id(x)]
    traced = list(layers.values())
    for i, t in enumerate(traced):
        if not t.is_conv and t.source is None:
            t.source = flattened_source(traced[:i], t.layer.in_features)
    return traced


def flattened_source(before: list[TracedLayer], features: int) -> str | None:
    """The conv a Linear reads through functional ops (e.g. F.adaptive_avg_pool2d(...).flatten(1)): the
    last conv called before it, when its width divides in_features (a block of positions per channel)."""
    convs = [t for t in before if t.is_conv]
    if convs and features % convs[-1].outputs.shape[1] == 0:
        return convs[-1].name
    return None


def untrained_copy(net: nn.Module, seed: int) -> nn.Module:
    """A deep copy of the net, every module re-initialised by its own reset_parameters (the null of "learned")."""
    fresh = copy.deepcopy(net)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
    return fresh.eval()
