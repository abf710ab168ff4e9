"""Runs that are never silently wrong: documented commands finish, interrupted runs say how to resume,
a run never deletes or overwrites what it reads, resumes refuse a changed config, outputs are atomic,
bad settings are refused before any work."""

import json

import pytest

from convdissect.train import train
from tests.conftest import TINY, compose_cfg, run_python

# TINY for the command line, on one thread
TINY_ARGS = [arg for arg in TINY if not arg.startswith("~")] + ["threads=1"]


@pytest.mark.parametrize("logger", ["csv", "[tensorboard,csv]"])
def test_csv_logger_runs_finish(tmp_path, logger, one_thread):
    metrics = train(compose_cfg("train", TINY + [f"logger={logger}"], tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "csv" / "hparams.yaml").is_file()
    assert (tmp_path / "tensorboard").is_dir() == (logger != "csv")


def test_progress_bar_off_alone(tmp_path, one_thread):
    overrides = [arg for arg in TINY if arg != "~callbacks.progress_bar"]
    train(compose_cfg("train", overrides, tmp_path))
    assert (tmp_path / "metrics.json").is_file()


def test_logger_null_on_the_command_line(tmp_path):
    run = run_python("train.py", *TINY_ARGS, "logger=null", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "tensorboard").exists()
