"""`convdissect tables frontier` on a real (tiny) multirun of the frontier sweep, through the Hydra
app and the joblib launcher the full sweep uses."""

import json

import pytest

from convdissect.tables import render
from tests.helpers import CHECKOUT, run_python

TINY_HANDNET = [
    "model.n_bursts=1,2",
    "model.terms=2,null",
    "model.n_orientations=4",
    "model.edges=false",
    "model.extra_detectors=3",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=10",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "data.eval_batch_size=200",
    "callbacks.explanation.roundtrip_images=200",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "threads=1",
]


@pytest.mark.slow
def test_frontier_table_and_plot_from_a_real_sweep(tiny_run, tmp_path):
    sweep = tmp_path / "sweep"
    made = run_python(
        "train.py",
        "-m",
        "+experiment=handnet_explainable",
        "+sweep=handnet_frontier",
        *TINY_HANDNET,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=1",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    reference, simple = tiny_run  # a net without an explanation: every parameter is read
    plot = tmp_path / "frontier.png"
    table = render(["frontier", str(sweep), "--reference", str(reference), "--plot", str(plot)])
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:4]): line.split("|")
        for line in table.splitlines()
        if line.startswith("| handnet_explainable")
    }
    assert set(rows) == {("handnet_explainable", k, t) for k in ("1", "2") for t in ("2", "all")}
    assert len({cells[4] for cells in rows.values()}) == 1  # the tiny settings: one variant, four points
    for (_, k, t), cells in rows.items():
        metrics = json.loads(
            next(
                p
                for p in sweep.glob("*/metrics.json")
                if f"model.n_bursts={k}" in p.read_text()
                and f"model.terms={'null' if t == 'all' else t}" in p.read_text()
            ).read_text()
        )
        assert cells[12].strip() == str(metrics["explanation/numbers"])
        assert cells[8].strip() == "100.00%"  # the round trip
        assert int(cells[10]) <= (2 if t == "2" else 22)  # terms per digit
    reference_row = next(line for line in table.splitlines() if line.startswith("| train |"))
    assert f"| {simple['n_params']} |" in reference_row
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    # the stored frontier drawn alone, then with these runs as points of their own
    stored = CHECKOUT / "docs" / "results" / "frontier.json"
    alone, with_runs = tmp_path / "stored.png", tmp_path / "stored_and_runs.png"
    render(["frontier", "--stored", str(stored), "--plot", str(alone)])
    render(["frontier", "--stored", str(stored), str(sweep), "--plot", str(with_runs)])
    assert with_runs.read_bytes() != alone.read_bytes()
