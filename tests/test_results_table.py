"""`convdissect tables results` on real (tiny) runs made by the Hydra app (a multirun: each job writes its own
dir), one of them dissected."""

import json
import shutil

import pytest
from omegaconf import OmegaConf

from convdissect.dissection import dissect
from convdissect.tables import render
from tests.helpers import FAST_NULLS, TINY, compose_cfg, run_python


@pytest.mark.slow
def test_table_has_a_row_per_experiment_and_per_net_claims_and_names_broken_runs(tmp_path):
    sweep = tmp_path / "sweep"
    made = run_python(
        "train.py", "-m", "+experiment=baseline,small_scratch", *TINY, f"hydra.sweep.dir={sweep}", timeout=300
    )
    assert made.returncode == 0, made.stderr[-2000:]
    jobs = [json.loads((sweep / job / "metrics.json").read_text())["overrides"] for job in ("0", "1")]
    assert [job[0] for job in jobs] == ["+experiment=baseline", "+experiment=small_scratch"]  # each job its own dir
    assert all((sweep / job / "model_state.pt").exists() for job in ("0", "1"))
    broken = sweep / "2"
    shutil.copytree(sweep / "0" / ".hydra", broken / ".hydra")  # a run that died before metrics.json
    overrides = [f"ckpt_path={sweep / '0' / 'model_state.pt'}", "n_images=200", "threads=1", *FAST_NULLS]
    out = sweep / "0" / "dissect"
    cfg = compose_cfg("dissect", [*overrides, "superstimulus.enabled=false", "report.enabled=false"], out)
    dissect(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # as dissect.py's Hydra app saves it

    table = render(["results", str(sweep)])
    rows = [
        line for line in table.splitlines() if line.startswith("| baseline |") or line.startswith("| small_scratch |")
    ]
    assert len(rows) == 2
    assert all("[4, 8, 8, 8]" in row for row in rows)
    claims = [line.split(" | ") for line in table.splitlines() if line.startswith("| 2: conv2 copies")]
    # one row per statistic of claim 2, all for the dissected net only (never pooled), each with both verdicts
    assert len(claims) == 6 and {row[2] for row in claims} == {"baseline"}
    assert all(
        row[6] in ("supported", "not supported", "reversed")
        and row[8].rstrip(" |") in ("supported", "not supported", "reversed")
        for row in claims
    )
    assert f"no metrics.json in {broken}" in table
