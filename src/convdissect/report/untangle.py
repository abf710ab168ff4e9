"""The report's untangling figure (the fits are in convdissect.analysis.untangle, the table in
convdissect.tables.untangle)."""

from __future__ import annotations

import math

import torch
from torch import nn

from convdissect.analysis.selectivity import PositionPattern
from convdissect.analysis.untangle import PROBE_METHODS, RAW, Untangled, interaction_cells, unit_label, untangle
from convdissect.errors import UserInputError
from convdissect.report.figure import ReportFigure


def position_maps_figure(untangled: Untangled, method: str, n_units: int = 8):
    """Raw conv3 units' position maps (left block) next to the `method` units' (right block): each
    unit's response to its top pattern over the probe positions, the n_units most concentrated of
    each, titled with the unit's one-line label, top-cell share and share in a conv3 cell."""
    import matplotlib.pyplot as plt

    sweep = untangled.sweep
    side = int(math.isqrt(len(sweep.positions)))
    xs = sweep.positions[:, 0].unique()
    extent = (float(xs.min()), float(xs.max()), float(xs.min()), float(xs.max()))
    chosen = [u for u in untangled.units if u.name in (RAW, method)]
    if len(chosen) != 2:
        raise UserInputError(f"untangle method {method!r}: not among {[u.name for u in untangled.units]}")
    fig, axes = plt.subplots(n_units, 2, figsize=(9.5, 2.1 * n_units), squeeze=False)
    for column, units in enumerate(chosen):
        order = units.share.nan_to_num(-1.0).argsort(descending=True)[:n_units].tolist()
        for row in range(n_units):
            ax = axes[row, column]
            ax.set_xticks([]), ax.set_yticks([])
            if row >= len(order):
                ax.axis("off")
                continue
            k = order[row]
            r = units.responses[k]  # [P, Q, R]
            p = int(interaction_cells(r[None])[0].amax(dim=1).argmax())
            grid = r[p].mean(dim=1).reshape(side, side)  # row-major from the top-left
            ax.imshow(grid.numpy(), cmap="magma", extent=extent)
            ax.set_title(
                f"{units.name} #{k + 1}: {unit_label(sweep, r)}\ntop-cell share {float(units.share[k]):.2f}, "
                f"in a conv3 cell {float(units.cell_share[k]):.2f}",
                fontsize=7,
            )
    fig.suptitle(f"position maps (response to the top pattern): conv3 raw vs {method}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # room for the suptitle
    return fig


# The report's methods: all but the dictionary, whose seconds per net the report does not need
# (`convdissect tables untangle` has it).
REPORT_METHODS = ("pca", "ica", "varimax") + PROBE_METHODS


def report_figure(
    net: nn.Module, images: torch.Tensor, digits: torch.Tensor, sweep: PositionPattern, method: str = "probe_window"
):
    """The report's untangling figure (section conv3): bases fitted on the first half of the
    dissection images, readout scored on the second half; the table in the caption; drawn: raw
    conv3 against `method` (by default the most concentrated basis)."""
    half = len(images) // 2
    train, test = (images[:half], digits[:half].cpu()), (images[half:], digits[half:].cpu())
    result = untangle(net, train, test, methods=REPORT_METHODS, sweep=sweep)
    rows = "; ".join(
        f"{u.name}: share {u.median_share:.3f} (in a conv3 cell {u.median_cell_share:.3f}), "
        f"readout {100 * u.readout_accuracy:.1f}%"
        for u in result.units
    )
    return (
        ReportFigure(
            "conv3",
            f"conv3_untangled_{method}",
            f"conv3 untangled ({method}) vs raw",
            "Can a linear map of conv3's pooled output give units that each respond to one pattern at one "
            "position (docs/article_method.md)? Position maps of the most concentrated raw conv3 units (left) "
            f"and {method} units (right) on the stroke sweep. Median top-cell share of the pattern × position "
            "interaction (and its share in a window of one conv3 cell) and linear readout accuracy "
            f"({half} images fitted, {len(images) - half} scored): {rows}.",
        ),
        position_maps_figure(result, method),
    )
