# Produced: docs/pruning.md, "More levers": weight averaging, rotations and scalings, BatchNorm (seed 0, none lifts the net).
"""Three training levers tried on 8/16/24/16 for issue 21 that did not lift it, kept runnable as Hydra plug-ins
(not part of convdissect: none helped). With the studies folder on the path:

    P="+experiment=prune_distill model.teacher=runs/teacher/model_state.pt model.distill.temperature=2.0"
    PYTHONPATH=studies python train.py $P +callbacks.ema._target_=training_levers.PruneAwareEMA +callbacks.ema.decay=0.999
    PYTHONPATH=studies python train.py $P data._target_=training_levers.AffineMNIST +data.degrees=10.0 +data.scale=0.1
    PYTHONPATH=studies python train.py +experiment=small_scratch model._target_=training_levers.BNConvNet \
        +model.teacher=runs/teacher/model_state.pt '+model.distill={temperature:2.0,weight:0.7,cache:true}' \
        data.random_shift=2
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel

from convdissect.data.mnist import MNISTDataModule
from convdissect.models.simple_convnet import SimpleConvNet


class PruneAwareEMA(EMAWeightAveraging):
    """Lightning's exponential moving average of the weights (validated, checkpointed and tested in their
    place), started afresh whenever a pruning step has changed the net's shapes."""

    def _restart_if_pruned(self, pl_module):
        average = self._average_model
        if average is None:
            return
        if [a.shape for a in average.module.parameters()] != [p.shape for p in pl_module.parameters()]:
            self._average_model = AveragedModel(
                model=pl_module, device=pl_module.device, use_buffers=self._use_buffers, **self._kwargs
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._restart_if_pruned(pl_module)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._restart_if_pruned(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._restart_if_pruned(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)


class RandomAffine:
    """Training batches (after any shifts) each rotated by up to `degrees` and scaled by 1 +- `scale`, on the
    batch's device, the pixels moved in black."""

    def __init__(self, batches, degrees: float, scale: float, seed: int):
        self.batches, self.degrees, self.scale = batches, degrees, scale
        self.gen = torch.Generator().manual_seed(seed + 12345)
        self.black = -batches.mean / batches.std  # a black pixel, normalised

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x, y, *rest in self.batches:
            b = x.shape[0]
            angle = (torch.rand(b, generator=self.gen) * 2 - 1) * math.radians(self.degrees)
            scale = 1 + (torch.rand(b, generator=self.gen) * 2 - 1) * self.scale
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0] = torch.cos(angle) / scale
            theta[:, 0, 1] = -torch.sin(angle) / scale
            theta[:, 1, 0] = torch.sin(angle) / scale
            theta[:, 1, 1] = torch.cos(angle) / scale
            grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
            x = F.grid_sample(x - self.black, grid, align_corners=False) + self.black
            yield (x, y, *rest)


class AffineMNIST(MNISTDataModule):
    """MNIST whose training batches are also rotated and scaled (RandomAffine); data.degrees, data.scale."""

    def __init__(self, *args, degrees: float = 10.0, scale: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.degrees, self.scale_range = degrees, scale

    def train_dataloader(self):
        return RandomAffine(super().train_dataloader(), self.degrees, self.scale_range, self.seed)


class BNConvNet(SimpleConvNet):
    """SimpleConvNet with BatchNorm after each conv (conv2 required). The BatchNorms are not folded into the
    convs here: its model_state.pt is read by nothing but this study (eval.py and dissect.py refuse it)."""

    def __init__(self, widths, conv2: bool = True, fc4_activation: str = "relu"):
        if not conv2:
            raise ValueError("BNConvNet needs conv2=true")
        super().__init__(widths, conv2, fc4_activation)
        self.bn1 = nn.BatchNorm2d(self.conv1.out_channels)
        self.bn2 = nn.BatchNorm2d(self.conv2.out_channels)
        self.bn3 = nn.BatchNorm2d(self.conv3.out_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(F.max_pool2d(x, 2)))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 3)
        return x.flatten(1)
