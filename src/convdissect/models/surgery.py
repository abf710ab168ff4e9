"""Channel surgery: physically remove out channels of a layer and the matching inputs downstream.

Which layer feeds which is read from the net's traced graph (torch.fx), not written down per
net: a producer (Conv2d / Linear) feeds a consumer (the next Conv2d / Linear) through
channel-wise operations only (activations, pooling, flatten). The SimpleConvNet gives
conv1 -> conv2 -> conv3 -> fc4 -> fc5, its no_conv2 variant conv1 -> conv3 -> fc4 -> fc5.
A layer is prunable when it has a consumer; the last layer (the logits) is not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from convdissect.errors import UserInputError

LAYER_TYPES = (nn.Conv2d, nn.Linear)
# Operations that keep channel c in channel c (flatten keeps it in a contiguous block).
CHANNELWISE_MODULES = (nn.ReLU, nn.Tanh, nn.GELU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout)
CHANNELWISE_FUNCTIONS = {F.relu, torch.relu, torch.tanh, F.gelu, F.max_pool2d, F.avg_pool2d, torch.flatten, F.dropout}
CHANNELWISE_METHODS = {"relu", "tanh", "flatten"}


def _is_channelwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], CHANNELWISE_MODULES)
    if node.op == "call_function":
        return node.target in CHANNELWISE_FUNCTIONS
    return node.op == "call_method" and node.target in CHANNELWISE_METHODS


def producer_consumer_table(net: nn.Module) -> dict[str, str]:
    """{producer layer name: consumer layer name} in forward order, for every prunable layer."""
    graph = fx.symbolic_trace(net).graph
    modules = dict(net.named_modules())
    table = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], LAYER_TYPES):
            continue
        consumers, frontier = set(), list(node.users)
        while frontier:
            user = frontier.pop()
            if user.op == "call_module" and isinstance(modules[user.target], LAYER_TYPES):
                consumers.add(user.target)
            elif _is_channelwise(user, modules):
                frontier.extend(user.users)
            else:  # the output, or an op that mixes channels (softmax, add, cat): not prunable
                consumers.add(None)
        if len(consumers) == 1 and None not in consumers:
            table[node.target] = consumers.pop()
    return table


def prunable_layers(net: nn.Module) -> list[str]:
    """The layers whose out channels can be removed, in forward order (the net's widths)."""
    return list(producer_consumer_table(net))


def layer_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def _in_width(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features


def _set_parameter(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(layer, name, nn.Parameter(value.detach().clone(), requires_grad=getattr(layer, name).requires_grad))


def remove_channels(
    net: nn.Module, layer_name: str, keep: torch.Tensor | list[int], table: dict[str, str] | None = None
) -> None:
    """Keep only the out channels `keep` (0-based, in this order) of layer_name and the matching
    in-channels of its consumer; updates net.widths when the net has it. The optimizer must be
    rebuilt afterwards: the layers get new parameters."""
    table = table if table is not None else producer_consumer_table(net)
    if layer_name not in table:
        raise UserInputError(f"layer {layer_name!r} cannot be pruned: prunable layers are {list(table)}")
    producer, consumer = net.get_submodule(layer_name), net.get_submodule(table[layer_name])
    width = layer_width(producer)
    keep = torch.as_tensor(keep, dtype=torch.long, device=producer.weight.device)
    if keep.numel() < 1 or keep.min() < 0 or keep.max() >= width or keep.unique().numel() != keep.numel():
        raise UserInputError(
            f"channels to keep of {layer_name} {keep.tolist()}: need 1 to {width} distinct indices in 0..{width - 1}"
        )

    _set_parameter(producer, "weight", producer.weight[keep])
    if producer.bias is not None:
        _set_parameter(producer, "bias", producer.bias[keep])
    # A consumer after flatten reads each channel as a block of spatial positions.
    block = _in_width(consumer) // width
    in_keep = (keep[:, None] * block + torch.arange(block, device=keep.device)).flatten()
    _set_parameter(consumer, "weight", consumer.weight[:, in_keep])

    if isinstance(producer, nn.Conv2d):
        producer.out_channels = len(keep)
    else:
        producer.out_features = len(keep)
    if isinstance(consumer, nn.Conv2d):
        consumer.in_channels = len(keep)
    else:
        consumer.in_features = len(in_keep)
    if hasattr(net, "widths"):
        net.widths = [layer_width(net.get_submodule(name)) for name in table]
