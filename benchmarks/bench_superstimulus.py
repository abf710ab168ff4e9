# Produced: no number in README.md or docs/ today: batched superstimuli against one channel at a time.
"""Time superstimuli of all channels of a layer: one batched run vs one run per channel.

python benchmarks/bench_superstimulus.py [--layer conv2] [--steps 64] [--widths 8 16 24 16]
                                      [--ckpt PATH] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from convdissect.analysis.superstimuli import superstimuli
from convdissect.models.checkpoint import load_net
from convdissect.models.simple_convnet import SimpleConvNet


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="conv2")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[8, 16, 24, 16])  # the article's pruned net
    parser.add_argument("--ckpt", default=None, help="a checkpoint to load instead of a random net")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = (load_net(args.ckpt) if args.ckpt else SimpleConvNet(args.widths)).to(args.device).eval()
    n_channels = getattr(net, args.layer).weight.shape[0]

    superstimuli(net, args.layer, channels=[0], steps=2)  # warm-up
    batched = timed(lambda: superstimuli(net, args.layer, steps=args.steps))
    one_by_one = timed(
        lambda: [superstimuli(net, args.layer, channels=[c], steps=args.steps) for c in range(n_channels)]
    )
    print(
        f"net widths {net.widths}, layer {args.layer} ({n_channels} channels), {args.steps} steps, "
        f"device {args.device}, {torch.get_num_threads()} threads"
    )
    print(f"batched (all channels at once): {batched:.2f} s")
    print(f"channel by channel:             {one_by_one:.2f} s")
    print(f"speed-up: {one_by_one / batched:.1f}x")


if __name__ == "__main__":
    main()
