"""Pruning's figure, a pure function returning a matplotlib Figure (no pyplot, no window)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# history key, legend, marker
SERIES = (
    ("val_acc_before", "before pruning", "o"),
    ("val_acc_pruned", "right after pruning", "v"),
    ("val_acc_retrained", "after retraining", "^"),
)


def accuracy_per_step(history: list[dict], criterion: str, start_widths: list[int]) -> "Figure":
    """The article's "retraining recovers accuracy" plot: val accuracy before, right after and
    after retraining, per pruning step of a `pruning_history`."""
    from matplotlib.figure import Figure

    steps = [h["iteration"] for h in history]
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for key, label, marker in SERIES:
        ax.plot(steps, [h[key] for h in history], marker=marker, label=label)
    ax.set_xlabel("pruning iteration")
    ax.set_ylabel("validation accuracy")
    ax.set_xticks(steps)
    ax.set_title(
        f"Pruning by {criterion}: retraining recovers accuracy\nwidths {start_widths} -> {history[-1]['widths']}",
        fontsize=10,
    )
    ax.legend()
    return fig
