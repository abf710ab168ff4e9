"""How much of the net its labels reproduce (claims.json's `fidelity` and `label_net`):

- per layer, the median fidelity of the printed labels next to two nulls: the same labels run on
  the other units of the layer (shuffled) and the untrained nets' labels run on those nets;
- the description length (terms a label needs for r 0.9) and the curve of fidelity against terms;
- the label net: every conv unit replaced by its label at once, its accuracy and its agreement with
  the real net's predictions, for labels of k terms (docs/measures.md, "Fidelity").
- the class selectivity of fc4's units next to the untrained nets'.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from convdissect.analysis.selectivity import selectivity_index
from convdissect.dissect.measure import Measurements
from convdissect.dissect.programs import CONV1_TERM_NUMBERS, CURVE_TERMS, LayerPrograms, label_net

# Label-net lengths: k terms per conv2/conv3 unit; the labels reaching these fidelities on the fit images.
LABEL_NET_TERMS = (1, 2, 3, 5, 10, 20)
LABEL_NET_FIDELITIES = (0.95, 0.98, 0.99)


def json_median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]  # drop NaN (units that never vary)
    return round(statistics.median(values), 4) if values else None


def _sd(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return round(statistics.stdev(values), 4) if len(values) > 1 else None


def curve_at(programs: LayerPrograms, terms: int) -> float | None:
    """Median over units of the fidelity of their first `terms` terms (all of them where a unit has fewer)."""
    return json_median([float(u.curve[min(terms, len(u.curve)) - 1]) for u in programs.units if len(u.curve)])


def layer_fidelity(programs: LayerPrograms, untrained: list[LayerPrograms]) -> dict:
    """One layer's fidelity record: medians of the printed labels, their nulls, the description length."""
    fidelity = [u.fidelity for u in programs.units]
    shuffled = [u.shuffled for u in programs.units]
    untrained_medians = [json_median([u.fidelity for u in p.units]) for p in untrained]
    r90 = [u.terms_for_r90 for u in programs.units if len(u.curve)]
    record = {
        "median": json_median(fidelity),
        "shuffled": json_median(shuffled),
        "shuffled_sd": _sd(shuffled),
        "untrained": json_median(untrained_medians),
        "untrained_sd": _sd(untrained_medians),
        "median_terms": json_median([float(u.printed) for u in programs.units]),
    }
    record["median_terms_for_r90"] = json_median([float(n) for n in r90 if n is not None])
    record["units_never_r90"] = sum(n is None for n in r90)
    record["curve"] = {str(t): curve_at(programs, t) for t in CURVE_TERMS} | {
        "all": json_median([float(u.curve[-1]) for u in programs.units if len(u.curve)])
    }
    gap = (record["median"] or 0.0) - (record["shuffled"] or 0.0)
    record["above_shuffled"] = bool(record["median"] is not None and gap > (record["shuffled_sd"] or 0.0))
    return record


def fidelity_record(m: Measurements, untrained: list[Measurements]) -> dict:
    """claims.json's `fidelity`: {layer: layer_fidelity} for every conv layer."""
    return {layer: layer_fidelity(p, [u.programs[layer] for u in untrained]) for layer, p in m.programs.items()}


def class_selectivity_record(m: Measurements, untrained: list[Measurements]) -> dict:
    """claims.json's `class_selectivity`: {layer: the median class selectivity of its units next to
    the untrained nets' medians}, for the layers whose class means were measured (fc4)."""
    record = {}
    for layer, means in m.class_means.items():
        present = ~means[:, 0].isnan()  # digits absent from the images have no mean
        nulls = [json_median(selectivity_index(u.class_means[layer][present]).tolist()) for u in untrained]
        record[layer] = {
            "median": json_median(selectivity_index(means[present]).tolist()),
            "untrained": json_median(nulls),
            "untrained_sd": _sd(nulls),
        }
    return record


@torch.no_grad()
def label_net_record(net: nn.Module, m: Measurements, images: torch.Tensor, digits: torch.Tensor) -> dict:
    """claims.json's `label_net`: accuracy and agreement with the real net of the net run from its
    labels (conv1 as fitted kernels; conv2, conv3 with k terms per unit, the printed labels, the labels
    reaching a fidelity on the fit images, or every term), and `terms`: how many terms a reader reads."""
    images, digits = images.to(next(net.parameters()).device), digits.to(next(net.parameters()).device)
    real = net(images).argmax(dim=1)
    lengths = {str(k): {"terms": k} for k in LABEL_NET_TERMS} | {"printed": {}}
    lengths |= {f"r{r}": {"fidelity": r} for r in LABEL_NET_FIDELITIES} | {"all": {"terms": 10**9}}
    record = {"images": len(images), "real_accuracy": round(float((real == digits).float().mean()), 4)}
    inner = [p for layer, p in m.programs.items() if layer != "conv1"]
    for name, length in lengths.items():
        predicted = label_net(net, m.programs, **length)(images).argmax(dim=1)
        record[name] = {
            "accuracy": round(float((predicted == digits).float().mean()), 4),
            "agreement": round(float((predicted == real).float().mean()), 4),
            "terms": sum(m.programs["conv1"].lengths()) + sum(sum(p.lengths(**length)) for p in inner),
            "numbers": label_net_numbers(net, m.programs, length),
        }
    return record


def label_net_numbers(net: nn.Module, programs: dict[str, LayerPrograms], length: dict) -> int:
    """Numbers a reader reads to run the label net (the HandNet frontier's x axis): conv1's fitted
    kernels, the weights each label keeps and one bias per unit (the left-out inputs' mean maps
    are the images' own, not numbers of the net), and every parameter of the layers not labelled."""
    numbers = sum(sum(CONV1_TERM_NUMBERS[: u.printed]) + 1 for u in programs["conv1"].units)
    for layer, p in programs.items():
        if layer != "conv1":
            numbers += int(p.masks(getattr(net, layer).weight.shape, p.lengths(**length)).sum()) + len(p.units)
    unlabelled = [module for name, module in net.named_children() if name not in programs]
    return numbers + sum(param.numel() for module in unlabelled for param in module.parameters())
