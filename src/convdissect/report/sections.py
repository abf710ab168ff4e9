"""The report's words: its sections, their introductions and the columns of its label tables."""

from __future__ import annotations

import logging

from convdissect.conventions import REGION_NAMES

log = logging.getLogger(__name__)


SECTIONS = {
    "conv1": "conv1: what each filter detects",
    "conv2": "conv2: amplifying conv1",
    "conv3": "conv3: patterns at positions",
    "fc": "fc: separating the classes",
}
INTROS = {
    "conv1": "Each conv1 filter is a 5x5 grid convolved with the image. The label table gives the best-fitting "
    "parametric line or edge (angle counter-clockwise from the horizontal, x right and y up: 45° is /, 135° is \\).",
    "conv2": "Each conv2 out channel sums the convolutions of all conv1 channels with its grids. Its drivers are the conv1 "
    "channels that add to what survives ReLU and max-pool (blank-image part subtracted), with their share of the drive; "
    "its inhibitors subtract from it (docs/measures.md). The article's finding: one conv1 channel drives each conv2 "
    "channel, and the grid on it copies that channel's pattern.",
    "conv3": "conv3 grids are pixel bursts: a burst at a clock position (12 o'clock up, distance in grid cells) "
    "picks where in the image the input's pattern must lie, written +[7:30, 2√2].",
    "fc": "How well the classes separate at each stage: the raw input, conv3's pooled output, fc4 and fc5, "
    "projected to 2D, scored in the full space.",
}
TABLE_COLUMNS = {
    "conv1": [
        ("was", "before pruning"),
        ("label", "label"),
        ("orientation_deg", "θ (°)"),
        ("kind", "kind"),
        ("side", "side"),
        ("fit_r2", "fit R²"),
        ("secondary_orientation_deg", "secondary θ (°)"),
    ],
    "conv2": [
        ("was", "before pruning"),
        ("label", "label"),
        ("drivers", "drivers (share of the drive)"),
        ("inhibitors", "inhibitors (share of the inhibition)"),
        ("copies_input", "copies its main driver"),
        ("terms_for_r90", "terms for r 0.9"),
    ],
    "conv3": [
        ("was", "before pruning"),
        ("label", "label"),
        ("bursts", "bursts"),
        ("drivers", "drivers"),
        ("position_index", "position ω²"),
        ("pattern_index", "pattern ω²"),
        ("interaction_index", "pattern × position ω²"),
        ("terms_for_r90", "terms for r 0.9"),
    ],
    "fc": [
        ("was", "before pruning"),
        ("label", "label"),
        ("drivers", "drivers"),
        ("inhibitors", "inhibitors"),
        ("terms_for_r90", "terms for r 0.9"),
    ],
}


def handnet_intros(labels: dict) -> dict[str, str]:
    """A HandNet page's section introductions (its explanation from its parameters, HandNet.explain,
    instead of fitted labels), worded from the net's pooling so that they hold for any cell_pixels
    and final_pool."""
    size, cell, final_pool = labels["grid_size"], labels["cell_pixels"], labels["final_pool"]
    if final_pool == 1:
        read = "conv3 units (each unit's maximum over the image): its recipe, every nonzero term."
    else:
        regions = ", ".join(REGION_NAMES[final_pool])
        read = (
            f"conv3 units' maxima in {final_pool}x{final_pool} image regions ({regions}): its recipe, every nonzero "
            "term, each reading one unit in one region."
        )
    return {
        "conv1": "Each conv1 kernel is a parametric line or edge (angle θ counter-clockwise from the horizontal, "
        "width σ, offset, amplitude); each sentence is read off these parameters, nothing is fitted to data.",
        "conv3": f"Each conv3 grid ({size}x{size} cells of {cell}x{cell} pixels) is a sum of Gaussian bursts on the "
        f"conv1 maps max-pooled in {cell}x{cell} blocks: a burst at a clock position (12 o'clock up, distance in "
        "grid cells) picks where that conv1 pattern must lie. Every burst is listed.",
        "fc": f"Each digit's score is one weighted sum of {read}",
    }


HANDNET_COLUMNS = {
    "conv1": [
        ("sentence", "explanation"),
        ("pattern", "pattern"),
        ("sigma", "σ"),
        ("offset", "offset"),
        ("amplitude", "amplitude"),
        ("bias", "bias"),
    ],
    "conv3": [
        ("label", "label"),
        ("sentence", "bursts"),
        ("position_index", "position index"),
        ("pattern_index", "pattern index"),
    ],
    "fc": [("label", "recipe"), ("bias", "bias")],
}
