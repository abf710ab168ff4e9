# Produced: docs/pruning.md: FLOPs per image, 25,046,528 for 32/64/128/128 and 1,741,888 for 8/16/24/16.
"""FLOPs per 28x28 image of the SimpleConvNet at given widths, two ways: multiply-adds counted
layer by layer from the shapes (out positions x out channels x in channels x k x k for a conv,
in x out for a linear layer), and Lightning's measure_flops (torch's FlopCounterMode), which
counts 2 FLOPs per multiply-add. Biases, activations and pooling are in neither count.

    python benchmarks/count_flops.py 32,64,128,128 8,16,24,16
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.pruning.cost import flops_per_image


def macs_by_layer(net: nn.Module, image: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of each conv / linear layer, from its output shape and its weight's shape."""
    macs, handles = {}, []
    for name, layer in net.named_modules():
        if isinstance(layer, nn.Conv2d):

            def hook(m, args, out, name=name):  # one product per weight per output position
                macs[name] = out[0, 0].numel() * m.weight.numel()
        elif isinstance(layer, nn.Linear):

            def hook(m, args, out, name=name):
                macs[name] = m.weight.numel()
        else:
            continue
        handles.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        net(image)
    for handle in handles:
        handle.remove()
    return macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("widths", nargs="+", help="c1,c2,c3,f4 (c1,c3,f4 with --no-conv2)")
    parser.add_argument("--no-conv2", action="store_true")
    args = parser.parse_args()
    image = torch.zeros(1, 1, 28, 28)
    for spec in args.widths:
        net = SimpleConvNet([int(w) for w in spec.split(",")], conv2=not args.no_conv2).eval()
        macs = macs_by_layer(net, image)
        print(f"widths {net.widths}: " + ", ".join(f"{name} {n:,}" for name, n in macs.items()) + " MACs")
        total = sum(macs.values())
        tool = flops_per_image(net, image)
        print(f"  by layer shapes: {total:,} MACs = {2 * total:,} FLOPs; measure_flops: {tool:,} FLOPs")


if __name__ == "__main__":
    main()
