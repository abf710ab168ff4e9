"""Optuna searches (hparams_search=...) tune on validation metrics only, over keys the config has."""

import json
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from convdissect.cli import check_optimized_metric, optimized_value
from convdissect.config import CONFIG_DIR
from convdissect.errors import UserInputError
from tests.helpers import CHECKOUT, TINY

SEARCHES = sorted(p.stem for p in (CONFIG_DIR / "hparams_search").glob("*.yaml"))
METRICS = {"val/acc": 0.91, "val/acc_best": 0.93, "test/acc": 0.95, "n_params": 1234, "widths": [4, 8], "seed": 0}


def compose_search(name: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        return compose("train", [f"hparams_search={name}"], return_hydra_config=True)


@pytest.mark.parametrize("name", SEARCHES)
def test_search_is_optuna_over_existing_keys_on_validation(name):
    cfg = compose_search(name)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    absent = object()
    missing = [key for key in params if OmegaConf.select(cfg, key, default=absent) is absent]
    assert params and not missing  # a misspelt key would be searched in vain (added, never read)
    names = [cfg.optimized_metric] if isinstance(cfg.optimized_metric, str) else list(cfg.optimized_metric)
    assert "val/acc" in names and not any(n.startswith("test/") for n in names)
    directions = cfg.hydra.sweeper.direction
    assert len(names) == (1 if isinstance(directions, str) else len(directions))


def test_optimized_value_is_the_named_validation_metric():
    assert optimized_value(OmegaConf.create({"optimized_metric": "val/acc"}), METRICS) == 0.91
    assert optimized_value(OmegaConf.create({"optimized_metric": ["val/acc", "n_params"]}), METRICS) == (0.91, 1234.0)
    assert optimized_value(OmegaConf.create({"optimized_metric": None}), METRICS) is None


def test_unknown_optimized_metric_is_one_line_naming_the_allowed():
    with pytest.raises(UserInputError) as err:
        optimized_value(OmegaConf.create({"optimized_metric": "val/acc_bset"}), METRICS)
    assert str(err.value) == (
        "optimized_metric='val/acc_bset' is not a metric of this run; "
        "allowed: ['n_params', 'seed', 'val/acc', 'val/acc_best']"
    )


@pytest.mark.parametrize("metric", ["test/acc", ["val/acc", "test/loss"]])
def test_a_test_metric_is_refused_before_training(metric):
    with pytest.raises(UserInputError, match="must not see the test set"):
        check_optimized_metric(OmegaConf.create({"optimized_metric": metric}))
    check_optimized_metric(OmegaConf.create({"optimized_metric": "val/acc"}))  # a validation metric passes


@pytest.mark.slow
def test_entry_point_refuses_test_metric_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(CHECKOUT / "train.py"), "optimized_metric=test/acc", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: optimized_metric='test/acc': a search must not see")
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_optuna_multirun_returns_the_runs_validation_metrics(tmp_path):
    """Two tiny trials of the pruning search: what Optuna recorded is each job's own val/acc and FLOPs."""
    sweep_dir = tmp_path / "sweep"
    search = ["hparams_search=prune_threshold", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.population_size=2"]
    tiny_pruning = [
        "callbacks.pruning.iterations=2",
        "callbacks.pruning.calibration_size=200",
        "callbacks.pruning.eval_size=400",
        "trainer.max_epochs=4",
        "threads=1",
    ]
    proc = subprocess.run(
        [sys.executable, str(CHECKOUT / "train.py"), *search, f"hydra.sweep.dir={sweep_dir}", *TINY, *tiny_pruning],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for job in sorted(p for p in sweep_dir.iterdir() if (p / "metrics.json").is_file()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        threshold = next(float(o.split("=", 1)[1]) for o in overrides if o.startswith("callbacks.pruning.threshold="))
        jobs[threshold] = json.loads((job / "metrics.json").read_text())
    assert len(jobs) == 2
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["solutions"]  # the accuracy/cost front: one or both trials
    for trial in results["solutions"]:
        metrics = jobs[trial["params"]["callbacks.pruning.threshold"]]
        assert trial["values"] == [metrics["val/acc"], metrics["flops"]]
