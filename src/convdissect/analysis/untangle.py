"""A basis that untangles conv3: linear maps from conv3's pooled outputs to new units that each
respond to one pattern at one position (docs/article_method.md). `untangle` fits each method
(analysis/untangle_fits.py) and measures every set of units (analysis/untangle_measures.py);
`unit_label` names a unit by its top interaction cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convdissect.analysis.selectivity import PositionPattern, position_pattern
from convdissect.analysis.untangle_fits import METHODS, PROBE_METHODS, fit_basis, fit_probe_basis
from convdissect.analysis.untangle_measures import (
    Units,
    conv3_cell_px,
    interaction_cells,
    readout_accuracy,
    units_on_probes,
    window_radius,
)
from convdissect.conventions import CENTRE, clock_from_xy, line_phrase

RAW = "conv3 (raw)"


@dataclass
class Untangled:
    sweep: PositionPattern  # the probes (patterns, positions)
    units: list[Units]  # conv3 raw, fc4, (raw on one replicate, with a probe method), then one per method


@torch.no_grad()
def untangle(
    net: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    methods=METHODS + PROBE_METHODS,
    seed: int = 0,
    sweep: PositionPattern | None = None,
) -> Untangled:
    """Fit each method on conv3's pooled outputs of the train images (a probe method on each
    replicate of the probe sweep in turn, measured on the others) and measure every set of units:
    top-cell share and share in a conv3 cell on the probe sweep (conv3's position_pattern, measured
    here unless given), readout accuracy from train to test images."""
    net.eval()
    sweep = sweep or position_pattern(net, "conv3")
    radius = window_radius(sweep.positions, conv3_cell_px(net))
    # conv3's pooled output is max-pool(ReLU(conv3)) over its whole map: the ReLU'd sweep response
    pooled = sweep.responses.relu()  # [C, P, Q, R]
    cells = pooled.permute(1, 2, 3, 0)  # [P, Q, R, C]
    replicates = range(pooled.shape[-1])
    others = [[o for o in replicates if o != r] for r in replicates]  # where a fit on replicate r is measured
    train_x, test_x = net.features(train[0]).cpu(), net.features(test[0]).cpu()
    fc4 = net.fc4_act(net.fc4(cells)).permute(3, 0, 1, 2)
    fc4_train, fc4_test = (net.fc4_act(net.fc4(x)) for x in (train_x, test_x))
    raw_accuracy = readout_accuracy(train_x, train[1], test_x, test[1])
    units = [
        units_on_probes(RAW, pooled, radius, readout_accuracy=raw_accuracy),
        units_on_probes("fc4", fc4, radius, readout_accuracy=readout_accuracy(fc4_train, train[1], fc4_test, test[1])),
    ]
    if any(method in PROBE_METHODS for method in methods):  # the probe methods' reference: measured alike
        one = torch.cat([pooled[..., o] for o in others])
        units.append(units_on_probes(f"{RAW}, one replicate", one, radius, readout_accuracy=raw_accuracy))
    for method in methods:
        if method in PROBE_METHODS:
            fits = [fit_probe_basis(pooled[..., r], train_x, method, radius) for r in replicates]
            responses = torch.cat([basis(cells[:, :, o]).permute(3, 0, 1, 2) for basis, o in zip(fits, others)])
        else:
            fits = [fit_basis(train_x, method, seed)]
            responses = fits[0](cells).permute(3, 0, 1, 2)
        # every fit's readout; the worst one's gap to raw conv3 is the one reported
        accuracies = [readout_accuracy(basis(train_x), train[1], basis(test_x), test[1]) for basis in fits]
        units.append(
            units_on_probes(
                method,
                responses,
                radius,
                readout_accuracy=max(accuracies, key=lambda a: abs(a - raw_accuracy)),
                seconds=sum(basis.seconds for basis in fits),
            )
        )
    return Untangled(sweep, units)


def unit_label(sweep: PositionPattern, responses: torch.Tensor) -> str:
    """One line for a unit [P, Q, R]: its top interaction cell as 'horizontal line at 12 o'clock'."""
    e = interaction_cells(responses[None])[0]
    p, q = divmod(int(e.argmax()), e.shape[1])
    kind, angle = sweep.patterns[p]
    clock, distance = clock_from_xy(*sweep.positions[q].tolist())
    where = (
        "at the centre"
        if clock == CENTRE
        else (f"at {clock[:-3]} o'clock" if clock.endswith(":00") else f"at {clock}") + f", {distance:.0f} px"
    )
    return f"{line_phrase(angle) if kind == 'line' else f'{kind} {angle:.0f}°'} {where}"
