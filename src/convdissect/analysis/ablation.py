"""Top-k ablation of conv2's inputs: test accuracy keeping only each conv2 channel's strongest
drivers (the other weight grids set to 0, no retraining), next to random inputs (claim 2's
ablation statistics, docs/measures.md)."""

from __future__ import annotations

import torch
from torch import nn

from convdissect.analysis.contributions import SignedContributions

# The ablation keeps each conv2 channel's top k drivers for these k.
ABLATION_KS = (1, 2, 3)


@torch.no_grad()
def accuracy(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    correct = sum(
        int((net(images[s : s + batch_size]).argmax(dim=1) == labels[s : s + batch_size]).sum())
        for s in range(0, len(images), batch_size)
    )
    return correct / len(images)


@torch.no_grad()
def ablation(
    net: nn.Module,
    contributions: SignedContributions,
    images: torch.Tensor,
    labels: torch.Tensor,
    draws: int,
    seed: int,
) -> dict[str, float | list[float]]:
    """Test accuracy keeping only each conv2 channel's top-k drivers (the other grids w_kj set to
    0, no retraining), next to as many random inputs (one accuracy per draw; none when draws is
    0) and the full net; "n_images" is the number of test images."""
    weight = net.conv2.weight.detach().clone()
    order = contributions.drive.argsort(dim=1, descending=True).to(weight.device)
    g = torch.Generator().manual_seed(seed)
    result: dict[str, float | list[float]] = {"full": accuracy(net, images, labels), "n_images": len(images)}

    def keep_only(inputs: torch.Tensor) -> float:
        mask = torch.zeros(weight.shape[:2], dtype=weight.dtype, device=weight.device).scatter_(1, inputs, 1.0)
        net.conv2.weight.copy_(weight * mask[..., None, None])
        try:
            return accuracy(net, images, labels)
        finally:
            net.conv2.weight.copy_(weight)

    cout, cin = weight.shape[:2]
    for k in ABLATION_KS:
        if k > cin:
            continue
        result[f"top{k}"] = keep_only(order[:, :k])
        result[f"random{k}"] = [
            keep_only(torch.stack([torch.randperm(cin, generator=g)[:k] for _ in range(cout)]).to(weight.device))
            for _ in range(draws)
        ]
    return result
