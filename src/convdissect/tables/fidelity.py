"""`convdissect tables fidelity DIRS...`: how much of each net its labels reproduce.

Every claims.json below DIRS (dissect's output, e.g. RUN/dissect or outputs/dissect) is one net: per
layer, the median fidelity of its printed labels next to both nulls (the same labels on the layer's
other units; untrained nets' labels on those nets), the printed terms and the terms a label needs for
r 0.9; then the label net (every unit run from its label at once): agreement with the real net,
accuracy and the terms a reader reads, per label length. Mean ± sd over the nets (docs/measures.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convdissect.errors import UserInputError
from convdissect.tables.common import existing_dirs, mean_sd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", nargs="+", help="dirs holding dissect outputs (claims.json), searched recursively")


def fidelity_table(claims: list[dict]) -> str:
    """Markdown: per layer, the printed labels' median fidelity, its nulls and the terms; then the label net."""
    rows = [
        "| layer | median fidelity | shuffled labels | untrained nets | printed terms | terms for r 0.9 |",
        "|---|---|---|---|---|---|",
    ]
    for layer in claims[0]["fidelity"]:
        records = [c["fidelity"][layer] for c in claims]
        rows.append(
            f"| {layer} | {mean_sd([r['median'] for r in records], 2)} | {mean_sd([r['shuffled'] for r in records], 2)} "
            f"| {mean_sd([r['untrained'] for r in records], 2)} | {mean_sd([r['median_terms'] for r in records], 1)} "
            f"| {mean_sd([r.get('median_terms_for_r90') for r in records], 1)} |"
        )
    net = claims[0]["label_net"]
    lengths = [k for k, v in net.items() if isinstance(v, dict) and all(k in c["label_net"] for c in claims)]
    rows += ["", "| label net | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for what, digits, scale in (("agreement", 1, 100), ("accuracy", 1, 100), ("terms", 0, 1), ("numbers", 0, 1)):
        if all(what in c["label_net"][k] for c in claims for k in lengths):  # numbers: since 2026-12-05
            cells = [mean_sd([c["label_net"][k][what] for c in claims], digits, scale) for k in lengths]
            rows.append(f"| {what}{' (%)' if scale > 1 else ''} | " + " | ".join(cells) + " |")
    selective = [c["class_selectivity"] for c in claims if "class_selectivity" in c]
    if len(selective) == len(claims):
        rows += ["", "| class selectivity | median over units | untrained nets |", "|---|---|---|"]
        for layer in selective[0]:
            records = [s[layer] for s in selective]
            rows.append(
                f"| {layer} | {mean_sd([r['median'] for r in records], 2)} | {mean_sd([r['untrained'] for r in records], 2)} |"
            )
    return "\n".join(rows)


def render(args: argparse.Namespace) -> str:
    files = sorted(f for d in existing_dirs(args.dirs, "DIRS") for f in Path(d).rglob("claims.json"))
    claims = [c for c in (json.loads(f.read_text()) for f in files) if "fidelity" in c]
    if not claims:
        raise UserInputError(
            f"{' '.join(args.dirs)}: no claims.json with labels' fidelity below (run dissect.py first)"
        )
    return f"{len(claims)} nets: " + ", ".join(str(f.parent) for f in files) + "\n\n" + fidelity_table(claims)
