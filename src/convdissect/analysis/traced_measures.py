"""The measures of any ConvNet's traced layers (convdissect.analysis.traced), per layer:

- the first conv (one input channel): its kernels fitted by the line/edge family at their own size;
- every later conv: the signed, blank-subtracted contributions of its inputs (summed over the cells
  where the unit's output is positive), the inputs its label names (drivers and inhibitors), and the
  label's fidelity: the unit rebuilt from those inputs only, every other input at its mean map (or
  another image's inputs: analysis.fidelity), scored against the real unit; the same with another
  unit's label (shuffled);
- every Linear: the contributions of its source's channels (a flattened conv map: a block of
  positions per channel); the last one's class selectivity.
docs/own_net.md defines each; docs/measures.md the measures they reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convdissect.analysis.contributions import SignedContributions, masked_contributions
from convdissect.analysis.fidelity import LayerRecord, label_fidelity, reference_inputs
from convdissect.analysis.fits import LineFit, fit_lines
from convdissect.analysis.selectivity import response_class_means, selectivity_index
from convdissect.analysis.traced import TracedLayer
from convdissect.conventions import unit_name

# A label names its strongest drivers until they hold this share of the unit's drive, at most MAX_DRIVERS;
# and its inhibitors holding at least MIN_INHIBITION of its inhibition, at most MAX_INHIBITORS.
DRIVE_SHARE = 0.8
MAX_DRIVERS = 3
MIN_INHIBITION = 0.25
MAX_INHIBITORS = 2


@dataclass
class LayerMeasures:
    """Every number dissect reports about one traced layer (tensors on the CPU)."""

    traced: TracedLayer
    input_names: list[str]  # the name of each input channel (or block of a Linear's inputs)
    fit: LineFit | None = None  # the first conv: its kernels as lines/edges
    contributions: SignedContributions | None = None  # later convs and Linears
    named: list[list[int]] | None = None  # later convs and Linears: the inputs each unit's label names (0-based)
    fidelity: torch.Tensor | None = None  # [Cout] later convs: the label's fidelity
    shuffled: torch.Tensor | None = None  # [Cout] another unit's label's fidelity
    selectivity: torch.Tensor | None = None  # [Cout] the last Linear: class selectivity
    class_means: torch.Tensor | None = None  # [10, Cout]

    @property
    def name(self) -> str:
        return self.traced.name


def first_conv(t: TracedLayer) -> bool:
    return t.is_conv and t.layer.in_channels == 1


def measurable_conv(t: TracedLayer) -> bool:
    """A conv whose contributions the measures compute: ungrouped, undilated, zero padded."""
    conv = t.layer
    return conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros" and conv.padding != "same"


def conv_contributions(t: TracedLayer) -> SignedContributions:
    y_blank = t.layer(t.blank_inputs)
    mask = (t.outputs > 0).to(t.outputs.dtype)
    return masked_contributions(t.name, t.layer, t.inputs, t.blank_inputs, t.outputs, y_blank, mask)


def linear_contributions(t: TracedLayer, channels: int) -> SignedContributions:
    """A Linear's contributions with its in_features grouped into `channels` blocks (cells [Cout, C, block, 1])."""
    weight = t.layer.weight.detach()
    mask = (t.outputs > 0).to(t.outputs.dtype)  # [N, Cout]
    n = len(t.inputs)
    cells = (mask.T @ (t.inputs - t.blank_inputs)) * weight / n  # [Cout, F]
    y_blank = t.layer(t.blank_inputs)
    baseline = (mask * y_blank).sum(dim=0) / n
    output = (mask * t.outputs).sum(dim=0) / n
    return SignedContributions(t.name, cells.reshape(len(cells), channels, -1, 1).cpu(), baseline.cpu(), output.cpu())


def named_inputs(c: SignedContributions, k: int) -> list[int]:
    """The inputs unit k's label names: its strongest drivers, then its strong inhibitors."""
    drivers, held = [], 0.0
    for j, share in c.drivers(k)[:MAX_DRIVERS]:
        if held >= DRIVE_SHARE:
            break
        drivers.append(j)
        held += share
    inhibitors = [j for j, share in c.inhibitors(k)[:MAX_INHIBITORS] if share >= MIN_INHIBITION]
    return drivers + inhibitors


def label_masks(conv: torch.nn.Conv2d, labels: list[list[int]]) -> torch.Tensor:
    """One mask [len(labels), Cin, kh, kw] per label: all cells of the inputs it names."""
    masks = torch.zeros(len(labels), *conv.weight.shape[1:])
    for m, inputs in enumerate(labels):
        masks[m, inputs] = 1.0
    return masks


def conv_fidelity(t: TracedLayer, labels: list[list[int]], units: list[int], ablation: str = "mean") -> torch.Tensor:
    """[len(units)] r of each unit units[i] rebuilt from the inputs labels[i] names (the others at their
    mean map over the images, or another image's inputs: `ablation`), against the real unit; both
    ReLU'd, each cell's mean over the images removed."""
    conv = t.layer
    mean = t.inputs.mean(dim=0)
    reference = reference_inputs(t.inputs, mean, ablation)
    record = LayerRecord(t.name, conv, 1, t.inputs, mean, t.outputs.relu(), reference)
    masks = label_masks(conv, labels)
    return torch.stack([label_fidelity(record, k, masks[i : i + 1])[0] for i, k in enumerate(units)]).cpu()


def input_names(t: TracedLayer, sizes: dict[str, int], channels: int) -> list[str]:
    """Input j is its source's unit (module path, 1-based channel); without a known source, 'LAYER.in_j'."""
    if t.source is not None and sizes.get(t.source) == channels:
        return [unit_name(t.source, j + 1) for j in range(channels)]
    return [unit_name(f"{t.name}.in", j + 1) for j in range(channels)]


def source_channels(t: TracedLayer, sizes: dict[str, int]) -> int:
    """How many channels a layer's inputs hold: a Linear reading a flattened map of C channels, C blocks."""
    width = t.inputs.shape[1]
    size = sizes.get(t.source) if t.source is not None else None
    return size if size and width % size == 0 else width


@torch.no_grad()
def measure_layers(
    traced: list[TracedLayer],
    digits: torch.Tensor | None = None,
    seed: int = 0,
    shuffled: bool = True,
    ablation: str = "mean",
) -> list[LayerMeasures]:
    """LayerMeasures of every traced layer; the shuffled labels are a fixed permutation per layer (seed);
    `ablation` is what an input a label leaves out reads (analysis.fidelity.ABLATIONS)."""
    sizes = {t.name: t.outputs.shape[1] for t in traced}
    measured = []
    for i, t in enumerate(traced):
        channels = source_channels(t, sizes)
        m = LayerMeasures(t, input_names(t, sizes, channels))
        if t.is_conv and first_conv(t) and i == 0:
            with torch.enable_grad():  # the fit's refinement is a gradient ascent
                m.fit = fit_lines(t.layer.weight.detach()[:, 0])
        elif t.is_conv and measurable_conv(t):
            m.contributions = conv_contributions(t)
            m.named = [named_inputs(m.contributions, k) for k in range(sizes[t.name])]
            units = list(range(sizes[t.name]))
            m.fidelity = conv_fidelity(t, m.named, units, ablation)
            if shuffled and len(units) > 1:
                m.shuffled = conv_fidelity(t, [m.named[j] for j in shifted(len(units), seed + i)], units, ablation)
        elif not t.is_conv:
            m.contributions = linear_contributions(t, channels)
            m.named = [named_inputs(m.contributions, k) for k in range(sizes[t.name])]
        if not t.is_conv and i == len(traced) - 1 and digits is not None:
            m.class_means = response_class_means(t.outputs, digits.to(t.outputs.device)).cpu()
            m.selectivity = selectivity_index(m.class_means)
        measured.append(m)
    return measured


def shifted(n: int, seed: int) -> list[int]:
    """A fixed permutation of range(n) moving every unit (a random order, each taking the next one's)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    partner = [0] * n
    for a, b in zip(order, order[1:] + order[:1]):
        partner[a] = b
    return partner
