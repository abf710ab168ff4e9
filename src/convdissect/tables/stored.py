"""`convdissect tables stored FILE.json...`: the tables the docs quote, from the small result files in
docs/results/ (one per table: the page that shows it, the command that printed it, where and when it
was measured, its columns and rows), as markdown. tests/test_tables.py checks that each page shows
its table exactly as printed here, so a table is changed by changing its file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from convdissect.errors import UserInputError

KEYS = ("page", "made_by", "measured", "columns", "rows")


def load(path: Path) -> dict:
    """A result file, checked: its keys, and every row as long as the header."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserInputError(f"{path}: not a readable result file ({err})") from None
    missing = [key for key in KEYS if key not in stored]
    if missing:
        raise UserInputError(f"{path}: missing {missing}; a result file holds {list(KEYS)}")
    for row in stored["rows"]:
        if len(row) != len(stored["columns"]):
            raise UserInputError(f"{path}: row {row[:2]}... has {len(row)} cells, the header {len(stored['columns'])}")
    return stored


def markdown(stored: dict) -> str:
    lines = ["| " + " | ".join(stored["columns"]) + " |", "|" + "---|" * len(stored["columns"])]
    lines += ["| " + " | ".join(row) + " |" for row in stored["rows"]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", type=Path, nargs="+", help="result files, e.g. docs/results/*.json")


def render(args: argparse.Namespace) -> str:
    return "\n\n".join(markdown(load(path)) for path in args.files)
