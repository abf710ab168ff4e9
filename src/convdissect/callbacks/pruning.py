"""Iterative channel pruning inside one `trainer.fit` (docs/measures.md, "The nets").

At the start of epoch `pretrain_epochs + (k - 1) * every_n_epochs` (k = 1..iterations) every
prunable layer's out channels are scored on a fixed calibration subset of the validation split,
the lowest-scoring ones are removed (models/surgery.py), the optimizer and its OneCycle
schedule are rebuilt over the remaining steps, and training goes on: the retraining. Epochs
after the last step are the final retraining.

Scores say how much a channel is worth keeping (low = pruned first):
- activation_variance: variance of what the next layer reads of the channel (after its
  activation and pooling) over the calibration images - the article's main criterion
- weight_noise: R² of the best parametric fit of the channel's weight grids (a line, or a burst
  measured by the share of energy in the 2 strongest pixels), energy-weighted over its input
  grids: noise-like grids (1 - R² high) go first; conv layers only
- selectivity: class selectivity of the channel's mean activation, the share of its variance over
  the images explained by the class means (eta²); 0 for a constant channel
- superstimulus_contrast: contrast (pixel std) of the input that maximises the channel's centre
  unit, found by a short gradient ascent from a grey image; a plain superstimulus goes first
- random: the control
`criterion` is one name or a {name: weight} map (weighted sum of the criteria's ranks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from convdissect.conventions import unit_name
from convdissect.data.mnist import MNIST_MEAN, MNIST_STD
from convdissect.errors import UserInputError
from convdissect.dissect.fits import fit_lines, peak_energy_share
from convdissect.models.surgery import layer_width, producer_consumer_table, remove_channels

log = logging.getLogger(__name__)

MODES = ("geometric", "threshold")
# Pixel range and mid-grey of an image normalised like the data.
PIXEL_LOW, PIXEL_HIGH = -MNIST_MEAN / MNIST_STD, (1.0 - MNIST_MEAN) / MNIST_STD
GREY = (0.5 - MNIST_MEAN) / MNIST_STD


@dataclass
class Calibration:
    """What the criteria score from: the net, its layer table, and what each consumer read of each
    prunable layer's channels on the calibration images ([N, C, positions])."""

    net: nn.Module
    table: dict[str, str]
    acts: dict[str, torch.Tensor]
    labels: torch.Tensor
    generator: torch.Generator


@torch.no_grad()
def consumer_inputs(net: nn.Module, table: dict[str, str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """For each producer layer: its channels as the consumer reads them, [N, C, positions]."""
    acts, handles = {}, []
    for producer, consumer in table.items():
        width = layer_width(net.get_submodule(producer))

        def hook(module, args, producer=producer, width=width):
            acts[producer] = args[0].reshape(len(args[0]), width, -1)

        handles.append(net.get_submodule(consumer).register_forward_pre_hook(hook))
    try:
        net(images)
    finally:
        for handle in handles:
            handle.remove()
    return acts


def activation_variance(cal: Calibration, layer: str) -> torch.Tensor:
    return cal.acts[layer].transpose(0, 1).flatten(1).var(dim=1)


def selectivity(cal: Calibration, layer: str) -> torch.Tensor:
    mean_act = cal.acts[layer].mean(dim=2)  # [N, C]
    total = mean_act.var(dim=0, unbiased=False)
    centred = mean_act - mean_act.mean(dim=0)
    between = torch.zeros_like(total)
    for label in cal.labels.unique():
        members = centred[cal.labels == label]
        between += len(members) * members.mean(dim=0).square()
    eta2 = between / len(mean_act) / total.clamp_min(1e-12)
    return torch.where(total > 1e-10, eta2, torch.zeros_like(eta2))


def weight_noise(cal: Calibration, layer: str) -> torch.Tensor:
    weight = cal.net.get_submodule(layer).weight.detach().cpu()  # [C, I, k, k]
    grids = weight.flatten(0, 1)
    r2 = torch.maximum(fit_lines(grids).r2, peak_energy_share(grids, n=2)).view(weight.shape[:2])
    energy = weight.square().sum(dim=(-2, -1))
    return (r2 * energy).sum(dim=1) / energy.sum(dim=1).clamp_min(1e-12)


def superstimulus_contrast(cal: Calibration, layer: str, steps: int = 10, lr: float = 2.0) -> torch.Tensor:
    module = cal.net.get_submodule(layer)
    width = layer_width(module)
    device = module.weight.device
    images = torch.full((width, 1, 28, 28), GREY, device=device, requires_grad=True)
    captured = {}
    handle = module.register_forward_hook(lambda m, args, out: captured.update(out=out))
    try:
        for _ in range(steps):
            cal.net(images)
            out = captured["out"]
            centre = out[..., out.shape[-2] // 2, out.shape[-1] // 2] if out.dim() == 4 else out  # [C images, C]
            (grad,) = torch.autograd.grad(centre.diagonal().sum(), images)
            with torch.no_grad():
                images += lr * grad
                images.clamp_(PIXEL_LOW, PIXEL_HIGH)
    finally:
        handle.remove()
    return images.detach().flatten(1).std(dim=1)


def random_scores(cal: Calibration, layer: str) -> torch.Tensor:
    return torch.rand(cal.acts[layer].shape[1], generator=cal.generator)


# name -> (score function, whether it has a meaning for fully connected units)
CRITERIA = {
    "activation_variance": (activation_variance, True),
    "weight_noise": (weight_noise, False),
    "selectivity": (selectivity, True),
    "superstimulus_contrast": (superstimulus_contrast, True),
    "random": (random_scores, True),
}
FALLBACK = "activation_variance"


def parse_criterion(criterion) -> dict[str, float]:
    """'name' or {name: weight} -> {name: weight}, checked."""
    weights = {str(criterion): 1.0} if isinstance(criterion, str) else {str(k): float(v) for k, v in dict(criterion).items()}
    unknown = [name for name in weights if name not in CRITERIA]
    if not weights or unknown:
        raise UserInputError(f"callbacks.pruning.criterion={criterion!r}: unknown {unknown}; known criteria {list(CRITERIA)}")
    if any(w <= 0 for w in weights.values()):
        raise UserInputError(f"callbacks.pruning.criterion={criterion!r}: weights must be positive")
    return weights


def _rank01(scores: torch.Tensor) -> torch.Tensor:
    """Scores -> their ranks scaled to [0, 1] (comparable across criteria)."""
    ranks = scores.argsort().argsort().float()
    return ranks / max(1, len(scores) - 1)


def score_layer(cal: Calibration, layer: str, weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, str]]:
    """Scores of the layer's out channels, and the criteria that fell back ({criterion: used})."""
    is_conv = isinstance(cal.net.get_submodule(layer), nn.Conv2d)
    used, fallbacks = {}, {}
    for name, weight in weights.items():
        if not (CRITERIA[name][1] or is_conv):
            fallbacks[name] = FALLBACK
            name = FALLBACK
        used[name] = used.get(name, 0.0) + weight
    per_criterion = {name: CRITERIA[name][0](cal, layer).float().cpu() for name in used}
    if len(per_criterion) == 1:
        return next(iter(per_criterion.values())), fallbacks
    return sum(w * _rank01(per_criterion[name]) for name, w in used.items()), fallbacks


def geometric_width(start: int, target: int, step: int, steps: int) -> int:
    """Width after pruning step `step` of `steps`: start * (target/start)^(step/steps), exactly target at the end."""
    return max(target, round(start * (target / start) ** (step / steps)))


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
        min_width: int = 1,
        seed: int = 0,
    ):
        self.weights = parse_criterion(criterion)
        if mode not in MODES:
            raise UserInputError(f"callbacks.pruning.mode={mode!r}: allowed {list(MODES)}")
        if not 0.0 < threshold <= 1.0:
            raise UserInputError(f"callbacks.pruning.threshold={threshold}: must be in (0, 1] (a share of the layer's median score)")
        if mode == "geometric" and (not target_widths or any(int(w) < min_width for w in target_widths)):
            raise UserInputError(f"callbacks.pruning.target_widths={target_widths}: one width >= {min_width} per prunable layer")
        for key, value, low in (("iterations", iterations, 1), ("every_n_epochs", every_n_epochs, 1), ("pretrain_epochs", pretrain_epochs, 0),
                                ("calibration_size", calibration_size, 2), ("min_width", min_width, 1)):
            if int(value) < low:
                raise UserInputError(f"callbacks.pruning.{key}={value}: must be >= {low}")
        self.mode, self.threshold = mode, float(threshold)
        self.target_widths = [int(w) for w in target_widths] if target_widths else None
        self.iterations, self.pretrain_epochs, self.every_n_epochs = int(iterations), int(pretrain_epochs), int(every_n_epochs)
        self.calibration_size, self.eval_size, self.min_width, self.seed = int(calibration_size), eval_size, int(min_width), int(seed)
        # Checkpointed state (state_dict): the schedule's start, what was kept, one history entry per step.
        self.start_widths: list[int] | None = None
        self.kept: dict[str, list[int]] = {}
        self.history: list[dict] = []
        self._resumed_state: dict | None = None

    @property
    def iteration(self) -> int:
        """Pruning steps done so far."""
        return len(self.history)

    def step_epoch(self, step: int) -> int:
        """The epoch at whose start pruning step `step` (1-based) happens."""
        return self.pretrain_epochs + (step - 1) * self.every_n_epochs

    # ------------------------------------------------------------------ checks before training

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise UserInputError(
                f"pruning runs on one device only (this trainer has {trainer.world_size} processes): surgery on one "
                "rank would leave the others with another net; use trainer.devices=1"
            )
        needed = self.step_epoch(self.iterations) + self.every_n_epochs
        if trainer.max_epochs is None or trainer.max_epochs < needed:
            raise UserInputError(
                f"trainer.max_epochs={trainer.max_epochs} cannot hold the pruning schedule: {self.pretrain_epochs} pretrain epochs "
                f"+ {self.iterations} iterations x {self.every_n_epochs} epoch(s) need max_epochs >= {needed}"
            )
        table = producer_consumer_table(pl_module.net)
        widths = _widths(pl_module.net, table)
        self.start_widths = self.start_widths or widths
        self.kept = self.kept or {name: list(range(1, w + 1)) for name, w in zip(table, widths)}
        if self.target_widths is not None:
            if len(self.target_widths) != len(table):
                raise UserInputError(f"callbacks.pruning.target_widths={self.target_widths}: need one width per prunable layer {list(table)}")
            for name, target, width in zip(table, self.target_widths, widths):
                if target > width:
                    raise UserInputError(f"callbacks.pruning.target_widths={self.target_widths}: {name} target {target} is above its current width {width}")

    # ------------------------------------------------------------------ the pruning step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.iteration < self.iterations and trainer.current_epoch == self.step_epoch(self.iteration + 1):
            self.prune(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.history and self.history[-1]["val_acc_retrained"] is None:
            self._record_retrained(trainer, self.evaluate(trainer, pl_module.net))
        if self.history and trainer.is_global_zero:
            self.save_figure(trainer)

    def prune(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        step = self.iteration + 1
        acc_before = self.evaluate(trainer, net)
        if self.history:  # the previous step's retraining ends here
            self._record_retrained(trainer, acc_before)

        table = producer_consumer_table(net)
        images, labels = self._val_tensors(trainer, self.calibration_size)
        was_training = net.training
        net.eval()
        cal = Calibration(net, table, consumer_inputs(net, table, images), labels,
                          torch.Generator().manual_seed(self.seed * 1000 + step))
        scored = {layer: score_layer(cal, layer, self.weights) for layer in table}
        net.train(was_training)

        widths_before = _widths(net, table)
        for index, layer in enumerate(table):
            scores, _ = scored[layer]
            keep = self._keep(scores, index, step)
            remove_channels(net, layer, keep, table)
            self.kept[layer] = [self.kept[layer][i] for i in keep.tolist()]
        widths = _widths(net, table)
        pl_module.hparams.net["widths"] = widths
        acc_pruned = self.evaluate(trainer, net)

        # New parameters: a new optimizer, and a OneCycle over the remaining steps only.
        trainer.strategy.setup_optimizers(trainer)
        for checkpoint in trainer.checkpoint_callbacks:
            _forget_best(checkpoint)

        n_params = sum(p.numel() for p in net.parameters())
        fallbacks = {layer: f for layer, (_, f) in scored.items() if f}
        self.history.append({
            "iteration": step,
            "epoch": trainer.current_epoch,
            "widths_before": widths_before,
            "widths": widths,
            "n_params": n_params,
            "kept_channels": {layer: list(kept) for layer, kept in self.kept.items()},
            "criterion_fallbacks": fallbacks,
            "val_acc_before": acc_before,
            "val_acc_pruned": acc_pruned,
            "val_acc_retrained": None,
        })
        log.info("pruning step %d/%d: widths %s -> %s, val acc %.4f -> %.4f", step, self.iterations, widths_before, widths, acc_before, acc_pruned)
        metrics = {"pruning/val_acc_before": acc_before, "pruning/val_acc_pruned": acc_pruned, "pruning/n_params": n_params}
        metrics.update({f"pruning/width_{layer}": w for layer, w in zip(table, widths)})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                text = "\n\n".join(f"{layer}: {', '.join(unit_name(layer, i) for i in kept)}" for layer, kept in self.kept.items())
                logger.experiment.add_text("pruning/kept_channels", text, global_step=step)

    def _keep(self, scores: torch.Tensor, index: int, step: int) -> torch.Tensor:
        """0-based indices of the channels to keep, in their order: the best-scoring ones."""
        width = len(scores)
        if self.mode == "geometric":
            n_keep = min(width, geometric_width(self.start_widths[index], self.target_widths[index], step, self.iterations))
        else:
            n_keep = int((scores >= self.threshold * scores.median()).sum())
        n_keep = max(min(self.min_width, width), n_keep)
        return scores.argsort(descending=True, stable=True)[:n_keep].sort().values

    def _record_retrained(self, trainer: L.Trainer, acc: float) -> None:
        self.history[-1]["val_acc_retrained"] = acc
        for logger in trainer.loggers:
            logger.log_metrics({"pruning/val_acc_retrained": acc}, step=self.history[-1]["iteration"])

    # ------------------------------------------------------------------ evaluation (trainer.validate cannot run inside fit)

    def _val_tensors(self, trainer: L.Trainer, n: int | None):
        if not hasattr(trainer.datamodule, "tensors"):
            raise UserInputError("pruning needs a datamodule with tensors(split, n) (e.g. convdissect.data.mnist.MNISTDataModule)")
        return trainer.datamodule.tensors("val", n)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, net: nn.Module, batch_size: int = 1000) -> float:
        """Accuracy on the first eval_size validation images (all when None)."""
        images, labels = self._val_tensors(trainer, self.eval_size)
        was_training = net.training
        net.eval()
        correct = sum(int((net(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum()) for i in range(0, len(labels), batch_size))
        net.train(was_training)
        return correct / len(labels)

    # ------------------------------------------------------------------ outputs

    def save_figure(self, trainer: L.Trainer) -> None:
        """The article's "retraining recovers accuracy" plot: to TensorBoard and pruning_accuracy.png."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [h["iteration"] for h in self.history]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for key, label, marker in (("val_acc_before", "before pruning", "o"), ("val_acc_pruned", "right after pruning", "v"),
                                   ("val_acc_retrained", "after retraining", "^")):
            ax.plot(steps, [h[key] for h in self.history], marker=marker, label=label)
        ax.set_xlabel("pruning iteration")
        ax.set_ylabel("validation accuracy")
        ax.set_xticks(steps)
        ax.set_title(f"Pruning by {', '.join(self.weights)}: retraining recovers accuracy\n"
                     f"widths {self.start_widths} -> {self.history[-1]['widths']}", fontsize=10)
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(trainer.default_root_dir) / "pruning_accuracy.png", dpi=120)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("pruning/accuracy", fig, global_step=self.iteration)
        plt.close(fig)

    def run_summary(self) -> dict:
        """Merged into metrics.json by train()."""
        return {
            "pruning": {"criterion": self.weights, "mode": self.mode, "threshold": self.threshold if self.mode == "threshold" else None,
                        "start_widths": self.start_widths, "iterations": self.iterations},
            "pruning_history": self.history,
        }

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "history": self.history, "kept": self.kept, "start_widths": self.start_widths}

    def load_state_dict(self, state_dict: dict) -> None:
        # Lightning also restores callbacks when trainer.test loads the best checkpoint; that
        # must not roll the history back, so the state is applied only when a fit resumes.
        self._resumed_state = state_dict

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._resumed_state = self._resumed_state, None
        if state:
            self.history = [dict(h) for h in state["history"]]
            self.kept = {k: list(v) for k, v in state["kept"].items()}
            self.start_widths = list(state["start_widths"])


def _widths(net: nn.Module, table: dict[str, str]) -> list[int]:
    return [layer_width(net.get_submodule(name)) for name in table]


def _forget_best(checkpoint: ModelCheckpoint) -> None:
    """After surgery earlier checkpoints hold another net, so "best" is chosen afresh among later
    ones. Their files stay on disk (they resume a run mid-schedule)."""
    checkpoint.best_k_models = {}
    checkpoint.kth_best_model_path = ""
    checkpoint.best_model_path = ""
    checkpoint.best_model_score = None
    checkpoint.kth_value = torch.tensor(torch.inf if checkpoint.mode == "min" else -torch.inf)
