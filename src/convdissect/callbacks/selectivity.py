"""Channel selectivity during training: to MNIST classes and to stroke orientation, per layer."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from convdissect.analysis.selectivity import class_means, orientation_selectivity, orientation_tuning, selectivity_index


class ChannelSelectivityCallback(L.Callback):
    """Each validation epoch, on the first `n_images` validation images:
    - scalars `selectivity/<layer>_mean` (class selectivity index, mean over channels) and
      `orientation/<layer>_mean` (orientation selectivity on line probes);
    - a figure `selectivity/<layer>`: class-conditional mean activations (digits x channels), the
      selectivity index per channel, and the orientation tuning (line angles x channels).
    run_summary() reports the seconds it cost."""

    def __init__(self, layers=("conv1", "conv2", "conv3"), n_images: int = 1000, tuning_step_deg: float = 5.0):
        self.layers = list(layers)
        self.n_images = n_images
        self.tuning_step_deg = tuning_step_deg
        self.seconds = 0.0
        self.calls = 0
        self._images: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module):
        self._images, self._labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        start = time.perf_counter()
        have = sum(len(y) for y in self._labels)
        if have < self.n_images:
            x, y = batch
            self._images.append(x[: self.n_images - have])
            self._labels.append(y[: self.n_images - have])
        self.seconds += time.perf_counter() - start

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not self._labels:
            return
        start = time.perf_counter()
        net = pl_module.net
        modules = dict(net.named_modules())
        layers = [layer for layer in self.layers if layer in modules]
        images, labels = torch.cat(self._images), torch.cat(self._labels)
        means = class_means(net, images, labels, layers)
        tuning = orientation_tuning(net, layers, step_deg=self.tuning_step_deg)
        writers = (
            [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
            if trainer.is_global_zero
            else []
        )
        for layer in layers:
            index = selectivity_index(means[layer].nan_to_num(0.0))
            osi = orientation_selectivity(tuning.responses[layer], tuning.angles_deg)
            pl_module.log(f"selectivity/{layer}_mean", index.mean(), on_epoch=True, sync_dist=True)
            pl_module.log(f"orientation/{layer}_mean", osi.mean(), on_epoch=True, sync_dist=True)
            if writers:
                figure = selectivity_figure(
                    layer, means[layer].cpu(), index.cpu(), tuning.responses[layer], tuning.angles_deg
                )
                for writer in writers:
                    writer.add_figure(f"selectivity/{layer}", figure, trainer.global_step)
        self._images, self._labels = [], []
        self.calls += 1
        self.seconds += time.perf_counter() - start

    def run_summary(self) -> dict:
        return {"selectivity_callback/seconds": round(self.seconds, 3), "selectivity_callback/calls": self.calls}


def _scaled_columns(values: torch.Tensor) -> torch.Tensor:
    """Each column divided by its largest |value| (silent columns stay 0)."""
    return values / values.abs().amax(dim=0, keepdim=True).clamp_min(1e-12)


def selectivity_figure(
    layer: str, means: torch.Tensor, index: torch.Tensor, tuning: torch.Tensor, angles_deg: torch.Tensor
) -> Figure:
    """Three panels over the layer's channels (1-based): mean activation per digit, the class
    selectivity index, and the response to line probes by angle; heatmap columns are scaled to
    their maximum, each channel separately."""
    n = means.shape[1]
    fig = Figure(figsize=(max(4.5, 0.18 * n + 1.8), 6.5))
    class_ax, bar_ax, tuning_ax = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1, 3]})
    class_ax.imshow(
        _scaled_columns(means.nan_to_num(0.0)).numpy(), aspect="auto", cmap="viridis", extent=(0.5, n + 0.5, 9.5, -0.5)
    )
    class_ax.set_ylabel("digit")
    class_ax.set_yticks(range(10))
    class_ax.set_title(f"{layer}: by digit and by line angle (each channel scaled to its max)", fontsize=9)
    bar_ax.bar(range(1, n + 1), index.numpy(), color="tab:gray")
    bar_ax.set_ylim(0, 1)
    bar_ax.set_ylabel("class sel.")
    step = float(angles_deg[1] - angles_deg[0]) if len(angles_deg) > 1 else 1.0
    tuning_ax.imshow(
        _scaled_columns(tuning.relu()).numpy(),
        aspect="auto",
        cmap="viridis",
        extent=(0.5, n + 0.5, float(angles_deg[-1]) + step / 2, float(angles_deg[0]) - step / 2),
    )
    tuning_ax.set_ylabel("line angle (°)")
    tuning_ax.set_xlabel(f"{layer} channel (1-based)")
    fig.tight_layout()
    return fig
