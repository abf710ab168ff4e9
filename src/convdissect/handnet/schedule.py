"""The HandNet's training schedule: each conv3 burst learns which conv1 channel it reads, then
keeps it; the readout shrinks to `model.terms` weights per digit; units no digit reads go.

By training progress p (share of the run's optimizer steps):
- p < choice_end: channel choice by softmax over the burst's logits, temperature annealed
  geometrically temperature_start -> temperature_end; for the last hard_share of that phase the
  forward pass uses the argmax channel while gradients flow through the softmax (straight-through);
- p >= choice_end: each burst's channel is frozen;
- shrink_start <= p < shrink_end: every `shrink_every` steps the readout keeps, per digit, its
  largest |weight| x spread (std of the feature over `spread_images` training images), their
  number falling from all features (units x regions) to `terms`, linearly or cubically
  (`shrink_curve`); then the survivors fine-tune.
At fit end, whatever the step count reached, the choice is frozen, the readout at `terms` and the
unread units removed. The state lives in the net's buffers, so a resumed run continues it.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from convdissect.errors import UserInputError
from convdissect.handnet.net import HandNet

log = logging.getLogger(__name__)

# How the number of kept readout terms falls from all units to T over the shrink phase: linear, or
# cubic (fast at first, while the net still adapts; slow near T, where each term matters most).
SHRINK_CURVES = ("linear", "cubic")


class HandNetSchedule(L.Callback):
    def __init__(
        self,
        temperature_start: float = 1.0,
        temperature_end: float = 0.03,
        choice_end: float = 0.5,
        hard_share: float = 0.4,
        shrink_start: float = 0.25,
        shrink_end: float = 0.5,
        shrink_every: int = 20,
        spread_images: int = 2048,
        shrink_curve: str = "cubic",
    ):
        where = "callbacks.handnet_schedule"
        if not 0 < temperature_end < temperature_start:
            raise UserInputError(
                f"{where}: temperature_start={temperature_start}, temperature_end={temperature_end}: "
                "the temperature must fall, 0 < temperature_end < temperature_start"
            )
        if not 0 < choice_end < 1:
            raise UserInputError(
                f"{where}.choice_end={choice_end}: must be in (0, 1), or the channel choice never freezes"
            )
        if not 0 < hard_share <= 1:
            raise UserInputError(
                f"{where}.hard_share={hard_share}: must be in (0, 1], or the channel choice never hardens"
            )
        if not 0 <= shrink_start < shrink_end <= 1:
            raise UserInputError(
                f"{where}: shrink_start={shrink_start}, shrink_end={shrink_end}: need 0 <= shrink_start < shrink_end <= 1"
            )
        if shrink_curve not in SHRINK_CURVES:
            raise UserInputError(f"{where}.shrink_curve={shrink_curve!r}: allowed {list(SHRINK_CURVES)}")
        if shrink_every < 1 or spread_images < 1:
            raise UserInputError(f"{where}: shrink_every={shrink_every}, spread_images={spread_images}: must be >= 1")
        self.temperature_start, self.temperature_end = temperature_start, temperature_end
        self.choice_end, self.hard_share = choice_end, hard_share
        self.shrink_start, self.shrink_end, self.shrink_every = shrink_start, shrink_end, shrink_every
        self.spread_images = spread_images
        self.shrink_curve = shrink_curve

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module.net, HandNet):
            raise UserInputError(
                f"callbacks.handnet_schedule: needs a HandNet (model=handnet), not {type(pl_module.net).__name__}"
            )

    def temperature(self, p: float) -> float:
        share = min(p / self.choice_end, 1.0)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** share

    def channel_mode(self, p: float) -> str:
        if p >= self.choice_end:
            return "frozen"
        return "hard" if p >= self.choice_end * (1.0 - self.hard_share) else "soft"

    def kept_terms(self, p: float, n_units: int, terms: int) -> int:
        share = min(max((p - self.shrink_start) / (self.shrink_end - self.shrink_start), 0.0), 1.0)
        if self.shrink_curve == "cubic":
            return math.ceil(terms + (n_units - terms) * (1.0 - share) ** 3)
        return math.ceil(n_units - (n_units - terms) * share)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        net, step = pl_module.net, trainer.global_step
        p = step / max(1, trainer.estimated_stepping_batches)
        if net.learn_channels:  # a hand-built net comes frozen: the schedule frees its choice first
            net.conv3.set_channel_mode(self.channel_mode(p), self.temperature(p))
        if net.terms is not None and p >= self.shrink_start and (step % self.shrink_every == 0 or p >= self.shrink_end):
            self.shrink(trainer, net, self.kept_terms(p, net.readout.in_features, net.terms))

    def shrink(self, trainer: L.Trainer, net, keep: int) -> None:
        if int(net.readout.mask.sum(1).max()) > keep:
            images, _ = trainer.datamodule.tensors("train", self.spread_images)
            shrink_readout(net, images, keep)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        if net.learn_channels:
            net.conv3.set_channel_mode("frozen")
        if net.terms is not None:
            self.shrink(trainer, net, net.terms)
        removed = net.remove_unread_units()
        log.info(
            "HandNet schedule: channels frozen, at most %s terms per digit, %d unread units removed", net.terms, removed
        )


@torch.no_grad()
def shrink_readout(net, images: torch.Tensor, keep: int) -> None:
    """Per digit, keep the `keep` live readout weights with the largest |weight| x spread, the
    spread being the std of the feature it weighs (a unit, or a unit in one region) over these
    images: a feature that never varies tells no digits apart, whatever its weight."""
    mask = net.readout.mask
    spread = net.features(images.to(mask.device)).std(0)
    score = (net.readout.weight.abs() * spread).masked_fill(mask == 0, -1.0)
    mask.zero_().scatter_(1, score.topk(keep, dim=1).indices, 1.0)
