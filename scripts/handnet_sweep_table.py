"""Markdown table of a HandNet sweep: python scripts/handnet_sweep_table.py <multirun dir>."""

import json
import sys
from pathlib import Path


def main(sweep_dir: str) -> None:
    rows = []
    for metrics_file in sorted(Path(sweep_dir).glob("*/metrics.json")):
        m = json.loads(metrics_file.read_text())
        swept = [o for o in m["overrides"] if o.startswith("model.")]
        rows.append((m["test/acc"], " ".join(swept), m["n_params"], m["widths"], m["wall_s"]))
    print("| test acc | overrides | params | widths | wall s |")
    print("|---|---|---|---|---|")
    for acc, swept, n_params, widths, wall in sorted(rows, reverse=True):
        print(f"| {acc:.4f} | {swept} | {n_params} | {widths} | {wall} |")


if __name__ == "__main__":
    main(sys.argv[1])
