"""`convdissect tables NAME RUN_DIRS...`: the markdown tables the docs quote, read back from run dirs.
Each module NAME here has add_arguments(parser) and render(args) -> the text to print."""

from __future__ import annotations

import argparse
import importlib

# name on the command line (and of its module here) -> what it prints
TABLES = {
    "results": "results per experiment, accuracy per pruning step, the article's claims per net",
    "criteria": "claim 2's statistics per pruning criterion, next to no_conv2",
    "pruning": "val accuracy right after each pruning step, per criterion and schedule",
    "frontier": "the HandNet's accuracy against the numbers to read, and its plot",
    "hparams": "a multirun as TensorBoard's HParams tab shows it",
    "untangle": "conv3's raw units against the untangling bases, and the goal's verdict",
    "fidelity": "how much of each net its labels reproduce, next to the nulls, and the label net",
    "stored": "the docs' tables from their result files (docs/results/*.json)",
}


def parser() -> argparse.ArgumentParser:
    tables = argparse.ArgumentParser(prog="convdissect tables", description=__doc__.splitlines()[0])
    names = tables.add_subparsers(dest="table", required=True, metavar="|".join(TABLES))
    for name, help_text in TABLES.items():
        module = importlib.import_module(f"convdissect.tables.{name}")
        sub = names.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
    return tables


def render(argv: list[str]) -> str:
    """The table `argv` asks for, e.g. ["results", "outputs/"]; bad input raises UserInputError."""
    args = parser().parse_args(argv)
    return importlib.import_module(f"convdissect.tables.{args.table}").render(args)
