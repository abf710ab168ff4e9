"""Channel cuts through Torch-Pruning's DependencyGraph: removing out channels of a layer removes
everything tied to them, read from the net's autograd graph on an example input: the inputs of the
layers that read them (through a flatten, as blocks of positions), a BatchNorm's channels, the
channels a residual add joins to them, their slice of a concatenation.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from convdissect.errors import UserInputError
from convdissect.models.prunable import LAYER_TYPES, layer_width, prunable_layers

OUT_CHANNEL_CUTS = {nn.Conv2d: tp.prune_conv_out_channels, nn.Linear: tp.prune_linear_out_channels}


def cut_channels(net: nn.Module, keep: dict[str, torch.Tensor | list[int]], example_inputs: torch.Tensor) -> None:
    """Keep only the out channels keep[layer] (0-based) of each layer, one layer after another, and
    cut what depends on them. The kept channels stay in the net's order. Updates net.widths when the
    net has it. The optimizer must be rebuilt afterwards: the cut layers get new parameters."""
    was_training = net.training
    requires_grad = {name: p.requires_grad for name, p in net.named_parameters()}
    with torch.enable_grad():  # the graph is read from autograd
        graph = tp.DependencyGraph().build_dependency(net, example_inputs=example_inputs)
    net.train(was_training)  # tracing leaves the net in eval mode
    for layer_name, kept in keep.items():
        layer = _layer(net, layer_name)
        width = layer_width(layer)
        kept = torch.as_tensor(kept, dtype=torch.long).flatten().tolist()
        if not kept or min(kept) < 0 or max(kept) >= width or len(set(kept)) != len(kept):
            raise UserInputError(
                f"channels to keep of {layer_name} {kept}: need 1 to {width} distinct indices in 0..{width - 1}"
            )
        removed = sorted(set(range(width)) - set(kept))
        if not removed:
            continue
        group = graph.get_pruning_group(layer, OUT_CHANNEL_CUTS[type(layer)], idxs=removed)
        if any(dep.target.type == tp.ops.OPTYPE.OUTPUT for dep, _ in group):
            raise UserInputError(f"layer {layer_name!r} cannot be pruned: its channels are the net's outputs")
        group.prune()
    for name, param in net.named_parameters():
        param.requires_grad_(requires_grad[name])
    if hasattr(net, "widths"):
        net.widths = [layer_width(net.get_submodule(name)) for name in prunable_layers(net)]


def _layer(net: nn.Module, name: str) -> nn.Module:
    try:
        layer = net.get_submodule(name)
    except AttributeError:
        layer = None
    if type(layer) not in LAYER_TYPES:
        layers = [n for n, m in net.named_modules() if type(m) in LAYER_TYPES]
        raise UserInputError(f"layer {name!r} cannot be pruned: allowed a Conv2d or Linear layer of the net {layers}")
    return layer
