"""Which layers' out channels are pruned (the cut itself is pruning/cut.py), read from the net's
traced graph (torch.fx), not written down per net: a producer (Conv2d / Linear) feeds a consumer
(the next Conv2d / Linear) through channel-wise operations only (activations, pooling, flatten). The SimpleConvNet gives
conv1 -> conv2 -> conv3 -> fc4 -> fc5, its no_conv2 variant conv1 -> conv3 -> fc4 -> fc5.
A layer is prunable when it has a consumer; the last layer (the logits) is not. A depthwise conv
(groups = its channels) passes channel c on as c, so it is channel-wise here: cutting its input layer
cuts it too; another grouped conv mixes channels within its groups and is never cut.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

LAYER_TYPES = (nn.Conv2d, nn.Linear)
# Operations that keep channel c in channel c (flatten keeps it in a contiguous block).
CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.Tanh,
    nn.GELU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
)
CHANNELWISE_FUNCTIONS = {
    F.relu,
    torch.relu,
    torch.tanh,
    F.gelu,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_max_pool2d,
    F.adaptive_avg_pool2d,
    torch.flatten,
    F.dropout,
}
CHANNELWISE_METHODS = {"relu", "tanh", "flatten"}


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and 1 < module.groups == module.in_channels == module.out_channels


def _is_channelwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], CHANNELWISE_MODULES) or _depthwise(modules[node.target])
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
        if getattr(modules[node.target], "groups", 1) > 1:  # a grouped conv's channels are its input's
            continue
        consumers, frontier = set(), list(node.users)
        while frontier:
            user = frontier.pop()
            if _is_channelwise(user, modules):
                frontier.extend(user.users)
            elif user.op == "call_module" and isinstance(modules[user.target], LAYER_TYPES):
                consumers.add(user.target if getattr(modules[user.target], "groups", 1) == 1 else None)
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
