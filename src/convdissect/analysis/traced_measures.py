"""The measures of any ConvNet's traced layers (convdissect.analysis.traced), per layer, each unit's
label a program (analysis.unit_programs) fitted on the fit images' trace and scored on the held-out
images' trace:

- the first conv (one input channel): its kernels fitted by the line/edge family at their own size;
  its label the fitted line/edge, the brightness and a residual line/edge (least-squares gains);
- every later conv: the signed, blank-subtracted contributions of its inputs (summed over the cells
  where the unit's output survives its nonlinearity: TracedLayer.surviving); its label the bursts of
  its grids, strongest first;
- every Linear: the contributions of its source's channels (a flattened conv map: a block of
  positions per channel); its label those blocks, strongest first; the last one's class selectivity.
Each label's fidelity comes with a shuffled null (the other units' labels run on the unit).
docs/own_net.md defines each; docs/measures.md the measures they reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convdissect.analysis.contributions import SignedContributions, masked_contributions
from convdissect.analysis.fidelity import layer_records
from convdissect.analysis.fits import LineFit, fit_lines
from convdissect.analysis.selectivity import PositionPattern, position_pattern, response_class_means, selectivity_index
from convdissect.analysis.traced import TracedLayer
from convdissect.analysis.unit_programs import (
    MAX_PRINTED,
    LayerPrograms,
    conv_programs,
    first_conv_programs,
    linear_programs,
)
from convdissect.conventions import unit_name

# A later conv's label is capped as the SimpleConvNet's conv3 (its terms being bursts too); a Linear's as fc4.
CONV_CAP = MAX_PRINTED["conv3"]


@dataclass
class LayerMeasures:
    """Every number dissect reports about one traced layer (tensors on the CPU)."""

    traced: TracedLayer
    input_names: list[str]  # the name of each input channel (or block of a Linear's inputs)
    fit: LineFit | None = None  # the first conv: its kernels as lines/edges
    contributions: SignedContributions | None = None  # later convs and Linears
    programs: LayerPrograms | None = None  # every measured layer: each unit's label as a program
    position_pattern: PositionPattern | None = None  # later convs: omega² of position, pattern, interaction
    selectivity: torch.Tensor | None = None  # [Cout] the last Linear: class selectivity
    class_means: torch.Tensor | None = None  # [10, Cout]

    @property
    def name(self) -> str:
        return self.traced.name

    @property
    def fidelity(self) -> torch.Tensor | None:
        """[Cout] each unit's printed label's fidelity on the scored images."""
        return None if self.programs is None else torch.tensor([u.fidelity for u in self.programs.units])

    @property
    def shuffled(self) -> torch.Tensor | None:
        """[Cout] the other units' labels' mean fidelity on each unit (NaN: not computed)."""
        return None if self.programs is None else torch.tensor([u.shuffled for u in self.programs.units])


def first_conv(t: TracedLayer) -> bool:
    return t.is_conv and t.layer.in_channels == 1


def measurable_conv(t: TracedLayer) -> bool:
    """A conv whose contributions the measures compute: zero padded by a number of cells (grouped ones
    are traced ungrouped; a dilated one's grids are read at its dilated offsets)."""
    return t.layer.padding_mode == "zeros" and t.layer.padding != "same"


def conv_contributions(t: TracedLayer) -> SignedContributions:
    y_blank = t.layer(t.blank_inputs)
    mask = t.surviving()
    return masked_contributions(t.name, t.layer, t.inputs, t.blank_inputs, t.outputs, y_blank, mask)


def linear_contributions(t: TracedLayer, channels: int) -> SignedContributions:
    """A Linear's contributions with its in_features grouped into `channels` blocks (cells [Cout, C, block, 1])."""
    weight = t.layer.weight.detach()
    mask = t.surviving()  # [N, Cout]
    n = len(t.inputs)
    cells = (mask.T @ (t.inputs - t.blank_inputs)) * weight / n  # [Cout, F]
    y_blank = t.layer(t.blank_inputs)
    baseline = (mask * y_blank).sum(dim=0) / n
    output = (mask * t.outputs).sum(dim=0) / n
    return SignedContributions(t.name, cells.reshape(len(cells), channels, -1, 1).cpu(), baseline.cpu(), output.cpu())


def input_names(t: TracedLayer, channels: int) -> list[str]:
    """Input j's name where the trace shows where it comes from (traced.ChannelNames), else 'LAYER.in_j'."""
    if t.input_channels is not None and len(t.input_channels) == channels:
        return t.input_channels
    return [unit_name(f"{t.name}.in", j + 1) for j in range(channels)]


def source_channels(t: TracedLayer) -> int:
    """How many channels a layer's inputs hold: a Linear reading a flattened map of C channels, C blocks."""
    width = t.inputs.shape[1]
    size = len(t.input_channels) if t.input_channels is not None else None
    return size if size and width % size == 0 else width


@torch.no_grad()
def measure_layers(
    traced: list[TracedLayer],
    scored: list[TracedLayer],
    digits: torch.Tensor | None = None,
    shuffled: bool = True,
    ablation: str = "mean",
) -> list[LayerMeasures]:
    """LayerMeasures of every layer traced on the fit images (`traced`, whose `digits` are known), its
    labels scored on the same layers traced on held-out images (`scored`); `shuffled` adds each label's
    shuffled null; `ablation` is what an input a label leaves out reads (analysis.fidelity.ABLATIONS)."""
    measured = []
    for i, (t, s) in enumerate(zip(traced, scored, strict=True)):
        channels = source_channels(t)
        m = LayerMeasures(t, input_names(t, channels))
        if t.is_conv and first_conv(t) and i == 0:
            with torch.enable_grad():  # the fit's refinement is a gradient ascent
                m.fit = fit_lines(t.layer.weight.detach()[:, 0])
            m.programs = first_conv_programs(t.name, t.layer, 1, m.fit, t.inputs, s.inputs, shuffled, t.activation)
        elif t.is_conv and measurable_conv(t):
            m.contributions = conv_contributions(t)
            recorded = (t.inputs, t.outputs), (s.inputs, s.outputs)
            fit, held_out = layer_records(t.name, t.layer, 1, *recorded, ablation, t.activation)
            m.programs = conv_programs(t.name, m.contributions, fit, held_out, True, CONV_CAP, shuffled)
        elif not t.is_conv:
            m.contributions = linear_contributions(t, channels)
            inputs = (t.inputs, s.inputs, t.blank_inputs)
            activation = t.activation if t.activation is not None else nn.ReLU()
            m.programs = linear_programs(t.name, t.layer, activation, inputs, channels, shuffled, ablation)
        if not t.is_conv and i == len(traced) - 1 and digits is not None:
            m.class_means = response_class_means(t.outputs, digits.to(t.outputs.device)).cpu()
            m.selectivity = selectivity_index(m.class_means)
        measured.append(m)
    return measured


def sweep_position_pattern(net: nn.Module, measured: list[LayerMeasures]) -> None:
    """Every later conv's omega² of position, pattern and their interaction on the stroke sweep
    (analysis.selectivity.position_pattern), its responses read by a hook on the layer's output (on
    its folded BatchNorm's, when folded)."""
    for m in measured:
        if m.traced.is_conv and m.contributions is not None:
            m.position_pattern = position_pattern(net, m.traced.folded or m.name)
