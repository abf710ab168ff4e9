"""When to prune and how many channels to keep.

Step k (k = 1..iterations) happens at the start of epoch `pretrain_epochs + (k - 1) * every_n_epochs`;
the epochs after the last step are the final retraining: trainer.max_epochs decides how many, or
final_epochs when set (the fit then lasts pretrain_epochs + (iterations - 1) * every_n_epochs +
final_epochs epochs, whatever trainer.max_epochs says). At each step:
- mode geometric: each layer shrinks to start * (target/start)^(k/iterations), exactly its target at the end;
- mode threshold: each layer keeps the channels scoring at least threshold x the layer's median.
With scope global the layers share one ranking instead: each layer's scores are divided by their
mean (as Torch-Pruning's global pruning does, so that layers of different scales compete), and
- geometric: the step keeps the sum of the layers' geometric widths, the best channels of the net;
- threshold: the step keeps the channels scoring at least threshold x the median over all layers.
Every layer keeps at least its min_width best channels, whatever the mode and scope.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convdissect.errors import UserInputError

MODES = ("geometric", "threshold")
SCOPES = ("layer", "global")


def geometric_width(start: int, target: int, step: int, steps: int) -> int:
    """Width after pruning step `step` of `steps`: start * (target/start)^(step/steps), exactly target at the end."""
    return max(target, round(start * (target / start) ** (step / steps)))


def best(scores: torch.Tensor, n: int) -> torch.Tensor:
    """0-based indices of the n best-scoring channels, in their order."""
    return scores.argsort(descending=True, stable=True)[:n].sort().values


@dataclass
class Schedule:
    mode: str = "geometric"
    target_widths: list[int] | None = None
    iterations: int = 7
    threshold: float = 0.5
    pretrain_epochs: int = 2
    every_n_epochs: int = 1
    min_width: int | list[int] = 1
    scope: str = "layer"
    final_epochs: int | None = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserInputError(f"callbacks.pruning.mode={self.mode!r}: allowed {list(MODES)}")
        if self.scope not in SCOPES:
            raise UserInputError(f"callbacks.pruning.scope={self.scope!r}: allowed {list(SCOPES)}")
        if not 0.0 < self.threshold <= 1.0:
            raise UserInputError(
                f"callbacks.pruning.threshold={self.threshold}: must be in (0, 1] (a share of the median score)"
            )
        floors = [self.min_width] if isinstance(self.min_width, int) else list(self.min_width)
        if not floors or any(int(w) < 1 for w in floors):
            raise UserInputError(
                f"callbacks.pruning.min_width={self.min_width}: one width >= 1, or one per prunable layer"
            )
        if self.mode == "geometric" and (not self.target_widths or any(int(w) < 1 for w in self.target_widths)):
            raise UserInputError(
                f"callbacks.pruning.target_widths={self.target_widths}: one width >= 1 per prunable layer"
            )
        for key, low in (("iterations", 1), ("every_n_epochs", 1), ("pretrain_epochs", 0)):
            if int(getattr(self, key)) < low:
                raise UserInputError(f"callbacks.pruning.{key}={getattr(self, key)}: must be >= {low}")
        final = self.final_epochs
        if final is not None and (isinstance(final, bool) or not isinstance(final, int) or final < 1):
            raise UserInputError(
                f"callbacks.pruning.final_epochs={final}: must be an integer >= 1, or null (trainer.max_epochs decides)"
            )

    def step_epoch(self, step: int) -> int:
        """The epoch at whose start pruning step `step` (1-based) happens."""
        return self.pretrain_epochs + (step - 1) * self.every_n_epochs

    @property
    def epochs_needed(self) -> int:
        """The last step and at least one epoch of retraining after it; with final_epochs, exactly the fit's length."""
        return self.step_epoch(self.iterations) + (self.final_epochs or self.every_n_epochs)

    def floors(self, layers: list[str]) -> list[int]:
        """min_width per layer."""
        if isinstance(self.min_width, int):
            return [self.min_width] * len(layers)
        if len(self.min_width) != len(layers):
            raise UserInputError(
                f"callbacks.pruning.min_width={list(self.min_width)}: need one width per prunable layer {layers}"
            )
        return [int(w) for w in self.min_width]

    def check(self, layers: list[str], widths: list[int]) -> None:
        """The schedule fits a net with these prunable layers and widths."""
        floors = self.floors(layers)
        if self.target_widths is None:
            return
        if len(self.target_widths) != len(layers):
            raise UserInputError(
                f"callbacks.pruning.target_widths={self.target_widths}: need one width per prunable layer {layers}"
            )
        for name, target, width, floor in zip(layers, self.target_widths, widths, floors):
            if target > width:
                raise UserInputError(
                    f"callbacks.pruning.target_widths={self.target_widths}: {name} target {target} is above its "
                    f"current width {width}"
                )
            if target < floor:
                raise UserInputError(
                    f"callbacks.pruning.target_widths={self.target_widths}: {name} target {target} is below its "
                    f"min_width {floor}"
                )

    def keep(self, scores: dict[str, torch.Tensor], start_widths: list[int], step: int) -> dict[str, torch.Tensor]:
        """{layer: 0-based indices of the channels to keep, in their order} at step `step`."""
        layers = list(scores)
        floors = {name: min(floor, len(scores[name])) for name, floor in zip(layers, self.floors(layers))}
        if self.mode == "geometric":
            planned = {
                name: min(len(scores[name]), geometric_width(start, target, step, self.iterations))
                for name, start, target in zip(layers, start_widths, self.target_widths)
            }
        if self.scope == "layer":
            if self.mode == "geometric":
                n_keep = planned
            else:
                n_keep = {name: int((s >= self.threshold * s.median()).sum()) for name, s in scores.items()}
            return {name: best(scores[name], max(floors[name], n_keep[name])) for name in layers}

        # global: each layer's floor is kept; the other channels compete on scale-free scores
        normalised = {name: s / s.abs().mean().clamp_min(1e-12) for name, s in scores.items()}
        rest = {name: s.sort(descending=True, stable=True).values[floors[name] :] for name, s in normalised.items()}
        owner = torch.cat([torch.full((len(r),), i) for i, r in enumerate(rest.values())])  # layer index
        values = torch.cat(list(rest.values()))
        if self.mode == "geometric":
            budget = max(0, sum(planned.values()) - sum(floors.values()))
            winners = owner[values.argsort(descending=True, stable=True)[:budget]]
        else:
            winners = owner[values >= self.threshold * torch.cat(list(normalised.values())).median()]
        n_won = torch.bincount(winners, minlength=len(layers)).tolist()
        return {name: best(scores[name], floors[name] + n) for name, n in zip(layers, n_won)}
