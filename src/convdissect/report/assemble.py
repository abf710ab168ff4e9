"""Every figure of the report for one net, drawn from its measurements and labels, one at a time."""

from __future__ import annotations

import logging
import math

import torch
from omegaconf import DictConfig

from convdissect.analysis.activations import input_layer, record, top_k
from convdissect.analysis.contributions import inner_contributions
from convdissect.analysis.projections import Projection
from convdissect.analysis.selectivity import OrientationTuning, PositionPattern, orientation_tuning, position_pattern
from convdissect.conventions import ANGLE_SYMBOLS, edge_side, orientation_bin, parse_unit_name, unit_name
from convdissect.data.mnist import MNIST_MEAN, MNIST_STD
from convdissect.data.probes import normalise, stroke_images
from convdissect.dissect.measure import Measurements
from convdissect.report import figures, untangle
from convdissect.report.choices import best_image, most_copying_conv2, strongest_on
from convdissect.report.figure import ReportFigure

log = logging.getLogger(__name__)


def raw(images: torch.Tensor) -> torch.Tensor:
    """Normalised images -> [0, 1] for display."""
    return (images * MNIST_STD + MNIST_MEAN).clamp(0.0, 1.0)


def probe_images() -> tuple[torch.Tensor, list[str]]:
    """Lines at 0/45/90/135° and one-sided edges (half-planes) on the four sides, raw: the
    article's synthetic inputs, with their row names."""
    angles = [0.0, 45.0, 90.0, 135.0]
    edge_angles = [0.0, 180.0, 90.0, 270.0]
    lines = stroke_images(angles, kind="line", raw=True)
    edges = stroke_images(edge_angles, kind="edge", thickness=math.inf, raw=True)
    names = [f"line {ANGLE_SYMBOLS[int(a)]}" for a in angles]
    names += [f"edge: {edge_side(a, 1.0)} side of {ANGLE_SYMBOLS[orientation_bin(a)]}" for a in edge_angles]
    return torch.cat([lines, edges]), names


# ---------------------------------------------------------------------------- the figures


def report_figures(
    net,
    m: Measurements,
    images: torch.Tensor,
    digits: torch.Tensor,
    labels: dict,
    stimuli: dict,
    projections: list[Projection],
    projected_digits: torch.Tensor,
    settings: DictConfig,
    seed: int = 0,
):
    """Yields (ReportFigure, matplotlib Figure) for every figure of the report, in page order.

    m: the net's measurements on images (normalised dissection images, labels `digits`), from
    which labels.json was written; projections were computed on the subsample whose labels are
    projected_digits; settings: cfg.report.
    """
    units = {layer: [u for u in labels["units"] if u["layer"] == layer] for layer in m.layers}

    yield from _conv1_figures(
        net, net.conv1.weight.detach()[:, 0].cpu(), images, digits, units["conv1"], stimuli, settings, seed, m.tuning
    )

    if "conv2" in m.layers:
        yield from superstimulus_figure("conv2", stimuli)
        yield from _conv2_figures(net, m, images, digits, labels, units["conv2"], settings)
    yield from _conv3_figures(
        net,
        net.conv3.weight.detach().cpu(),
        input_layer(net, "conv3"),
        images,
        units["conv3"],
        stimuli,
        settings,
        m.position_pattern["conv3"],
    )
    yield from _conv3_dissections(net, m, images, digits, labels, settings)
    yield untangle.report_figure(net, images, digits, m.position_pattern["conv3"])
    yield from superstimulus_figure("fc5", stimuli)
    yield from _projection_figures(projections, projected_digits)


def _conv2_figures(net, m: Measurements, images, digits, labels: dict, units: list[dict], settings: DictConfig):
    """conv2's dissection of its most copy-like channel, and its drivers and inhibitors."""
    unit = settings.conv2.unit or most_copying_conv2(labels)
    yield _dissection_figure(
        net,
        unit,
        settings.conv2.digit,
        images,
        digits,
        m.responses,
        labels,
        settings.dissection_rows,
        "the most copy-like conv2 channel" if settings.conv2.unit is None else "chosen in the config",
    )
    contributions = m.contributions["conv2"]
    yield (
        ReportFigure(
            "conv2",
            "conv2_redundancy",
            "conv2 drivers and inhibitors",
            f"Left: each conv2 channel's signed contributions (mean over {len(images)} images of what each conv1 channel "
            "adds to the channel's output that survives ReLU and max-pool, blank-image part subtracted), red: share of "
            "the drive, blue: share of the inhibition; circle: the main driver. Right: the main driver's share of the "
            "drive; green where the grid on it copies its pattern (copies_input in the table).",
        ),
        figures.redundancy(
            contributions.drive - contributions.inhibition,
            m.driver.tolist(),
            contributions.drive.amax(dim=1).tolist(),
            [u["copies_input"] for u in units],
            "conv2",
            "conv1",
            "conv2 drivers and inhibitors",
        ),
    )


def _conv3_dissections(net, m: Measurements, images, digits, labels: dict, settings: DictConfig):
    """One conv3 channel dissected on each of settings.conv3.digits."""
    first = settings.conv3.digits[0]
    unit = settings.conv3.unit or strongest_on(m.responses["conv3"], digits, "conv3", first)
    why = f"the conv3 channel most active on digit {first}" if settings.conv3.unit is None else "chosen in the config"
    for digit in settings.conv3.digits:
        yield _dissection_figure(net, unit, digit, images, digits, m.responses, labels, settings.dissection_rows, why)


def _projection_figures(projections: list[Projection], projected_digits: torch.Tensor):
    """PCA and t-SNE of input, conv3, fc4 and fc5, and the class separation per stage (none without projections)."""
    if not projections:
        return
    n = len(projections[0].pca)
    stages = [p.stage for p in projections]
    scores = [f"silhouette {p.silhouette:.2f}, kNN acc {p.knn_accuracy:.2f}" for p in projections]
    for method, caption in (
        ("pca", "PCA (the two axes' explained variance in each panel's title)"),
        ("tsne", "t-SNE (perplexity 30, PCA initialisation)"),
    ):
        points = [getattr(p, method) for p in projections]
        titles = [
            f"{s}" + (f"; var {p.explained[0]:.0%}+{p.explained[1]:.0%}" if method == "pca" else "")
            for s, p in zip(scores, projections)
        ]
        yield (
            ReportFigure(
                "fc",
                f"projections_{method}",
                f"{method.upper().replace('TSNE', 't-SNE')} of input, conv3, fc4, fc5",
                f"{caption} of {n} images, coloured by digit. The scores are measured in the full activation space.",
            ),
            figures.projection(
                points, projected_digits, stages, titles, method.replace("tsne", "t-SNE").replace("pca", "PCA")
            ),
        )
    yield (
        ReportFigure(
            "fc",
            "separation",
            "class separation per stage",
            f"Silhouette of the digit classes and 5-fold kNN accuracy (k=10) on the same {n} images.",
        ),
        figures.separation(
            stages, [p.silhouette for p in projections], [p.knn_accuracy for p in projections], "class separation"
        ),
    )


def handnet_figures(
    net, images: torch.Tensor, digits: torch.Tensor, labels: dict, stimuli: dict, settings: DictConfig, seed: int = 0
):
    """Yields the figures that apply to a HandNet (conv1 -> conv3 -> readout): conv1's kernels and
    conv3's burst grids as computed from their parameters, activations, tuning, position maps,
    top inputs and superstimuli. No dissections or projections (they need conv2 or fc4)."""
    units = {layer: [u for u in labels["units"] if u["layer"] == layer] for layer in ("conv1", "conv3")}
    with torch.no_grad():
        kernels, grids = net.conv1.kernels().cpu(), net.conv3.grids().cpu()
    yield from _conv1_figures(
        net, kernels, images, digits, units["conv1"], stimuli, settings, seed, orientation_tuning(net, ["conv1"])
    )
    yield from _conv3_figures(
        net, grids, "conv1", images, units["conv3"], stimuli, settings, position_pattern(net, "conv3")
    )
    yield from superstimulus_figure("readout", stimuli)


def _conv1_figures(
    net,
    grids: torch.Tensor,
    images: torch.Tensor,
    digits: torch.Tensor,
    units: list[dict],
    stimuli: dict,
    settings: DictConfig,
    seed: int,
    tuning: OrientationTuning,
):
    """conv1's figures from its 5x5 grids [C, 5, 5] and its units (labels.json entries)."""
    label_texts = [u["label"] for u in units]
    yield (
        ReportFigure(
            "conv1",
            "conv1_weights",
            "conv1 weight grids",
            "Each 5x5 grid on its own symmetric scale (red +, blue -), with its label.",
        ),
        figures.weight_grids(grids, [u["name"] for u in units], label_texts, "conv1 weights"),
    )
    yield from _conv1_activation_figures(net, images, digits, settings.n_activation_images, seed)
    yield (
        ReportFigure(
            "conv1",
            "conv1_tuning",
            "conv1 orientation tuning",
            "Response (max of the map) to a line through the centre at every 5°, averaged over sub-pixel offsets; "
            "dashed red: the fitted orientation. A second peak is the filter's secondary feature.",
        ),
        figures.tuning_curves(
            tuning.angles_deg,
            tuning.responses["conv1"],
            "conv1",
            [u["orientation_deg"] for u in units],
            "conv1 orientation tuning",
        ),
    )
    yield from superstimulus_figure("conv1", stimuli)


def _conv1_activation_figures(net, images: torch.Tensor, digits: torch.Tensor, n_images: int, seed: int):
    """conv1's maps on n_images random MNIST inputs and on the synthetic line and edge probes."""
    picked = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n_images]
    maps = record(net, images[picked], ["conv1"])["conv1"]
    yield (
        ReportFigure(
            "conv1",
            "conv1_activations_mnist",
            f"conv1 on {len(picked)} random MNIST inputs",
            "ReLU'd conv1 maps (sequential colours); each channel's column normalised separately, from 0 to its maximum.",
        ),
        figures.activation_maps(
            raw(images[picked]), maps, "conv1", [f"digit {int(d)}" for d in digits[picked]], "conv1 activations, MNIST"
        ),
    )
    probes, probe_names = probe_images()
    maps = record(net, normalise(probes), ["conv1"])["conv1"]
    yield (
        ReportFigure(
            "conv1",
            "conv1_activations_probes",
            "conv1 on synthetic lines and edges",
            "Lines at 0/45/90/135° (-, /, |, \\) and one-sided edges (half-planes; the row names the side of a stroke "
            "that an edge detector firing there detects). Each channel's column normalised separately.",
        ),
        figures.activation_maps(probes, maps, "conv1", probe_names, "conv1 activations, synthetic probes"),
    )


def _conv3_figures(
    net,
    weight: torch.Tensor,
    source: str,
    images: torch.Tensor,
    units: list[dict],
    stimuli: dict,
    settings: DictConfig,
    pp: PositionPattern,
):
    """conv3's figures but the dissections, from its grids [C3, C_source, 5, 5]."""
    yield from superstimulus_figure("conv3", stimuli)
    yield (
        ReportFigure(
            "conv3",
            "conv3_bursts",
            "conv3 grids with their bursts",
            f"Each conv3 channel's grid on the {source} channel of its strongest burst (own symmetric scale, red +, blue -); "
            "circles mark the bursts on that grid; below, all its bursts in clock notation with their inputs.",
        ),
        figures.bursts(weight, units, "conv3", source, "conv3 bursts"),
    )
    yield (
        ReportFigure(
            "conv3",
            "conv3_position_maps",
            "conv3 position selectivity",
            "A 7-pixel stroke of each orientation moved over the image in 2-pixel steps; each map is the channel's response "
            "to its preferred pattern at each position (x right, y up, pixels from the centre; own scale per map).",
        ),
        figures.position_maps(pp.responses.mean(dim=-1), pp.positions, pp.patterns, "conv3", "conv3 position maps"),
    )
    indices, values = top_k(net, images, "conv3", k=settings.top_k)
    yield (
        ReportFigure(
            "conv3",
            f"conv3_top{settings.top_k}",
            f"top-{settings.top_k} MNIST inputs per conv3 channel",
            f"Of the {len(images)} dissection images, the {settings.top_k} with the strongest response (after ReLU and max-pool), strongest left.",
        ),
        figures.top_inputs(raw(images), indices, values, "conv3", f"conv3: top-{settings.top_k} inputs"),
    )


def superstimulus_figure(layer: str, stimuli: dict, section: str | None = None, first: int | None = None):
    """The layer's superstimuli in the page's `section` (default: the layer's, `fc` for the classes of
    fc5 or a HandNet's readout), only its `first` units when given."""
    if layer not in stimuli:
        return
    images = stimuli[layer][:first]
    if section is None and layer in ("fc5", "readout"):  # the classes (a HandNet's readout)
        names = [f"{unit_name(layer, c + 1)}: digit {c}" for c in range(len(images))]
        section, what = "fc", f"every {layer} class (its log-softmax input)"
    else:
        names = [unit_name(layer, c + 1) for c in range(len(images))]
        every = len(images) == len(stimuli[layer])
        what = f"every {layer} channel" if every else f"each of the first {len(images)} {layer} units"
    yield (
        ReportFigure(
            section or layer,
            f"{layer}_superstimuli",
            f"{layer} superstimuli",
            f"The input that maximises {what}, by gradient ascent with jitter/scale/rotation and L2 + TV regularisation (raw, gray).",
        ),
        figures.superstimulus_grid(images, names, f"{layer} superstimuli"),
    )


def _dissection_figure(net, unit: str, digit: int, images, digits, resp, labels: dict, rows: int, why: str):
    layer = parse_unit_name(unit)[0]
    index = best_image(resp[layer], digits, unit, digit)
    source = input_layer(net, layer)
    input_labels = [u["label"] for u in labels["units"] if u["layer"] == source]
    dissected = inner_contributions(net, unit, images[index])
    shown = min(rows, len(input_labels))
    return (
        ReportFigure(
            layer,
            f"{unit}_dissection_digit{digit}",
            f"{unit} dissected on a digit {digit}",
            f"{unit} ({why}) on the digit-{digit} image that drives it most. Rows: the {shown} strongest {source} inputs j, "
            f"strongest last{'; the first row sums the weaker ones' if shown < len(input_labels) else ''}. "
            "a_j = x_j ∗ w_j, c_j = running sum (bias added in the last row), so c_last equals the real output y. "
            "Each column is normalised separately: x_j sequential; w_j, a_j, c_j, y diverging with symmetric limits (y on c's scale).",
        ),
        figures.dissection(dissected, raw(images[index]), input_labels, source, rows, f"{unit} on digit {digit}"),
    )


# ---------------------------------------------------------------------------- the page
