# Produced: no number in README.md or docs/ today: the tutorial path benchmarks/bench_data.py --end-to-end times against.
"""The usual tutorial path, as the speed reference: torchvision MNIST + DataLoader(ToTensor,
Normalize), batch 64, Adam 1e-3, a bare loop over one epoch, then the test set.

    python benchmarks/tutorial_mnist.py [DATA_DIR] [--widths 8 16 24 16]
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from convdissect.models.simple_convnet import SimpleConvNet


def tutorial_loaders(data_dir: str):
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(data_dir, train=True, download=False, transform=tf)
    test = datasets.MNIST(data_dir, train=False, download=False, transform=tf)
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(test, batch_size=1000)


def train_one_epoch(model, batches, opt) -> None:
    model.train()
    for x, y in batches:
        opt.zero_grad()
        F.nll_loss(model(x), y).backward()
        opt.step()


def accuracy(model, batches) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir", nargs="?", default=os.environ.get("CONVDISSECT_DATA_DIR", "data"))
    parser.add_argument("--widths", type=int, nargs=4, default=[8, 16, 24, 16])
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    train_loader, test_loader = tutorial_loaders(args.data_dir)
    model = SimpleConvNet(args.widths)
    train_one_epoch(model, train_loader, torch.optim.Adam(model.parameters(), 1e-3))
    print(f"test acc {accuracy(model, test_loader):.4f}, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
