"""Activations by forward hooks: any named module's input or output for a batch of images.

A channel's `response` to an image is the maximum of its output map (before ReLU): what the
next layer sees through ReLU and max-pooling (max and ReLU commute), one number per channel.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

CONV_LAYERS = ("conv1", "conv2", "conv3")


def conv_layers(net: nn.Module) -> list[str]:
    """The conv layers a net has, in order (the no_conv2 variant has no conv2)."""
    return [name for name in CONV_LAYERS if isinstance(getattr(net, name, None), nn.Conv2d)]


def input_layer(net: nn.Module, layer: str) -> str | None:
    """The conv layer whose (ReLU'd, pooled) output feeds `layer`: conv3 <- conv2 (or conv1)."""
    layers = conv_layers(net)
    position = layers.index(layer)
    return layers[position - 1] if position > 0 else None


@contextmanager
def hooked(net: nn.Module, layers, what: str = "output"):
    """Inside the block, every forward pass fills the yielded dict {layer: tensor} with the
    named modules' outputs (what="output") or first inputs (what="input")."""
    if what not in ("input", "output"):
        raise ValueError(f"what={what!r}: allowed 'input', 'output'")
    store: dict[str, torch.Tensor] = {}
    modules = dict(net.named_modules())
    handles = []
    for name in layers:

        def hook(module, args, output, name=name):
            store[name] = args[0] if what == "input" else output

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def record(
    net: nn.Module, images: torch.Tensor, layers, what: str = "output", batch_size: int = 1000
) -> dict[str, torch.Tensor]:
    """The named modules' outputs (or inputs) for all images, batched, detached: {layer: [N, ...]}."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with hooked(net, layers, what) as store:
        for start in range(0, len(images), batch_size):
            net(images[start : start + batch_size])
            for name in layers:
                parts[name].append(store[name].detach())
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


@torch.no_grad()
def record_in_out(
    net: nn.Module, images: torch.Tensor, layer: str, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """A module's input and output for all images, in one pass: ([N, ...], [N, ...])."""
    inputs, outputs = [], []
    with hooked(net, [layer], "input") as seen, hooked(net, [layer]) as made:
        for start in range(0, len(images), batch_size):
            net(images[start : start + batch_size])
            inputs.append(seen[layer].detach())
            outputs.append(made[layer].detach())
    return torch.cat(inputs), torch.cat(outputs)


def responses(outputs: torch.Tensor) -> torch.Tensor:
    """Per-channel responses: [N, C, H, W] -> max over the map [N, C]; [N, C] (fc) unchanged."""
    return outputs.amax(dim=(-2, -1)) if outputs.dim() == 4 else outputs


def channel_responses(net: nn.Module, images: torch.Tensor, layers, batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """{layer: [N, C]} responses of every channel of the layers to the images."""
    return {name: responses(out) for name, out in record(net, images, layers, batch_size=batch_size).items()}


def top_k(net: nn.Module, images: torch.Tensor, layer: str, k: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The k images that activate each channel most: (indices [C, k], responses [C, k]), strongest first."""
    resp = channel_responses(net, images, [layer])[layer]
    values, indices = resp.T.topk(min(k, len(images)), dim=1)
    return indices, values
