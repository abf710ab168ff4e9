"""Iterative channel pruning inside one `trainer.fit`.

At each step of the schedule (convdissect/pruning/schedule.py) every prunable layer's out
channels are scored by the criterion (convdissect/pruning/criteria.py) on a fixed calibration
subset of the validation split, the lowest-scoring ones are removed (pruning/cut.py), the
optimizer and its OneCycle schedule are rebuilt over the remaining steps, and training goes on:
the retraining. Epochs after the last step are the final retraining. With distillation on, the
retraining also learns the softened outputs of the unpruned net, frozen at the first step.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from convdissect.conventions import unit_name
from convdissect.errors import UserInputError
from convdissect.models import build_net
from convdissect.models.lit_module import Distillation, parse_distill
from convdissect.models.prunable import layer_width, producer_consumer_table
from convdissect.pruning.cost import accuracy, flops_per_image
from convdissect.pruning.criteria import SUPERSTIMULUS_STEPS, Calibration, parse_criterion, parse_normalise, score_layer
from convdissect.pruning.cut import cut_channels
from convdissect.pruning.figures import accuracy_per_step
from convdissect.pruning.schedule import Schedule

log = logging.getLogger(__name__)

ACCURACY_TAGS = ("pruning/val_acc_before", "pruning/val_acc_pruned", "pruning/val_acc_retrained")


class PruningCallback(L.Callback):
    """Prunes whole out channels of every prunable layer, every `every_n_epochs`, within one fit."""

    def __init__(
        self,
        criterion="activation_variance",
        mode: str = "geometric",
        target_widths: list[int] | None = None,
        iterations: int = 7,
        threshold: float = 0.5,
        pretrain_epochs: int = 2,
        every_n_epochs: int = 1,
        calibration_size: int = 1000,
        eval_size: int | None = None,
        min_width: int | list[int] = 1,
        scope: str = "layer",
        magnitude_p: float = 2.0,
        normalise="rank",
        superstimulus_steps: int = SUPERSTIMULUS_STEPS,
        distill: dict | None = None,
        final_epochs: int | None = None,
        seed: int = 0,
    ):
        self.weights = parse_criterion(criterion)
        self.normalise = parse_normalise(normalise, self.weights)
        if int(superstimulus_steps) < 1:
            raise UserInputError(f"callbacks.pruning.superstimulus_steps={superstimulus_steps}: must be >= 1")
        if magnitude_p not in (1, 2):
            raise UserInputError(f"callbacks.pruning.magnitude_p={magnitude_p}: allowed 1 (L1 norm) or 2 (L2 norm)")
        if eval_size is not None and (isinstance(eval_size, bool) or int(eval_size) < 1):
            raise UserInputError(
                f"callbacks.pruning.eval_size={eval_size}: must be >= 1 validation images, or null for all of them"
            )
        if int(calibration_size) < 2:
            raise UserInputError(f"callbacks.pruning.calibration_size={calibration_size}: must be >= 2")
        self.distill = parse_distill(distill, "callbacks.pruning.distill")
        self.schedule = Schedule(
            mode=mode,
            target_widths=[int(w) for w in target_widths] if target_widths else None,
            iterations=int(iterations),
            threshold=threshold,
            pretrain_epochs=int(pretrain_epochs),
            every_n_epochs=int(every_n_epochs),
            min_width=min_width if isinstance(min_width, int) else [int(w) for w in min_width],
            scope=scope,
            final_epochs=final_epochs,
        )
        self.options = {
            "magnitude": {"p": float(magnitude_p)},
            "superstimulus_contrast": {"steps": int(superstimulus_steps)},
        }
        self.calibration_size, self.eval_size, self.seed = int(calibration_size), eval_size, int(seed)
        # Checkpointed state (state_dict): the schedule's start, what was kept, one history entry per step.
        self.start_widths: list[int] | None = None
        self.start_flops: int | None = None
        self.kept: dict[str, list[int]] = {}
        self.history: list[dict] = []
        # The unpruned net as it was at the first step, {"spec": build_net's spec, "state": its state_dict}.
        self.teacher: dict | None = None
        self._resumed_state: dict | None = None

    @property
    def iteration(self) -> int:
        """Pruning steps done so far."""
        return len(self.history)

    # ------------------------------------------------------------------ checks before training

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise UserInputError(
                f"pruning runs on one device only (this trainer has {trainer.world_size} processes): surgery on one "
                "rank would leave the others with another net; use trainer.devices=1"
            )
        schedule = self.schedule
        if self.distill and not hasattr(pl_module, "distillation"):
            raise UserInputError(
                "callbacks.pruning.distill.weight > 0 needs a module that distils "
                "(convdissect.models.lit_module.LitClassifier)"
            )
        if self.distill and pl_module.hparams.get("teacher"):
            raise UserInputError(
                f"callbacks.pruning.distill.weight={self.distill['weight']} and model.teacher="
                f"{pl_module.hparams.teacher}: one teacher at a time; set callbacks.pruning.distill.weight=0"
            )
        if schedule.final_epochs is not None:  # the schedule sets the fit's length
            if trainer.max_epochs != schedule.epochs_needed:
                log.info(
                    "callbacks.pruning.final_epochs=%d: training %d epochs, not trainer.max_epochs=%s",
                    schedule.final_epochs,
                    schedule.epochs_needed,
                    trainer.max_epochs,
                )
            trainer.fit_loop.max_epochs = schedule.epochs_needed
        if trainer.max_epochs is None or trainer.max_epochs < schedule.epochs_needed:
            raise UserInputError(
                f"trainer.max_epochs={trainer.max_epochs} cannot hold the pruning schedule: {schedule.pretrain_epochs} "
                f"pretrain epochs + {schedule.iterations} iterations x {schedule.every_n_epochs} epoch(s) need "
                f"max_epochs >= {schedule.epochs_needed}"
            )
        if not hasattr(trainer.datamodule, "tensors"):
            raise UserInputError(
                "pruning needs a datamodule with tensors(split, n) (e.g. convdissect.data.mnist.MNISTDataModule)"
            )
        table = producer_consumer_table(pl_module.net)
        widths = _widths(pl_module.net, table)
        schedule.check(list(table), widths)
        self.start_widths = self.start_widths or widths
        self.kept = self.kept or {name: list(range(1, w + 1)) for name, w in zip(table, widths)}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._resumed_state = self._resumed_state, None
        if state:
            self.history = [dict(h) for h in state["history"]]
            self.kept = {k: list(v) for k, v in state["kept"].items()}
            self.start_widths = list(state["start_widths"])
            self.start_flops = state.get("start_flops")
            self.teacher = state.get("teacher")
        if self.teacher is not None:
            self._distil_from_teacher(pl_module)
        if self.start_flops is None:
            self.start_flops = flops_per_image(pl_module.net, self._val(trainer, 1)[0])
        for logger in _tensorboards(trainer):
            # One chart per quantity, with the three accuracies of each step side by side.
            layout = {
                "pruning": {
                    "val accuracy: before / right after pruning / after retraining": ["Multiline", list(ACCURACY_TAGS)],
                    "widths": ["Multiline", [r"pruning/width_.*"]],
                    "FLOPs per image": ["Multiline", ["pruning/flops"]],
                }
            }
            logger.experiment.add_custom_scalars(layout)

    # ------------------------------------------------------------------ the pruning step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = self.schedule
        if self.iteration < schedule.iterations and trainer.current_epoch == schedule.step_epoch(self.iteration + 1):
            self.prune(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history and self.history[-1]["val_acc_retrained"] is None:
            self._record_retrained(trainer, accuracy(pl_module.net, *self._val(trainer, self.eval_size)))
        if self.history and trainer.is_global_zero:
            fig = accuracy_per_step(self.history, self.criterion_label, self.start_widths)
            fig.savefig(Path(trainer.default_root_dir) / "pruning_accuracy.png", dpi=120)
            for logger in _tensorboards(trainer):
                logger.experiment.add_figure("pruning/accuracy", fig, global_step=self.iteration, close=False)

    def prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net, step = pl_module.net, self.iteration + 1
        val_images, val_labels = self._val(trainer, self.eval_size)
        acc_before = accuracy(net, val_images, val_labels)
        if self.history:  # the previous step's retraining ends here
            self._record_retrained(trainer, acc_before)
        if self.distill and self.teacher is None:
            self.teacher = {
                "spec": copy.deepcopy(dict(pl_module.hparams.net)),
                "state": copy.deepcopy(net.state_dict()),
            }
            self._distil_from_teacher(pl_module)

        table = producer_consumer_table(net)
        images, labels = self._val(trainer, self.calibration_size)
        was_training = net.training
        net.eval()
        cal = Calibration(net, table, images, labels, torch.Generator().manual_seed(self.seed * 1000 + step))
        scored = {layer: score_layer(cal, layer, self.weights, self.options, self.normalise) for layer in table}
        net.train(was_training)
        scores = {layer: s for layer, (s, _) in scored.items()}
        keep = self.schedule.keep(scores, self.start_widths, step)

        widths_before = _widths(net, table)
        cut_channels(net, keep, images[:1])
        for layer in table:
            self.kept[layer] = [self.kept[layer][i] for i in keep[layer].tolist()]
        widths = _widths(net, table)
        if hasattr(net, "widths"):
            # A net of ours is rebuilt at the new widths (so its checkpoints rebuild too) and takes the
            # pruned weights; the fresh weights it draws must not shift the run's random stream.
            with torch.random.fork_rng(devices=[]):
                pl_module.set_widths(widths)
            pl_module.net.load_state_dict(net.state_dict())
            net = pl_module.net

        # New parameters: a new optimizer, and a OneCycle over the remaining steps only.
        trainer.strategy.setup_optimizers(trainer)
        for checkpoint in trainer.checkpoint_callbacks:
            _forget_best(trainer, checkpoint)
        entry = {
            "iteration": step,
            "epoch": trainer.current_epoch,
            "widths_before": widths_before,
            "widths": widths,
            "n_params": sum(p.numel() for p in net.parameters()),
            "flops": flops_per_image(net, images[:1]),
            "kept_channels": {layer: list(kept) for layer, kept in self.kept.items()},
            "criterion_fallbacks": {layer: f for layer, (_, f) in scored.items() if f},
            "val_acc_before": acc_before,
            "val_acc_pruned": accuracy(net, val_images, val_labels),
            "val_acc_retrained": None,
        }
        self.history.append(entry)
        self._report_step(trainer, entry, scores)

    def _report_step(self, trainer: L.Trainer, entry: dict, scores: dict[str, torch.Tensor]) -> None:
        """A pruning step in the log, the loggers' metrics and TensorBoard's texts and histograms."""
        step = entry["iteration"]
        log.info(
            "pruning step %d/%d: widths %s -> %s, %d FLOPs per image, val acc %.4f -> %.4f",
            step,
            self.schedule.iterations,
            entry["widths_before"],
            entry["widths"],
            entry["flops"],
            entry["val_acc_before"],
            entry["val_acc_pruned"],
        )
        metrics = {
            ACCURACY_TAGS[0]: entry["val_acc_before"],
            ACCURACY_TAGS[1]: entry["val_acc_pruned"],
            "pruning/n_params": entry["n_params"],
            "pruning/flops": entry["flops"],
        }
        metrics.update({f"pruning/width_{layer}": w for layer, w in zip(scores, entry["widths"])})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        for logger in _tensorboards(trainer):
            text = "\n\n".join(
                f"{layer}: {', '.join(unit_name(layer, i) for i in kept)}" for layer, kept in self.kept.items()
            )
            logger.experiment.add_text("pruning/kept_channels", text, global_step=step)
            for layer, layer_scores in scores.items():  # the scores the cut was made on, before the cut
                logger.experiment.add_histogram(f"pruning/scores/{layer}", layer_scores, global_step=step)

    def _distil_from_teacher(self, pl_module: L.LightningModule) -> None:
        """The module's training loss distils from the kept teacher, rebuilt frozen on the module's device."""
        teacher = build_net(self.teacher["spec"])
        teacher.load_state_dict(self.teacher["state"])
        teacher.requires_grad_(False)
        teacher.eval().to(pl_module.device)
        pl_module.distillation = Distillation(teacher, self.distill["temperature"], self.distill["weight"])

    def _record_retrained(self, trainer: L.Trainer, acc: float) -> None:
        self.history[-1]["val_acc_retrained"] = acc
        for logger in trainer.loggers:
            logger.log_metrics({ACCURACY_TAGS[2]: acc}, step=self.history[-1]["iteration"])

    def _val(self, trainer: L.Trainer, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        return trainer.datamodule.tensors("val", n)

    # ------------------------------------------------------------------ outputs and state

    @property
    def criterion_label(self) -> str:
        return ", ".join(self.weights)

    def run_summary(self) -> dict:
        """Merged into metrics.json by train()."""
        schedule = self.schedule
        return {
            "pruning": {
                "criterion": self.weights,
                "mode": schedule.mode,
                "scope": schedule.scope,
                "threshold": schedule.threshold if schedule.mode == "threshold" else None,
                "magnitude_p": self.options["magnitude"]["p"] if "magnitude" in self.weights else None,
                "normalise": self.normalise if len(self.weights) > 1 else None,
                "superstimulus_steps": self.options["superstimulus_contrast"]["steps"]
                if "superstimulus_contrast" in self.weights
                else None,
                "start_widths": self.start_widths,
                "start_flops": self.start_flops,
                "iterations": schedule.iterations,
                "distill": self.distill,
                "final_epochs": schedule.final_epochs,
                "seed": self.seed,
            },
            "pruning_history": self.history,
            "flops": self.history[-1]["flops"] if self.history else self.start_flops,  # per image, of the final net
        }

    def state_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "history": self.history,
            "kept": self.kept,
            "start_widths": self.start_widths,
            "start_flops": self.start_flops,
            "teacher": self.teacher,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning also restores callbacks when trainer.test loads the best checkpoint; that
        # must not roll the history back, so the state is applied only when a fit resumes.
        self._resumed_state = state_dict


def _widths(net: nn.Module, table: dict[str, str]) -> list[int]:
    return [layer_width(net.get_submodule(name)) for name in table]


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    if not trainer.is_global_zero:
        return []
    return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def _forget_best(trainer: L.Trainer, checkpoint: ModelCheckpoint) -> None:
    """After surgery earlier checkpoints hold another net, so "best" is chosen afresh among later
    ones, and the files it kept go (last.ckpt resumes the run; save_top_k=-1 keeps every epoch's)."""
    if checkpoint.save_top_k != -1:
        for path in checkpoint.best_k_models:
            trainer.strategy.remove_checkpoint(path)
    checkpoint.best_k_models = {}
    checkpoint.kth_best_model_path = ""
    checkpoint.best_model_path = ""
    checkpoint.best_model_score = None
    checkpoint.kth_value = torch.tensor(torch.inf if checkpoint.mode == "min" else -torch.inf)
