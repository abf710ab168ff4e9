"""scripts/results_table.py on real (tiny) runs made by the Hydra app."""

import shutil
import subprocess
import sys

from convdissect.config import REPO_ROOT
from tests.conftest import TINY


def test_table_has_a_row_per_experiment_and_names_broken_runs(tmp_path):
    sweep = tmp_path / "sweep"
    made = subprocess.run(
        [sys.executable, "train.py", "-m", "+experiment=baseline,small_scratch", *TINY, f"hydra.sweep.dir={sweep}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    broken = sweep / "2"
    shutil.copytree(sweep / "0" / ".hydra", broken / ".hydra")  # a run that died before metrics.json

    table = subprocess.run(
        [sys.executable, "scripts/results_table.py", str(sweep)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [line for line in table.stdout.splitlines() if line.startswith("| baseline |") or line.startswith("| small_scratch |")]
    assert len(rows) == 2
    assert all("[4, 8, 8, 8]" in row for row in rows)
    assert f"no metrics.json in {broken}" in table.stdout
