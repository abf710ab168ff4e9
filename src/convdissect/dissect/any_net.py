"""Any ConvNet other than ours, dissected through forward hooks (convdissect.analysis.traced): every
Conv2d and Linear labelled from its measures (analysis.traced_measures), each label a program whose
fidelity is reported per layer next to two nulls (the other units' labels run on each unit; an
untrained copy of the net labelled and scored the same way), later convs' omega² of position and
pattern, and a report of the labels and superstimuli per layer and the first conv's kernels beside their
fitted patterns (convdissect.dissection draws it). docs/own_net.md says what each number is.
"""

from __future__ import annotations

import math

import torch

from convdissect.analysis.selectivity import OrientationTuning, PositionPattern, orientation_selectivity
from convdissect.analysis.traced_measures import LayerMeasures
from convdissect.conventions import orientation_name, unit_name
from convdissect.dissect.claims import CLAIMS
from convdissect.dissect.label_scores import json_median
from convdissect.dissect.labels import (
    burst_entry,
    burst_phrase,
    digits_phrase,
    inactive,
    json_number,
    program_fields,
    short_pattern,
    signed_phrase,
    with_fidelity,
)

ANY_NET = "any_convnet"  # labels.json's "net" of a net dissected through forward hooks
# The untrained copy's seed (re-initialised by each module's reset_parameters), far from training seeds.
UNTRAINED_SEED = 1000
# A label's digits: those the last Linear's unit responds to most.
PREFERRED_DIGITS = 2
NOT_APPLICABLE = "not applicable: the article's claims are about the SimpleConvNet's conv1 -> conv2 -> conv3"


def _number(value, digits: int = 3):
    return json_number(value, digits)


def _median(values: torch.Tensor | None) -> float | None:
    return None if values is None else json_median(values.tolist())


def ranked(m: LayerMeasures, k: int) -> tuple[list[dict], list[dict]]:
    """labels.json's `drivers` and `inhibitors` of unit k: every input with its share, strongest first."""
    c = m.contributions
    return tuple(
        [{"input": m.input_names[j], "share": _number(share)} for j, share in shares]
        for shares in (c.drivers(k), c.inhibitors(k))
    )


def first_conv_fields(m: LayerMeasures, k: int, tuning: OrientationTuning | None) -> dict:
    """The first conv's unit k: its program's terms (the fitted pattern with R², then brightness and a
    residual line/edge where needed), and the stroke orientation it responds to most."""
    fit, program, terms = m.fit, m.programs.units[k], m.programs.texts[k]
    pattern, r2 = fit.labels()[k], float(fit.r2[k])
    fields = {
        "pattern": pattern,
        "label_terms": terms,
        "kind": fit.kind[k],
        "side": fit.side[k],
        "orientation_deg": round(float(fit.theta_deg[k]), 2),
        "fit_r2": _number(r2, 4),
    }
    text = f"{' + '.join([pattern, *terms[1:]])} (R² {r2:.2f})"
    if tuning is not None:
        curves = next(iter(tuning.responses.values()))
        preferred = float(tuning.angles_deg[curves[:, k].argmax()])
        selectivity = float(orientation_selectivity(curves[:, k : k + 1], tuning.angles_deg)[0])
        fields |= {"tuned_orientation_deg": preferred, "orientation_selectivity": _number(selectivity)}
        text += f", tuned to {orientation_name(preferred)} strokes (selectivity {selectivity:.2f})"
    return {"label": with_fidelity(inactive(program) or text, program), **fields, **program_fields(program)}


def burst_fields(m: LayerMeasures, k: int, patterns: dict[str, str]) -> dict:
    """A later conv's unit k: the bursts its printed label keeps, in clock notation, strongest first."""
    program, weight = m.programs.units[k], m.traced.layer.weight.detach().cpu()[k]
    sources = [{"name": name, "pattern": patterns.get(name, name)} for name in m.input_names]
    bursts = [burst_entry(t, weight[t.input], sources[t.input]) for t in program.terms[: program.printed]]
    drivers, inhibitors = ranked(m, k)
    text = ", ".join(burst_phrase(b, i == 0) for i, b in enumerate(bursts)) if drivers else "silent on the images"
    return {
        "label": with_fidelity(inactive(program) or text, program),
        "bursts": bursts,
        "drivers": drivers,
        "inhibitors": inhibitors,
        **program_fields(program),
    }


def linear_fields(m: LayerMeasures, k: int, patterns: dict[str, str]) -> dict:
    """A Linear's unit k: the inputs (source channels) its printed label keeps, with their shares."""
    program = m.programs.units[k]
    drivers, inhibitors = ranked(m, k)
    kept = list(dict.fromkeys(m.input_names[t.input] for t in program.terms[: program.printed]))
    text = signed_phrase(drivers, inhibitors, kept, patterns)
    fields = {"drivers": drivers, "inhibitors": inhibitors, "kept_inputs": kept, **program_fields(program)}
    return {"label": with_fidelity(inactive(program) or text, program), **fields}


OMEGA_SQUARED = ("position", "pattern", "interaction")


def omega_fields(pp: PositionPattern, k: int) -> dict:
    """labels.json's omega² of position, pattern and their interaction on the stroke sweep."""
    return {f"{what}_index": _number(getattr(pp, f"{what}_index")[k], 4) for what in OMEGA_SQUARED}


def omega_medians(m: LayerMeasures | None) -> dict | None:
    pp = None if m is None else m.position_pattern
    return None if pp is None else {what: _median(getattr(pp, f"{what}_index")) for what in OMEGA_SQUARED}


def class_fields(m: LayerMeasures, k: int) -> dict:
    means = m.class_means[:, k].nan_to_num(-math.inf)
    preferred = means.argsort(descending=True)[:PREFERRED_DIGITS].tolist()
    classes = {"preferred_digits": preferred, "class_selectivity": _number(m.selectivity[k])}
    return {**classes, "label_digits": digits_phrase(classes)}


def describe(measured: list[LayerMeasures], tuning: OrientationTuning | None = None) -> list[dict]:
    """labels.json's units of every traced layer, in call order; `tuning`: the first conv's curves."""
    units, patterns = [], {}
    for m in measured:
        t = m.traced
        for k in range(t.outputs.shape[1]):
            unit = {"layer": t.name, "index": k + 1, "name": unit_name(t.name, k + 1), "nonlinearity": t.nonlinearity}
            if m.fit is not None:
                unit |= first_conv_fields(m, k, tuning)
                patterns[unit["name"]] = short_pattern(unit["pattern"])
            elif m.contributions is not None:
                unit |= (burst_fields if t.is_conv else linear_fields)(m, k, patterns)
            else:
                unit["label"] = "not measured (a conv padded other than by zeros)"
            if m.position_pattern is not None:
                unit |= omega_fields(m.position_pattern, k)
            if m.selectivity is not None:
                unit |= class_fields(m, k)
                digits = unit.pop("label_digits")
                unit["label"] += digits if unit.get("activity", "varies") == "varies" else ""
            units.append(unit)
    return units


def claims_record(measured: list[LayerMeasures], untrained: list[LayerMeasures], seed: int) -> dict:
    """claims.json: per measured layer the median fidelity next to its two nulls, per later conv the median
    omega² of position, pattern and interaction next to the untrained copy's; the article's claims not applicable."""
    null = {m.name: m for m in untrained}
    fidelity = {
        m.name: {
            "median": _median(m.fidelity),
            "shuffled": _median(m.shuffled),
            "untrained": _median(null[m.name].fidelity) if m.name in null else None,
            "units": len(m.fidelity),
        }
        for m in measured
        if m.fidelity is not None
    }
    omega = {
        m.name: omega_medians(m) | {"untrained": omega_medians(null.get(m.name))}
        for m in measured
        if m.position_pattern is not None
    }
    return {
        "net": ANY_NET,
        "fidelity": fidelity,
        "position_pattern": omega,
        "untrained_seed": seed,
        "article_claims": {str(number): {"claim": text, "verdict": NOT_APPLICABLE} for number, text in CLAIMS.items()},
    }
