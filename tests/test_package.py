"""The wheel on its own: built from the checkout, installed (not editable) into a fresh venv and run from
another directory through its console scripts, with the configs it ships."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import CHECKOUT, HANDNET_FINETUNE, TINY

# What `git clone` would not hold: run outputs, data, build leftovers (at the top; conf/data/ is a config group).
TOP_LEVEL_ONLY = {".git", "outputs", "multirun", "data", "build", "lightning_logs", ".whl", ".device_data"}
ANYWHERE = shutil.ignore_patterns(".venv*", "__pycache__", "*.egg-info", ".pytest_cache")


def not_source(directory: str, names: list[str]) -> set[str]:
    top = Path(directory) == CHECKOUT
    return set(ANYWHERE(directory, names)) | ({n for n in names if n in TOP_LEVEL_ONLY} if top else set())


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding only our wheel; torch & co. come from this environment's site-packages
    through a .pth file (a path line: this environment's own .pth files, e.g. an editable
    install of a checkout, are not run)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(CHECKOUT, tmp / "src", ignore=not_source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(tmp / "src"),
        ],
        check=True,
    )
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (wheel,) = (tmp / "dist").glob("convdissect-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        env=clean_env(),
    )
    # after the install: pip would take this environment's convdissect for an installed one
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def clean_env() -> dict[str, str]:
    """This environment's variables without a checkout on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run_in(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_wheel_imports_itself_and_ships_the_configs(venv, tmp_path):
    proc = run_in(
        venv,
        tmp_path,
        str(venv / "bin" / "python"),
        "-c",
        "import convdissect.config as c; print(c.__file__); print(c.CONFIG_DIR)",
    )
    module, config_dir = proc.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(config_dir).is_relative_to(venv), proc.stdout
    shipped = {p.relative_to(config_dir) for p in Path(config_dir).rglob("*.yaml")}
    assert shipped == {p.relative_to(CHECKOUT / "conf") for p in (CHECKOUT / "conf").rglob("*.yaml")}


@pytest.mark.slow
def test_console_script_trains_the_pruning_experiment_in_the_launch_dir(venv, tmp_path):
    proc = run_in(
        venv,
        tmp_path,
        str(venv / "bin" / "convdissect-train"),
        "+experiment=prune_7iters",
        *TINY,  # then the experiment's 7 steps in 8 epochs, on TINY's widths
        "trainer.max_epochs=8",
        "callbacks.pruning.target_widths=[2,4,4,4]",
        "callbacks.pruning.calibration_size=200",
        "callbacks.pruning.eval_size=400",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "outputs" / "prune_7iters" / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["widths"] == [2, 4, 4, 4]  # the experiment's 7 pruning steps ran
    log = proc.stdout + proc.stderr
    assert "Tip" not in log  # no adverts for Lightning's cloud services
    assert log.count("Seed set to 0") == 1  # each line once (Lightning's own console handler is off)
    assert (metrics_file.parent / "prune_7iters.log").is_file()


@pytest.mark.slow
def test_console_script_finds_the_handnet_recipes_in_the_wheel(venv, tmp_path):
    proc = run_in(
        venv,
        tmp_path,
        str(venv / "bin" / "convdissect-train"),
        *HANDNET_FINETUNE,  # a small family: the recipe file is read the same at any size
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "handnet_finetune" / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["n_params"] > 0
