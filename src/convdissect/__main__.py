"""python -m convdissect train|dissect|eval|tables ... (the `convdissect` command)."""

from convdissect.cli import main

main()
