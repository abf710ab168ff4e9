# Produced: no number in README.md or docs/ today: the data path and end-to-end speed against the tutorial path (goals below).
"""Time one training epoch three ways, in this process, and the whole command end to end.

    python benchmarks/bench_data.py [--widths 8 16 24 16] [--end-to-end]

In-process (same net, Adam 1e-3, batch 64, one epoch over the 55k training split):
  tutorial   torchvision MNIST + DataLoader(ToTensor, Normalize), a bare loop
  in-memory  normalised tensors in memory, batches sliced from a permutation, a bare loop
  ours       MNISTDataModule + LitClassifier + Lightning Trainer (no logger, no checkpoints)
Goals: ours <= 0.5x tutorial and <= 1.10x in-memory.
--end-to-end also times `python train.py 'model.widths=[...]' trainer.max_epochs=1` (imports,
data, an epoch, validation, test, outputs) against `python benchmarks/tutorial_mnist.py`
(goal <= 0.6x).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from tutorial_mnist import train_one_epoch, tutorial_loaders

from convdissect.config import REPO_ROOT
from convdissect.data.mnist import MNISTDataModule
from convdissect.models.lit_module import LitClassifier
from convdissect.models.simple_convnet import SimpleConvNet

DATA_DIR = os.environ.get("CONVDISSECT_DATA_DIR", str(REPO_ROOT / "data"))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tutorial_epoch(widths) -> float:
    torch.manual_seed(0)
    train_loader, _ = tutorial_loaders(DATA_DIR)
    model = SimpleConvNet(widths)
    return timed(lambda: train_one_epoch(model, train_loader, torch.optim.Adam(model.parameters(), 1e-3)))


def in_memory_epoch(widths) -> float:
    torch.manual_seed(0)
    dm = MNISTDataModule(DATA_DIR)
    images, labels = dm.tensors("train")
    model = SimpleConvNet(widths)

    def batches():
        order = torch.randperm(len(labels))
        for i in range(0, len(labels) - 63, 64):
            idx = order[i : i + 64]
            yield images[idx], labels[idx]

    return timed(lambda: train_one_epoch(model, batches(), torch.optim.Adam(model.parameters(), 1e-3)))


def lightning_epoch(widths) -> float:
    L.seed_everything(0, verbose=False)
    dm = MNISTDataModule(DATA_DIR, batch_size=64)
    dm.setup()
    module = LitClassifier(
        {"_target_": "convdissect.models.simple_convnet.SimpleConvNet", "widths": widths},
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return timed(lambda: trainer.fit(module, datamodule=dm))


def end_to_end(widths) -> tuple[float, float]:
    env = {**os.environ, "CONVDISSECT_DATA_DIR": DATA_DIR}
    w = ",".join(map(str, widths))
    with tempfile.TemporaryDirectory() as run_dir:
        ours = [sys.executable, "train.py", f"model.widths=[{w}]", "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]
        t_ours = timed(lambda: subprocess.run(ours, cwd=REPO_ROOT, env=env, check=True, capture_output=True))
    tutorial = [
        sys.executable,
        str(Path(__file__).with_name("tutorial_mnist.py")),
        DATA_DIR,
        "--widths",
        *map(str, widths),
    ]
    t_tut = timed(lambda: subprocess.run(tutorial, env=env, check=True, capture_output=True))
    return t_ours, t_tut


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs=4, default=[8, 16, 24, 16])
    parser.add_argument("--end-to-end", action="store_true")
    args = parser.parse_args()
    print(f"widths {args.widths}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    tut, mem, ours = tutorial_epoch(args.widths), in_memory_epoch(args.widths), lightning_epoch(args.widths)
    print(f"one epoch: tutorial {tut:.1f} s, in-memory bare loop {mem:.1f} s, ours (Lightning) {ours:.1f} s")
    print(f"ours / tutorial  = {ours / tut:.2f}  (goal <= 0.50)")
    print(f"ours / in-memory = {ours / mem:.2f}  (goal <= 1.10)")
    if args.end_to_end:
        t_ours, t_tut = end_to_end(args.widths)
        print(
            f"end to end: train.py {t_ours:.1f} s, tutorial script {t_tut:.1f} s, ratio {t_ours / t_tut:.2f} (goal <= 0.60)"
        )


if __name__ == "__main__":
    main()
