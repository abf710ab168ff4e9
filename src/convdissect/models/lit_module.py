"""The LightningModule: any net of ours, NLL loss, accuracy, optimizer and schedule from config."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from convdissect.errors import UserInputError
from convdissect.models import build_net

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("onecycle", "none")


class LitClassifier(L.LightningModule):
    """Hyperparameters are plain Python values (checkpoints load with weights_only=True), so
    `load_from_checkpoint` rebuilds the net from them, whatever its widths."""

    def __init__(self, net: dict, optimizer: dict, scheduler: dict | None = None):
        super().__init__()
        optimizer = dict(optimizer)
        scheduler = dict(scheduler or {"name": "none"})
        if optimizer.get("name") not in OPTIMIZERS:
            raise UserInputError(f"optimizer.name={optimizer.get('name')!r}: allowed {sorted(OPTIMIZERS)}")
        if scheduler.get("name") not in SCHEDULERS:
            raise UserInputError(f"scheduler.name={scheduler.get('name')!r}: allowed {list(SCHEDULERS)}")
        self.save_hyperparameters({"net": dict(net), "optimizer": optimizer, "scheduler": scheduler})
        self.net = build_net(dict(net))
        self.metrics = torch.nn.ModuleDict({s: MulticlassAccuracy(num_classes=10, average="micro") for s in ("val_", "test_")})
        # Training loss sum, correct and seen counts, on the device; see training_step.
        self.register_buffer("train_sums", torch.zeros(3), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _step(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        acc = self.metrics[stage + "_"]
        acc.update(logits, y)
        self.log(f"{stage}/loss", F.nll_loss(logits, y), on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def on_train_epoch_start(self) -> None:
        self.train_sums.zero_()

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.nll_loss(logits, y)
        # Plain sums on the device, logged once an epoch: for a small net, a metric update and a
        # self.log per step cost a fifth of the step itself.
        with torch.no_grad():
            self.train_sums += torch.stack([loss * len(y), (logits.argmax(1) == y).sum().float(), torch.full_like(loss, len(y))])
        if hasattr(self.net, "penalty"):  # e.g. HandNet's sparsity terms
            loss = loss + self.net.penalty()
        return loss

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, seen = self.train_sums
        self.log("train/loss", loss_sum / seen, sync_dist=True)
        self.log("train/acc", correct / seen, prog_bar=True, sync_dist=True)
        if hasattr(self.net, "penalty"):
            self.log("train/penalty", self.net.penalty(), sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def set_widths(self, widths: list[int]) -> None:
        """Rebuild the net at these widths and record them in the hparams, so a checkpoint of a
        pruned net rebuilds at its own widths in `load_from_checkpoint`."""
        self.hparams.net["widths"] = list(widths)
        self.net = build_net(self.hparams.net).to(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint taken mid-pruning holds a smaller net than the one this module was built
        with (e.g. when `ckpt_path=` resumes a pruning run): resize to the checkpoint's widths."""
        if not hasattr(self.net, "widths_from_state_dict"):
            return
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        widths, _ = self.net.widths_from_state_dict(state)
        if widths != list(self.net.widths):
            self.set_widths(widths)

    def configure_optimizers(self):
        """Also called again after pruning surgery: the schedule spans the remaining steps only."""
        opt_cfg = dict(self.hparams.optimizer)
        opt = OPTIMIZERS[opt_cfg.pop("name")](self.parameters(), **opt_cfg)
        sched_cfg = dict(self.hparams.scheduler)
        if sched_cfg.pop("name") == "none":
            return opt
        remaining = max(1, self.trainer.estimated_stepping_batches - self.trainer.global_step)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, total_steps=remaining, **sched_cfg)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
