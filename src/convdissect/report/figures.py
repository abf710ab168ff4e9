"""The article's figures, one function each, every one returning a matplotlib Figure.

Conventions (docs/measures.md): weight grids and other signed maps use a diverging colormap centred
at 0 with symmetric limits (red +, blue -); activations a sequential one; raw images are gray.
Channel numbers are 1-based (convdissect.conventions.unit_name). Figures are built with
matplotlib's object API on the Agg backend, so no window opens and no global state is kept.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

import torch

from convdissect.conventions import ANGLE_SYMBOLS, format_burst, unit_name, xy_from_clock

SIGNED = "RdBu_r"  # red positive, blue negative
ACTIVATION = "viridis"
RAW = "gray"
if TYPE_CHECKING:
    from matplotlib.figure import Figure

CELL = 1.25  # inches per small panel: a 5x5 grid stays readable at 100 dpi
MAX_WIDTH = 13.5  # inches: 1350 pixels at 100 dpi, the page's width


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg draws it; no pyplot, no window

    return Figure(figsize=(width, height), layout="constrained")


def _panels(n: int, ncols: int, cell: float = CELL, text_height: float = 0.0):
    """A figure with n panels in rows of ncols (spare ones hidden): (figure, flat axes list).
    At most MAX_WIDTH inches wide, so the page shows it at full size and its small text stays readable."""
    ncols = max(1, min(ncols, n, int(MAX_WIDTH // cell)))
    nrows = math.ceil(n / ncols)
    fig = _figure(ncols * cell, nrows * (cell + text_height) + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False).flatten().tolist()
    for ax in axes:
        ax.set_axis_off()
    return fig, axes[:n]


def _limit(values: torch.Tensor) -> float:
    """Symmetric colour limit of a signed map (never 0, so an all-zero map still draws)."""
    return max(float(values.abs().max()), 1e-12)


def _signed(ax, grid: torch.Tensor, limit: float | None = None):
    limit = _limit(grid) if limit is None else limit
    return ax.imshow(grid.cpu().numpy(), cmap=SIGNED, vmin=-limit, vmax=limit, interpolation="nearest")


def _wrap(text: str, width: int = 22) -> str:
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def _columns(n: int) -> int:
    """Panels per row of a small-multiples figure: about square, at most 16 wide."""
    return min(16, max(4, math.ceil(math.sqrt(n * 2))))


# ---------------------------------------------------------------------------- conv1


def weight_grids(grids: torch.Tensor, names: list[str], labels: list[str] | None = None, title: str = "") -> Figure:
    """One grid per panel [N, k, k], each on its own symmetric scale, titled by name, its label below."""
    texts = [_wrap(label, 20) for label in labels] if labels else []
    lines = max((text.count("\n") + 1 for text in texts), default=0)  # the tallest label sets the rows' gap
    fig, axes = _panels(len(grids), _columns(len(grids)), cell=1.35, text_height=0.15 + 0.12 * lines)
    for i, ax in enumerate(axes):
        _signed(ax, grids[i])
        ax.set_title(names[i], fontsize=8)
        if texts:
            ax.text(0.5, -0.04, texts[i], transform=ax.transAxes, fontsize=6.5, ha="center", va="top")
    fig.suptitle(title)
    return fig


def activation_maps(
    inputs: torch.Tensor, maps: torch.Tensor, layer: str, row_names: list[str], title: str = ""
) -> Figure:
    """Rows: inputs (raw [R, 1, h, w], first column); columns: the layer's channels' ReLU'd maps
    [R, C, H, W]. Each channel column shares one colour scale from 0 to its maximum. One image in one
    Axes: an Axes per map (660 for conv1 of 32 channels) took seconds to build and lay out."""
    from matplotlib import colormaps

    rows, channels = maps.shape[:2]
    maps = maps.relu().cpu()
    top = maps.amax(dim=(0, 2, 3)).clamp_min(1e-12)
    coloured = torch.from_numpy(colormaps[ACTIVATION]((maps / top[None, :, None, None]).numpy())[..., :3])
    grey = inputs.cpu().clamp(0, 1).expand(-1, 3, -1, -1).permute(0, 2, 3, 1)
    cells = [[grey[r]] + [coloured[r, c].float() for c in range(channels)] for r in range(rows)]
    size = max(max(grey.shape[1:3]), max(maps.shape[2:]))
    step = size + 2  # grey 2-pixel frames: a white input (a half-plane) stays a cell
    canvas = torch.full((rows * step + 2, (channels + 1) * step + 2, 3), 0.6)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            canvas[2 + r * step : 2 + r * step + cell.shape[0], 2 + c * step : 2 + c * step + cell.shape[1]] = cell
    fig = _figure((channels + 1) * 0.62 + 1.0, rows * 0.62 + 0.9)
    ax = fig.subplots()
    ax.imshow(canvas.numpy(), interpolation="nearest")
    ax.set_axis_off()
    centre = 2 + size / 2
    for c, name in enumerate(["input"] + [unit_name(layer, c + 1) for c in range(channels)]):
        ax.text(centre + c * step, -1, name, fontsize=6 if c else 7, rotation=90 if c else 0, ha="center", va="bottom")
    for r, name in enumerate(row_names):
        ax.text(-1, centre + r * step, name, fontsize=7, ha="right", va="center")
    fig.suptitle(title)
    return fig


def tuning_curves(
    angles_deg: torch.Tensor,
    responses: torch.Tensor,
    layer: str,
    fitted_deg: list[float] | None = None,
    title: str = "",
) -> Figure:
    """One orientation tuning curve per channel (responses [A, C]); a dashed line at the fitted
    orientation when given."""
    channels = responses.shape[1]
    fig, axes = _panels(channels, _columns(channels), cell=1.5, text_height=0.2)
    ticks = sorted(ANGLE_SYMBOLS)
    for c, ax in enumerate(axes):
        ax.set_axis_on()
        ax.plot(angles_deg.numpy(), responses[:, c].numpy(), color="black", lw=1.2)
        ax.axhline(0.0, color="0.7", lw=0.6)
        if fitted_deg is not None:
            ax.axvline(fitted_deg[c], color="tab:red", ls="--", lw=0.8)
        ax.set_xticks(ticks, [f"{t}°\n{ANGLE_SYMBOLS[t]}" for t in ticks], fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlim(0, 180)
        ax.set_title(unit_name(layer, c + 1), fontsize=8)
    fig.suptitle(title)
    return fig


def superstimulus_grid(images: torch.Tensor, names: list[str], title: str = "") -> Figure:
    """Raw [0, 1] superstimuli [C, 1, 28, 28], one per panel."""
    fig, axes = _panels(len(images), _columns(len(images)), text_height=0.15)
    for i, ax in enumerate(axes):
        ax.imshow(images[i, 0].cpu().numpy(), cmap=RAW, vmin=0, vmax=1)
        ax.set_title(names[i], fontsize=8)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------- inner-channel dissection


def dissection(
    dissected, image: torch.Tensor, input_labels: list[str], input_layer: str, rows: int = 12, title: str = ""
) -> Figure:
    """The article's big figure for one out channel on one input (InnerContributions).

    The `rows` strongest in channels get a row each, strongest last; the weaker ones are summed
    into one first row, so the running sum c ends at the channel's real output y (bias in the
    last row). Columns: x_j, label of x_j, j, w_j, a_j, c_j and, in the last row, y. Every
    column has one colour scale for all its rows; y shares c's scale.
    """
    order = dissected.order.tolist()
    shown = order[:rows][::-1]  # ascending, the strongest last as in the article
    rest = order[rows:]
    a_rows = ([dissected.a[rest].sum(dim=0)] if rest else []) + [dissected.a[j] for j in shown]
    c_rows = torch.stack(a_rows).cumsum(dim=0)
    c_rows[-1] += dissected.bias
    n = len(a_rows) + 1  # + the input image row
    fig = _figure(9.0, n * 1.05 + 0.8)
    axes = fig.subplots(n, 7, squeeze=False, width_ratios=[1, 1.8, 0.4, 1, 1, 1, 1])
    for ax in axes.flatten():
        ax.set_axis_off()
    headers = ["x_j", "label of x_j", "j", "w_j", "a_j\n= x_j ∗ w_j", "c_j\n= Σ a_i (i ≤ j)", "y"]
    for ax, header in zip(axes[0], headers):
        ax.set_title(header, fontsize=9, fontweight="bold")
    axes[0, 0].imshow(image[0].cpu().numpy(), cmap=RAW, vmin=0, vmax=1)
    axes[0, 1].text(0.0, 0.5, "input image", fontsize=9, va="center")

    x_top = max(float(dissected.x.max()), 1e-12)
    w_lim, a_lim = _limit(dissected.w), _limit(torch.stack(a_rows))
    c_lim = max(_limit(c_rows), _limit(dissected.y))
    first = 1
    if rest:
        axes[1, 1].text(0.0, 0.5, f"{len(rest)} weaker inputs, summed", fontsize=8, va="center", style="italic")
        axes[1, 2].text(0.5, 0.5, "…", fontsize=9, va="center", ha="center")
        first = 2
    for row, j in enumerate(shown, start=first):
        axes[row, 0].imshow(dissected.x[j].cpu().numpy(), cmap=ACTIVATION, vmin=0, vmax=x_top)
        axes[row, 1].text(0.0, 0.5, _wrap(input_labels[j], 30), fontsize=8, va="center")
        axes[row, 2].text(0.5, 0.5, str(j + 1), fontsize=10, va="center", ha="center")
        _signed(axes[row, 3], dissected.w[j], w_lim)
        axes[row, 3].set_title(f"{dissected.unit} <- {unit_name(input_layer, j + 1)}", fontsize=7)
    for row, (a, c) in enumerate(zip(a_rows, c_rows), start=1):
        _signed(axes[row, 4], a, a_lim)
        _signed(axes[row, 5], c, c_lim)
    _signed(axes[-1, 6], dissected.y, c_lim)
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------- conv2 and conv3


def redundancy(
    signed_shares: torch.Tensor,
    driver: list[int],
    share: list[float],
    copies: list[bool],
    layer: str,
    input_layer: str,
    title: str = "",
) -> Figure:
    """Left: each out channel's signed shares [Cout, Cin] (share of the drive positive, red; share
    of the inhibition negative, blue); the main driver circled. Right: the main driver's share of
    the drive, green where the grid copies that input's pattern."""
    cout, cin = signed_shares.shape
    fig = _figure(max(9.0, cin * 0.25 + 6.0), max(3.5, cout * 0.2 + 1.5))
    left, right = fig.subplots(1, 2, width_ratios=[max(cin * 0.25, 3.0), 4.0])
    image = left.imshow(signed_shares.cpu().numpy(), cmap=SIGNED, vmin=-1, vmax=1, aspect="auto")
    live = [(j, k) for k, j in enumerate(driver) if j >= 0]
    left.scatter(
        [j for j, _ in live], [k for _, k in live], s=30, facecolors="none", edgecolors="black", linewidths=1.0
    )
    left.set_xticks(range(cin), [str(j + 1) for j in range(cin)], fontsize=6)
    left.set_yticks(range(cout), [unit_name(layer, k + 1) for k in range(cout)], fontsize=6)
    left.set_xlabel(f"{input_layer} channel j")
    left.set_title("share of the drive (+) / of the inhibition (-)")
    fig.colorbar(image, ax=left, shrink=0.6)
    colors = ["tab:green" if c else "tab:gray" for c in copies]
    right.barh(range(cout), share, color=colors)
    for k, j in enumerate(driver):
        if j >= 0:
            right.text(share[k] + 0.01, k, unit_name(input_layer, j + 1), fontsize=6, va="center")
    right.set_ylim(cout - 0.5, -0.5)
    right.set_yticks(range(cout), [unit_name(layer, k + 1) for k in range(cout)], fontsize=6)
    right.set_xlim(0, 1.15)
    right.set_xlabel("main driver's share of the drive\n(green: the grid copies it)")
    fig.suptitle(title)
    return fig


def bursts(weight: torch.Tensor, units: list[dict], layer: str, input_layer: str, title: str = "") -> Figure:
    """Per unit its grid on the input of its strongest burst (weight [Cout, Cin, k, k]), the
    bursts on that input marked (+ red, - blue circles) and all its bursts written in clock notation."""
    fig, axes = _panels(len(units), _columns(len(units)), cell=1.35, text_height=0.55)
    centre = (weight.shape[-1] - 1) / 2.0
    for k, (ax, unit) in enumerate(zip(axes, units)):
        found = unit.get("bursts", [])
        j = int(found[0]["input"].rpartition("_")[2]) - 1 if found else int(weight[k].flatten(1).norm(dim=1).argmax())
        _signed(ax, weight[k, j])
        for b in found:
            if b["input"] == unit_name(input_layer, j + 1):
                x, y = xy_from_clock(b["clock"], b["distance"])
                ax.scatter([centre + x], [centre - y], s=160, facecolors="none", edgecolors="black", linewidths=1.4)
        notes = [
            f"{format_burst(1 if b['sign'] == '+' else -1, b['clock'], b['distance'])} {b['input']}" for b in found
        ]
        ax.set_title(f"{unit['name']} <- {unit_name(input_layer, j + 1)}", fontsize=7)
        ax.text(0.5, -0.06, "\n".join(notes) or "no bursts", transform=ax.transAxes, fontsize=6, ha="center", va="top")
    fig.suptitle(title)
    return fig


def position_maps(
    responses: torch.Tensor, positions: torch.Tensor, patterns: list[tuple[str, float]], layer: str, title: str = ""
) -> Figure:
    """Per channel the response map to its preferred pattern moved over the image
    (responses [C, P, Q], positions [Q, 2] row-major from the top-left); each map on its own
    sequential scale, image-centred axes in pixels."""
    side = int(round(math.sqrt(len(positions))))
    extent = [
        float(positions[:, 0].min()),
        float(positions[:, 0].max()),
        float(positions[:, 1].min()),
        float(positions[:, 1].max()),
    ]
    fig, axes = _panels(len(responses), _columns(len(responses)), cell=1.3, text_height=0.3)
    for c, ax in enumerate(axes):
        best = int(responses[c].mean(dim=1).argmax())
        kind, angle = patterns[best]
        ax.imshow(
            responses[c, best].reshape(side, side).numpy(), cmap=ACTIVATION, extent=extent, interpolation="nearest"
        )
        ax.set_title(f"{unit_name(layer, c + 1)}\n{kind} {ANGLE_SYMBOLS.get(int(angle), f'{angle:.0f}°')}", fontsize=7)
    fig.suptitle(title)
    return fig


def top_inputs(
    images: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, layer: str, title: str = ""
) -> Figure:
    """Rows: channels; each row the k images (raw [N, 1, 28, 28]) that activate it most,
    strongest left, drawn as one montage."""
    channels, k = indices.shape
    size = images.shape[-1] + 2  # a 2-pixel gap between thumbnails
    montage = torch.full((channels * size, k * size), 0.35)
    for c in range(channels):
        for i, index in enumerate(indices[c].tolist()):
            montage[c * size + 1 : c * size + size - 1, i * size + 1 : i * size + size - 1] = images[index, 0].cpu()
    fig = _figure(k * 0.5 + 1.6, channels * 0.5 + 0.8)
    ax = fig.subplots()
    ax.imshow(montage.numpy(), cmap=RAW, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(
        [c * size + size / 2 for c in range(channels)], [unit_name(layer, c + 1) for c in range(channels)], fontsize=7
    )
    ax.set_xticks([i * size + size / 2 for i in range(k)], [str(i + 1) for i in range(k)], fontsize=7)
    ax.set_xlabel(f"rank (1 = strongest; weakest in row: response {float(values[:, -1].min()):.2f} and up)")
    fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------- fc


def projection(
    points: list[torch.Tensor], labels: torch.Tensor, stages: list[str], scores: list[str], method: str, title: str = ""
) -> Figure:
    """One 2D scatter per stage (points [M, 2] each), coloured by digit, with its score line."""
    from matplotlib import colormaps

    fig = _figure(4.2 * len(points), 4.6)
    axes = fig.subplots(1, len(points), squeeze=False)[0]
    colours = colormaps["tab10"]
    for ax, xy, stage, score in zip(axes, points, stages, scores):
        for digit in range(10):
            chosen = labels == digit
            ax.scatter(
                xy[chosen, 0].numpy(), xy[chosen, 1].numpy(), s=6, color=colours(digit), label=str(digit), alpha=0.8
            )
        ax.set_title(f"{stage}: {method}\n{score}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(title="digit", loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2.5, fontsize=8)
    fig.suptitle(title)
    return fig


def separation(stages: list[str], silhouette: list[float], knn_accuracy: list[float], title: str = "") -> Figure:
    """Silhouette and kNN accuracy per stage, side by side."""
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    x = torch.arange(len(stages)).numpy()
    ax.bar(x - 0.2, silhouette, width=0.4, label="silhouette (-1..1)", color="tab:blue")
    ax.bar(x + 0.2, knn_accuracy, width=0.4, label="kNN accuracy (0..1)", color="tab:orange")
    for xi, s, a in zip(x, silhouette, knn_accuracy):
        ax.text(xi - 0.2, s, f"{s:.2f}", ha="center", va="bottom", fontsize=8)
        ax.text(xi + 0.2, a, f"{a:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, stages)
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_ylim(min(0.0, min(silhouette) - 0.1), 1.1)
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    return fig
