"""What a pruning step is judged by: the net's accuracy and its cost per image."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.throughput import measure_flops
from torch import nn


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of images classified right, in eval mode (trainer.validate cannot run inside a fit)."""
    was_training = net.training
    net.eval()
    correct = sum(
        int((net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
        for i in range(0, len(labels), batch_size)
    )
    net.train(was_training)
    return correct / len(labels)


@torch.no_grad()
def flops_per_image(net: nn.Module, image: torch.Tensor) -> int:
    """FLOPs of one forward pass on one image ([1, ...]), as torch's FlopCounterMode counts them
    through Lightning's measure_flops: 2 per multiply-add of the conv and linear layers (so
    MACs = flops / 2); biases, activations and pooling are not counted."""
    return int(measure_flops(net, lambda: net(image)))
