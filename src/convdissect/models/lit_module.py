"""The LightningModule: any net, its loss (cross-entropy on logits by default, optionally label-smoothed
or distilled from a teacher), accuracy, optimizer and schedule from config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torchmetrics.classification import MulticlassAccuracy

from convdissect.errors import UserInputError
from convdissect.models import build_net
from convdissect.models.checkpoint import load_net

# model.loss: cross_entropy takes logits. Since log_softmax is idempotent, it is also exactly the NLL of a
# net that already returns log-probabilities (ours do), so the default suits both kinds of net; nll
# takes log-probabilities only (on logits it trains at chance).
LOSSES = {"cross_entropy": F.cross_entropy, "nll": F.nll_loss}
# model.distill's keys; cache: the teacher's outputs computed once for the unshifted training images
MODEL_DISTILL_KEYS = ("temperature", "weight", "cache")


@dataclass
class Distillation:
    """A frozen teacher net whose softened outputs the student learns too (Hinton et al. 2015). A plain
    object, not a module: the teacher is neither trained nor part of the student's state_dict."""

    teacher: torch.nn.Module
    temperature: float
    weight: float


def parse_distill(distill: dict | None, key: str, allowed=("temperature", "weight")) -> dict | None:
    """{temperature, weight[, cache]} with the weight in (0, 1], or None when off (no settings, or weight 0);
    key names the config node in the errors, allowed its keys."""
    distill = dict(distill or {})
    unknown = set(distill) - set(allowed)
    if unknown:
        raise UserInputError(f"{key}: unknown keys {sorted(unknown)}; allowed {', '.join(allowed)}")
    cache = distill.get("cache", False)
    if not isinstance(cache, bool):
        raise UserInputError(f"{key}.cache={cache!r}: allowed true or false")
    weight, temperature = distill.get("weight", 0.0), distill.get("temperature", 1.0)
    for name, value in (("weight", weight), ("temperature", temperature)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"{key}.{name}={value!r}: must be a number")
    if not 0 <= weight <= 1:
        raise UserInputError(f"{key}.weight={weight}: allowed 0 (off) to 1 (the teacher only)")
    if not temperature > 0:
        raise UserInputError(f"{key}.temperature={temperature}: must be > 0")
    if not weight:
        return None
    settings = {"temperature": float(temperature), "weight": float(weight)}
    if "cache" in allowed:
        settings["cache"] = cache
    return settings


def distillation_loss(
    outputs: torch.Tensor, teacher_outputs: torch.Tensor, hard_loss: torch.Tensor, temperature: float, weight: float
) -> torch.Tensor:
    """(1 - w) * hard_loss + w * T^2 * KL(softmax(teacher / T) || softmax(student / T)). Outputs may be
    logits or log-probabilities: softmax is blind to a constant added to a row. T^2 keeps the soft term's
    gradients on the hard term's scale whatever T."""
    student = F.log_softmax(outputs / temperature, dim=1)
    teacher = F.log_softmax(teacher_outputs / temperature, dim=1)
    soft = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    return (1 - weight) * hard_loss + weight * temperature**2 * soft


class LitClassifier(L.LightningModule):
    """Net, optimizer and scheduler are Hydra specs ({"_target_": ..., **kwargs}; the optimizer and
    scheduler with `_partial_: true`). They are saved as these plain values (checkpoints load with
    weights_only=True), so `load_from_checkpoint` rebuilds the net from them, whatever its widths."""

    def __init__(
        self,
        net: dict,
        optimizer: dict | None,
        scheduler: dict | None = None,
        loss: str = "cross_entropy",
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        teacher: str | None = None,
        distill: dict | None = None,
    ):
        super().__init__()
        if loss not in LOSSES:
            raise UserInputError(f"model.loss={loss!r}: allowed {list(LOSSES)}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)):
            raise UserInputError(f"model.label_smoothing={label_smoothing!r}: allowed a number in [0, 1)")
        if not 0 <= label_smoothing < 1:
            raise UserInputError(f"model.label_smoothing={label_smoothing}: allowed a number in [0, 1)")
        if label_smoothing and loss != "cross_entropy":
            raise UserInputError(
                f"model.label_smoothing={label_smoothing} needs model.loss=cross_entropy (it is {loss!r})"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise UserInputError(f"model.num_classes={num_classes!r}: must be an integer >= 2")
        if teacher == "???":  # an experiment that needs one (prune_distill, handnet_distill)
            raise UserInputError(
                "model.teacher: missing; give a trained SimpleConvNet, model.teacher=RUN/model_state.pt"
            )
        if distill and not teacher:  # else the distillation settings would be ignored without a word
            raise UserInputError(
                f"model.distill={distill} needs model.teacher=RUN/model_state.pt (it is {teacher!r}); "
                "or drop model.distill (~model.distill)"
            )
        if teacher and not Path(teacher).is_file():
            raise UserInputError(f"model.teacher={teacher}: no such file")
        if teacher and parse_distill(distill, "model.distill", MODEL_DISTILL_KEYS) is None:
            raise UserInputError(f"model.teacher={teacher} needs model.distill.weight > 0 (it is off)")
        # optimizer None: a module that is only tested (python eval.py)
        self.save_hyperparameters(
            {
                "net": dict(net),
                "optimizer": dict(optimizer) if optimizer else None,
                "scheduler": dict(scheduler) if scheduler else None,
                "loss": loss,
                "num_classes": num_classes,
                "label_smoothing": float(label_smoothing),
                "teacher": teacher,
                "distill": dict(distill) if distill else None,
            }
        )
        self.loss_fn = LOSSES[loss]
        # Set by whoever holds a teacher (e.g. the PruningCallback): the training loss distils from it.
        self.distillation: Distillation | None = None
        self.net = build_net(dict(net))
        # one 28x28 image: Lightning's model summary runs it to show each layer's shapes and FLOPs
        self.example_input_array = torch.zeros(1, 1, 28, 28)
        self.metrics = torch.nn.ModuleDict(
            {s: MulticlassAccuracy(num_classes=num_classes, average="micro") for s in ("val_", "test_")}
        )
        # Training loss sum, correct and seen counts, on the device; see training_step.
        self.register_buffer("train_sums", torch.zeros(3), persistent=False)
        # Leading training steps of this epoch whose loss was finite (the first NaN's batch index).
        self.register_buffer("finite_steps", torch.zeros((), dtype=torch.long), persistent=False)
        if optimizer:
            self._optimizers(total_steps=10)  # a bad optimizer or scheduler setting fails here, before any training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_fit_start(self) -> None:
        """With model.teacher, a fit distils from that trained SimpleConvNet, frozen, on the module's
        device; it is read only to train (a tested or reloaded module never needs the file). With
        model.distill.cache, its outputs for the unshifted training images are computed here, once."""
        data = getattr(self.trainer, "datamodule", None)
        if hasattr(data, "train_targets"):
            data.train_targets = None  # outputs cached by an earlier fit are not this fit's
        teacher = self.hparams.get("teacher")
        if not teacher:
            return
        settings = parse_distill(self.hparams.distill, "model.distill", MODEL_DISTILL_KEYS)
        if self.distillation is None:
            try:
                net = load_net(teacher)
            except UserInputError as err:  # its messages name the file as dissect.py's ckpt_path
                raise UserInputError(str(err).replace("ckpt_path=", "model.teacher=", 1)) from None
            net.requires_grad_(False)
            self.distillation = Distillation(net.eval().to(self.device), settings["temperature"], settings["weight"])
        if settings["cache"]:
            self._cache_teacher_outputs(data)

    @torch.no_grad()
    def _cache_teacher_outputs(self, data) -> None:
        """The teacher's outputs for every training image, handed out with the batches by the data module
        (a shifted image is then taught by the teacher's answer for the image unshifted)."""
        if not hasattr(data, "train_targets"):
            got = type(data).__name__ if data is not None else "data loaders without a data module"
            raise UserInputError(
                f"model.distill.cache=true: the fit's data ({got}) cannot carry the teacher's outputs; "
                "it needs convdissect's in-memory data module (data=mnist, fashion_mnist or kmnist), "
                "or set model.distill.cache=false"
            )
        images, _ = data.tensors("train")
        chunks = images.split(data.eval_batch_size)
        data.train_targets = torch.cat([self.distillation.teacher(chunk) for chunk in chunks])

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def _step(self, batch, stage: str) -> None:
        x, y = batch
        logits = self(x)
        acc = self.metrics[stage + "_"]
        acc.update(logits, y)
        self.log(
            f"{stage}/loss",
            self.loss_fn(logits, y),
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
            sync_dist=True,
        )
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))

    def on_train_epoch_start(self) -> None:
        self.train_sums.zero_()
        self.finite_steps.zero_()
        self.epoch_start_step = self.global_step

    def training_step(self, batch, batch_idx):
        x, y, *cached_teacher_outputs = batch  # the third element: see _cache_teacher_outputs
        logits = self(x)
        if self.global_step == 0:
            self._check_outputs(logits)
        loss = self._training_loss(x, logits, y, *cached_teacher_outputs)
        # Plain sums on the device, logged once an epoch: for a small net, a metric update and a
        # self.log per step cost a fifth of the step itself.
        with torch.no_grad():
            self.train_sums += torch.stack(
                [loss * len(y), (logits.argmax(1) == y).sum().float(), torch.full_like(loss, len(y))]
            )
            self.finite_steps += torch.isfinite(loss) & (self.finite_steps == batch_idx)
        if hasattr(self.net, "penalty"):  # e.g. HandNet's sparsity terms
            loss = loss + self.net.penalty()
        return loss

    def _training_loss(
        self, x: torch.Tensor, outputs: torch.Tensor, y: torch.Tensor, teacher_outputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The configured loss; label smoothing and distillation only when set (off, the loss is loss_fn's own).
        The teacher's outputs are computed here unless given (cached)."""
        smoothing = self.hparams.get("label_smoothing", 0.0)
        loss = F.cross_entropy(outputs, y, label_smoothing=smoothing) if smoothing else self.loss_fn(outputs, y)
        kd = self.distillation
        if kd is None:
            return loss
        if teacher_outputs is None:
            with torch.no_grad():
                teacher_outputs = kd.teacher(x)
        return distillation_loss(outputs, teacher_outputs, loss, kd.temperature, kd.weight)

    def _check_outputs(self, outputs: torch.Tensor) -> None:
        """On the first batch: one output per class, and under nll log-probabilities (NLL of logits
        trains at chance without a word)."""
        if outputs.dim() != 2 or outputs.shape[1] != self.hparams.num_classes:
            raise UserInputError(
                f"model.num_classes={self.hparams.num_classes}: the net's outputs have shape {list(outputs.shape)}, "
                f"expected [batch, {self.hparams.num_classes}]"
            )
        if self.hparams.loss != "nll":
            return
        row_sums = outputs.detach().float().exp().sum(1)  # 1 within half-precision rounding for log-probabilities
        if not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-2):
            raise UserInputError(
                f"model.loss=nll: the net returns logits, not log-probabilities (rows of exp(output) sum to "
                f"{float(row_sums.min()):.3g} to {float(row_sums.max()):.3g}, not 1); "
                "use model.loss=cross_entropy, which takes either"
            )

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, seen = self.train_sums
        if not torch.isfinite(loss_sum):  # one check an epoch: a per-step check would wait for the device every step
            bad_batch = int(self.finite_steps)
            raise UserInputError(
                f"training loss became {float(loss_sum / seen)} at epoch {self.current_epoch}, batch {bad_batch} "
                f"(global step {self.epoch_start_step + bad_batch}); "
                "stopped: lower optimizer.lr / scheduler.max_lr, or check model.init_from"
            )
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

    def _optimizers(self, total_steps: int):
        """The optimizer and, when configured, its scheduler; a OneCycleLR spans total_steps."""
        if not self.hparams.optimizer:
            raise UserInputError("this module was built for testing only (no optimizer); train with python train.py")
        try:
            opt = instantiate(self.hparams.optimizer)(self.parameters())
        except (InstantiationException, ValueError, TypeError) as err:  # e.g. torch's "Invalid learning rate: -1"
            raise UserInputError(f"optimizer {_call(self.hparams.optimizer)} is refused: {_reason(err)}") from None
        if not self.hparams.scheduler:
            return opt, None
        sched_cfg = dict(self.hparams.scheduler)
        kwargs = {}
        if sched_cfg.get("_target_", "").endswith("OneCycleLR"):
            pct_start = sched_cfg.get("pct_start", 0.3)
            if not 0 <= pct_start < 1:  # at 1 the annealing phase is zero long: a division by zero
                raise UserInputError(
                    f"scheduler.pct_start={pct_start}: allowed 0 <= pct_start < 1 (the warm-up's share)"
                )
            kwargs["total_steps"] = total_steps
            # OneCycleLR divides by its warm-up's length, pct_start * total_steps - 1: a one-step warm-up is
            # zero long (e.g. 5 steps left at pct_start 0.2), so then there is none.
            if float(pct_start * total_steps) - 1 == 0:
                sched_cfg["pct_start"] = 0.0
        try:
            return opt, instantiate(sched_cfg)(opt, **kwargs)
        except (InstantiationException, ValueError, TypeError) as err:
            raise UserInputError(f"scheduler {_call(self.hparams.scheduler)} is refused: {_reason(err)}") from None

    def configure_optimizers(self):
        """Also called again after pruning surgery: a OneCycle schedule spans the remaining steps only."""
        remaining = max(1, self.trainer.estimated_stepping_batches - self.trainer.global_step)
        opt, sched = self._optimizers(remaining)
        if sched is None:
            return opt
        interval = "step" if isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) else "epoch"
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}


def _call(spec: dict) -> str:
    """A Hydra spec as the call it makes, e.g. torch.optim.AdamW(lr=-1, weight_decay=0.0001)."""
    kwargs = ", ".join(f"{k}={v!r}" for k, v in spec.items() if not k.startswith("_"))
    return f"{spec.get('_target_')}({kwargs})"


def _reason(err: Exception) -> str:
    """The innermost message of a (Hydra-wrapped) error, on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    return " ".join(str(err).split()) or type(err).__name__
