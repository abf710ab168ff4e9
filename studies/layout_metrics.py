# Produced: the layout numbers of issue 20's closing note (lines per package, files over 400 lines, functions over 60).
"""Lines per package of src/convdissect, the files over 400 lines and the functions over 60 (by ast).

python studies/layout_metrics.py [SRC_DIR]      # default src/convdissect
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "src/convdissect")
    per_package: Counter = Counter()
    big_files, long_functions = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        lines, relative = len(text.splitlines()), path.relative_to(root)
        per_package[relative.parts[0] if len(relative.parts) > 1 else "(top level)"] += lines
        if lines > 400:
            big_files.append(f"{relative} {lines}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{relative}:{node.name} {node.end_lineno - node.lineno + 1}")
    print("lines per package:", dict(per_package), "total", sum(per_package.values()))
    print("files over 400 lines:", big_files or "none")
    print("functions over 60 lines:", long_functions or "none")


if __name__ == "__main__":
    main()
