"""Any ConvNet seen through forward hooks: one forward pass records the input and output of every
Conv2d and Linear, in the order the net calls them (docs/own_net.md).

- A BatchNorm2d whose input is a conv's output is folded into that conv (eval mode: its running
  statistics), so the layer's output is the BatchNorm's;
- a grouped conv (depthwise included) is measured as its ungrouped equivalent: each unit's grids on the
  inputs outside its group are zeros, so its drivers and labels name only its group's inputs;
- the layer's nonlinearity is the activation module the net applies next to that output; where the
  net does something else (a functional relu, an add), it is unknown and measured as a ReLU;
- each input channel is named by where it comes from (ChannelNames watches every op of the forward
  pass): a traced layer's unit through ops that keep channels (activations, pooling, dropout, flatten,
  as modules or functions), "(a_3+b_3)" after an add of two named tensors, each part's names after a
  concatenation along channels; unknown after any other op, except for a Linear: then the last conv
  before it whose width divides its in_features names its blocks.
A module called more than once (a shared layer) is traced at its first call only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from convdissect.analysis.contributions import blank_image, surviving
from convdissect.conventions import unit_name

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
    layer: nn.Module  # the Conv2d (ungrouped) or Linear, with a BatchNorm2d reading its output folded in
    inputs: torch.Tensor  # [N, Cin, H, W] or [N, F]
    outputs: torch.Tensor  # [N, Cout, H', W'] or [N, Cout]: the (folded) layer's pre-activations
    blank_inputs: torch.Tensor  # [1, ...] its inputs on the blank image
    activation: nn.Module | None = None  # the activation module the net applies next; None: unknown
    input_channels: list[str] | None = None  # each input channel's name (a Linear: each block's); None: unknown
    folded: str | None = None  # the BatchNorm2d folded in

    @property
    def nonlinearity(self) -> str:
        """What the measures apply to the outputs: the net's own activation, or an assumed ReLU."""
        return type(self.activation).__name__ if self.activation is not None else "ReLU (assumed)"

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x) if self.activation is not None else x.relu()

    def surviving(self) -> torch.Tensor:
        """1 where the output survives the nonlinearity (contributions.surviving), else 0."""
        return surviving(self.outputs, self.activation)

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


def ungrouped(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of a grouped conv computing the same with groups=1: unit k's grids on the input channels
    outside its group are zeros."""
    dense = copy.deepcopy(conv).eval()
    cout, per_group = conv.out_channels, conv.in_channels // conv.groups
    weight = torch.zeros(cout, conv.in_channels, *conv.kernel_size, dtype=conv.weight.dtype)
    group = torch.arange(cout) // (cout // conv.groups)  # each unit's group
    inputs = group[:, None] * per_group + torch.arange(per_group)  # [Cout, per_group] the channels it reads
    weight[torch.arange(cout)[:, None], inputs] = conv.weight.detach()
    dense.in_channels, dense.groups = conv.in_channels, 1
    dense.weight = nn.Parameter(weight.to(conv.weight.device), requires_grad=False)
    return dense


# Functions whose output keeps its input's channels (a flatten: one block of positions per channel).
CHANNEL_KEEPING_FUNCTIONS = {
    "relu", "relu_", "tanh", "sigmoid", "gelu", "leaky_relu", "elu", "silu", "hardtanh", "dropout", "flatten",
    "max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d", "contiguous", "clone",
}  # fmt: skip
ADDS = {"add", "add_", "__add__", "__radd__", "__iadd__"}
CONCATENATIONS = {"cat", "concat", "concatenate"}


class ChannelNames(TorchFunctionMode):
    """While active, names each channel of every tensor made from a named one: the same names through a
    channel-keeping function, '(a+b)' per channel through an add of two named tensors of one shape, the
    parts' names in order through a concatenation along channels. Forward hooks name the traced layers'
    outputs (module_calls)."""

    def __init__(self):
        super().__init__()
        self.names: dict[int, list[str]] = {}
        self.kept: list[torch.Tensor] = []  # every named tensor, alive so that its id stays its own

    def name(self, tensor, names: list[str] | None) -> None:
        if isinstance(tensor, torch.Tensor) and names is not None:
            self.names[id(tensor)] = names
            self.kept.append(tensor)

    def of(self, x) -> list[str] | None:
        return self.names.get(id(x)) if isinstance(x, torch.Tensor) else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and args:
            self.name(out, self.derived(getattr(func, "__name__", ""), args, kwargs, out))
        return out

    def derived(self, function: str, args: tuple, kwargs: dict, out: torch.Tensor) -> list[str] | None:
        if function in CONCATENATIONS:
            parts = list(args[0])
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            names = [self.of(p) for p in parts]
            if dim % out.dim() != 1 or any(n is None or len(n) != p.shape[1] for n, p in zip(names, parts)):
                return None
            return [name for part in names for name in part]
        first = self.of(args[0])
        if function in ADDS and len(args) > 1:
            second = self.of(args[1])
            same = first is not None and second is not None and args[0].shape == args[1].shape == out.shape
            return [f"({a}+{b})" for a, b in zip(first, second)] if same and len(first) == len(second) else None
        if function in CHANNEL_KEEPING_FUNCTIONS and first is not None and out.shape[1] % len(first) == 0:
            return first
        return None


@torch.no_grad()
def module_calls(
    net: nn.Module, x: torch.Tensor
) -> tuple[list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]], ChannelNames]:
    """(module path, module, first input, output) of every leaf module the net calls on x, in call order;
    and the names of the channels of every tensor made on the way."""
    calls, names = [], ChannelNames()

    def hook(module, args, out, name):
        calls.append((name, module, args[0], out))
        if isinstance(module, LAYER_TYPES):
            names.name(out, [unit_name(name, c + 1) for c in range(out.shape[1])])
        elif names.of(args[0]) is not None and out.shape[1] % len(names.of(args[0])) == 0:
            names.name(out, names.of(args[0]))

    handles = [
        module.register_forward_hook(lambda m, args, out, name=name: hook(m, args, out, name))
        for name, module in net.named_modules()
        if not list(module.children()) and isinstance(module, LAYER_TYPES + CHANNEL_KEEPING)
    ]
    try:
        with names:
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls, names


@torch.no_grad()
def trace(net: nn.Module, images: torch.Tensor) -> list[TracedLayer]:
    """Every Conv2d and Linear of the net (eval mode) on normalised images, in call order."""
    net.eval()
    images = images.to(next(net.parameters()).dtype)
    calls, names = module_calls(net, images)
    blank = {}  # each layer's input on the blank image, at its first call as in `layers`
    for name, module, x, _ in module_calls(net, blank_image(images))[0]:
        if isinstance(module, LAYER_TYPES):
            blank.setdefault(name, x)
    layers: dict[str, TracedLayer] = {}
    made_by: dict[int, TracedLayer] = {}  # id of a layer's (or its folded BatchNorm's) output -> the layer
    for name, module, x, out in calls:
        if isinstance(module, LAYER_TYPES):
            if name in layers:
                continue
            layers[name] = t = TracedLayer(name, module, x, out, blank[name], input_channels=names.of(x))
            made_by[id(out)] = t
        elif isinstance(module, nn.BatchNorm2d) and id(x) in made_by and made_by[id(x)].folded is None:
            t = made_by[id(x)]
            t.layer, t.outputs, t.folded = fold_batchnorm(t.layer, module), out, name
            made_by[id(out)] = t
        elif isinstance(module, ACTIVATIONS) and id(x) in made_by and made_by[id(x)].activation is None:
            made_by[id(x)].activation = module
    traced = list(layers.values())
    for t in traced:
        if t.is_conv and t.layer.groups > 1:
            t.layer = ungrouped(t.layer)
    for i, t in enumerate(traced):
        if not t.is_conv and t.input_channels is None:
            t.input_channels = flattened_source(traced[:i], t.layer.in_features)
    return traced


def flattened_source(before: list[TracedLayer], features: int) -> list[str] | None:
    """The channels a Linear reads through ops the trace does not follow: those of the last conv called
    before it, when its width divides in_features (a block of positions per channel)."""
    convs = [t for t in before if t.is_conv]
    if convs and features % convs[-1].outputs.shape[1] == 0:
        return [unit_name(convs[-1].name, c + 1) for c in range(convs[-1].outputs.shape[1])]
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
