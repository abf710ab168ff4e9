"""The dissection report: every figure of the article for one net, as PNGs in the run dir, in
TensorBoard and on one HTML page (report.html) with sections conv1, conv2, conv3 and fc.

`report_figures` yields (ReportFigure, matplotlib Figure) pairs one at a time, so a figure is
drawn, saved and closed before the next one is built; `write_report` does the saving, logs every
figure to TensorBoard and writes the page with the label tables of labels.json."""

from __future__ import annotations

import html
import logging
from pathlib import Path

from tqdm.auto import tqdm

from convdissect.analysis.projections import Projection
from convdissect.dissect.any_net import ANY_NET
from convdissect.handnet.explanation import EXPLANATION_TITLES
from convdissect.report.figure import ReportFigure, save_figure
from convdissect.report.sections import HANDNET_COLUMNS, INTROS, SECTIONS, TABLE_COLUMNS, handnet_intros

log = logging.getLogger(__name__)


def write_report(
    figure_stream,
    labels: dict,
    projections: list[Projection],
    out_dir: Path,
    writer,
    dpi: int,
    header: str,
    claims: dict | None = None,
) -> Path:
    """Save each figure as <name>.png in out_dir and to TensorBoard (tag <section>/<name>), then
    write report.html; returns its path."""
    entries: list[ReportFigure] = []
    for entry, fig in tqdm(figure_stream, desc="figures", leave=False):
        image = save_figure(fig, out_dir / f"{entry.name}.png", dpi)
        writer.add_image(f"{entry.section}/{entry.name}", image, dataformats="HWC")
        entries.append(entry)
    path = out_dir / "report.html"
    path.write_text(page(entries, labels, projections, header, claims))
    log.info("report with %d figures: %s", len(entries), path)
    return path


def page(
    entries: list[ReportFigure], labels: dict, projections: list[Projection], header: str, claims: dict | None = None
) -> str:
    """The HTML page: the claims and the labels' fidelity (when given), then a section per layer with
    its figures and its label table (a HandNet's: its explanation)."""
    e = html.escape
    if labels["net"] == ANY_NET:
        return any_net_page(entries, labels, header, claims)
    if labels["net"] == "handnet":
        sections, intros, columns, tables = (
            EXPLANATION_TITLES,
            handnet_intros(labels),
            HANDNET_COLUMNS,
            "explanation (labels.json, explanation.md)",
        )
    else:
        sections, intros, columns, tables = SECTIONS, INTROS, TABLE_COLUMNS, "labels (labels.json)"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Dissection of {e(labels['net'])} {e(str(labels['widths']))}</title><style>{CSS}</style></head><body>",
        f"<h1>Dissection of {e(labels['net'])}, widths {e(str(labels['widths']))}</h1><p>{e(header)} Click a figure to open it at full size.</p>",
        "<nav>"
        + " · ".join(f"<a href='#{key}'>{key}</a>" for key in ["claims"] * bool(claims) + list(sections))
        + "</nav>",
    ]
    if claims:
        parts.append(_claims_section(claims))
    for key, heading in sections.items():
        parts.append(f"<section id='{key}'><h2>{e(heading)}</h2><p>{e(intros[key])}</p>")
        section_figures = [entry for entry in entries if entry.section == key]
        if not section_figures and key == "conv2":
            parts.append("<p><em>This net has no conv2 (the no_conv2 variant).</em></p>")
        for entry in section_figures:
            parts.append(
                f"<figure><h3>{e(entry.title)}</h3><a href='{e(entry.name)}.png'><img src='{e(entry.name)}.png' alt='{e(entry.title)}'></a>"
                f"<figcaption><b>{e(entry.title)}.</b> {e(entry.caption)}</figcaption></figure>"
            )
        if key == "fc" and projections:
            parts.append(_separation_table(projections))
        rows = [u for u in labels["units"] if u["layer"] == key or (key, u["layer"]) == ("fc", "fc4")]
        if rows:
            parts.append(f"<h3>{key} {tables}</h3>" + _label_table(rows, columns[key]))
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


ANY_NET_COLUMNS = [
    ("label", "label"),
    ("nonlinearity", "nonlinearity"),
    ("fit_r2", "fit R²"),
    ("orientation_selectivity", "orientation selectivity"),
    ("drivers", "drivers"),
    ("inhibitors", "inhibitors"),
    ("fidelity", "fidelity r"),
    ("fidelity_shuffled", "shuffled label's r"),
    ("position_index", "ω² position"),
    ("pattern_index", "ω² pattern"),
    ("class_selectivity", "class selectivity"),
]


def any_net_page(entries: list[ReportFigure], labels: dict, header: str, claims: dict | None) -> str:
    """Any ConvNet's page: the labels' fidelity per layer next to its nulls, then a section per traced
    layer with its figures and its label table (the columns it has)."""
    e = html.escape
    title = f"Dissection of {labels['class']}, widths {labels['widths']}"
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head>",
        f"<body><h1>{e(title)}</h1><p>{e(header)}</p>",
        "<nav>" + " · ".join(f"<a href='#{e(layer)}'>{e(layer)}</a>" for layer in labels["layers"]) + "</nav>",
    ]
    if claims:
        rows = [
            [layer, f["median"], f["shuffled"], f["untrained"], f["units"]] for layer, f in claims["fidelity"].items()
        ]
        header_row = ["layer", "median fidelity r", "shuffled labels", "untrained copy", "units"]
        parts.append("<section id='claims'><h2>Fidelity of the labels</h2>" + _html_table(header_row, rows))
        verdicts = [[number, c["claim"], c["verdict"]] for number, c in claims["article_claims"].items()]
        parts.append("<h3>The article's claims</h3>" + _html_table(["claim", "", "verdict"], verdicts) + "</section>")
    for layer in labels["layers"]:
        parts.append(f"<section id='{e(layer)}'><h2>{e(layer)}</h2>")
        for entry in (entry for entry in entries if entry.section == layer):
            parts.append(
                f"<figure><a href='{e(entry.name)}.png'><img src='{e(entry.name)}.png' alt='{e(entry.title)}'></a>"
                f"<figcaption><b>{e(entry.title)}.</b> {e(entry.caption)}</figcaption></figure>"
            )
        units = [u for u in labels["units"] if u["layer"] == layer]
        columns = [(key, name) for key, name in ANY_NET_COLUMNS if any(key in u for u in units)]
        parts.append(f"<h3>{e(layer)} labels (labels.json)</h3>" + _label_table(units, columns) + "</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _html_table(header: list[str], rows: list[list]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _rounded(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _claims_section(claims: dict) -> str:
    """claims.json on the page: how much of the net the labels reproduce, then every claim statistic
    next to its nulls with its two verdicts (docs/measures.md)."""
    fidelity = claims.get("fidelity", {})
    rows = [
        [layer, f["median"], f["shuffled"], f["untrained"], f["median_terms"], f.get("median_terms_for_r90", "-")]
        for layer, f in fidelity.items()
    ]
    parts = [
        "<section id='claims'><h2>Claims and labels that execute</h2>",
        "<p>Every label is run as a unit and scored against the real unit on held-out test images "
        "(fidelity: Pearson r, each cell's mean removed). Nulls: the same labels run on the other units of "
        "the layer (shuffled), and untrained nets' labels on those nets.</p>",
        _html_table(
            ["layer", "median fidelity", "shuffled labels", "untrained nets", "printed terms", "terms for r 0.9"], rows
        ),
    ]
    net = claims.get("label_net")
    if net:
        lengths = [k for k, v in net.items() if isinstance(v, dict)]
        parts.append(
            f"<p>The label net: every conv unit run from its label at once, on {net['images']} test images "
            f"(the real net: {100 * net['real_accuracy']:.1f}% accuracy).</p>"
        )
        parts.append(
            _html_table(
                ["terms per unit", *lengths],
                [[what + " (%)", *(f"{100 * net[k][what]:.1f}" for k in lengths)] for what in ("agreement", "accuracy")]
                + [["terms to read", *(net[k]["terms"] for k in lengths)]]
                + [["numbers to read", *(net[k].get("numbers", "-") for k in lengths)]],
            )
        )
    for layer, c in claims.get("class_selectivity", {}).items():
        parts.append(
            f"<p>{layer}'s class selectivity (median over units): {_rounded(c['median'])}; "
            f"untrained nets {_rounded(c['untrained'])}.</p>"
        )
    statistics = [
        [
            name,
            _rounded(c["value"]),
            "; ".join(f"{n} {_rounded(v['value'])}" for n, v in c["nulls"].items()),
            c["holds"],
            c["learned"],
        ]
        for name, c in claims.items()
        if isinstance(c, dict) and "nulls" in c
    ]
    parts.append(_html_table(["statistic", "value", "nulls", "holds", "learned"], statistics))
    return "\n".join(parts) + "</section>"


def _cell(key: str, value) -> str:
    if value is None:
        return "–"
    if key == "bursts":
        return (
            "<br>".join(
                html.escape(
                    f"{b.get('notation') or b['sign'] + '[' + b['clock'] + ']'} on {b['input']} ({b['input_label']})"
                )
                for b in value
            )
            or "–"
        )
    if key in ("drivers", "inhibitors"):
        return html.escape(", ".join(f"{e['input']} {e['share']:.0%}" for e in value)) or "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return html.escape(str(value))


def _label_table(units: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "<tr><th>unit</th>" + "".join(f"<th>{html.escape(title)}</th>" for _, title in columns) + "</tr>"
    body = "".join(
        f"<tr><td>{html.escape(u['name'])}</td>"
        + "".join(f"<td>{_cell(key, u.get(key))}</td>" for key, _ in columns)
        + "</tr>"
        for u in units
    )
    return f"<table>{head}{body}</table>"


def _separation_table(projections: list[Projection]) -> str:
    rows = "".join(
        f"<tr><td>{p.stage}</td><td>{p.silhouette:.3f}</td><td>{p.knn_accuracy:.3f}</td></tr>" for p in projections
    )
    return (
        f"<h3>class separation</h3><table><tr><th>stage</th><th>silhouette</th><th>kNN accuracy</th></tr>{rows}</table>"
    )


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1500px; margin: 1em auto; padding: 0 1em; color: #222; line-height: 1.45; }
nav a { margin: 0 0.3em; }
section { border-top: 2px solid #ccc; margin-top: 2em; }
figure { margin: 1.5em 0; }
figure h3 { margin-bottom: 0.3em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.95em; color: #444; max-width: 60em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
"""
