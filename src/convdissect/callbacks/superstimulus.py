"""Superstimuli of chosen layers as image grids in TensorBoard, every N epochs and at the end."""

from __future__ import annotations

import math
import time

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from convdissect.analysis.superstimuli import standard_transforms, superstimuli


class SuperstimulusCallback(L.Callback):
    """Logs `superstimulus/<layer>` (all channels of the layer in one grid, channel 1 top-left,
    row-major) to every TensorBoard logger at the end of every `every_n_epochs`-th training
    epoch and after the last one. run_summary() reports the seconds it cost."""

    def __init__(
        self,
        layers=("conv1", "conv2", "conv3"),
        every_n_epochs: int = 1,
        steps: int = 64,
        lr: float = 0.05,
        param: str = "fourier",
        l2: float = 0.3,
        tv: float = 0.1,
        jitter: int = 2,
        scale=(0.9, 1.1),
        rotate_deg: float = 10.0,
        seed: int = 0,
    ):
        self.layers = list(layers)
        self.every_n_epochs = every_n_epochs
        self.options = {"steps": steps, "lr": lr, "param": param, "l2": l2, "tv": tv, "seed": seed}
        self.transforms = standard_transforms(jitter, scale, rotate_deg)
        self.seconds = 0.0
        self.logged_steps: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step not in self.logged_steps:  # the last epoch was not a multiple of N
            self._log(trainer, pl_module)

    def _log(self, trainer, pl_module):
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not trainer.is_global_zero or not writers:
            return
        start = time.perf_counter()
        modules = dict(pl_module.net.named_modules())
        for layer in self.layers:
            if layer not in modules:  # e.g. conv2 of the no_conv2 variant
                continue
            images = superstimuli(pl_module.net, layer, transforms=self.transforms, **self.options).images
            grid = make_grid(images.cpu(), nrow=math.ceil(math.sqrt(len(images))), padding=1, pad_value=0.5)
            for writer in writers:
                writer.add_image(f"superstimulus/{layer}", grid, global_step=trainer.global_step)
        self.logged_steps.append(trainer.global_step)
        self.seconds += time.perf_counter() - start

    def run_summary(self) -> dict:
        return {
            "superstimulus_callback/seconds": round(self.seconds, 3),
            "superstimulus_callback/calls": len(self.logged_steps),
        }
