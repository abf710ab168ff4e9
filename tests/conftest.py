"""Shared fixtures: the real MNIST files and configs composed with Hydra's compose API."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from convdissect.config import CONFIG_DIR

CHECKOUT = Path(__file__).resolve().parents[1]  # where the tests run train.py, dissect.py and scripts/ from


DATA_DIR = os.environ.get("CONVDISSECT_DATA_DIR") or str(CHECKOUT / "data")
os.environ["CONVDISSECT_DATA_DIR"] = DATA_DIR  # so ${paths.data_dir} resolves there everywhere


def run_python(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python ARGS...` from the checkout (train.py, dissect.py, scripts/...), its output captured."""
    return subprocess.run([sys.executable, *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def data_dir() -> str:
    return DATA_DIR


@pytest.fixture
def one_thread():
    """Tiny batches run fastest on one thread; on a busy machine two threads can be 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_cfg(config_name: str = "train", overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
    """A config as the Hydra app would see it, with paths.output_dir pointed at output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir) if output_dir else "unused"
    return cfg


# A real but tiny run: small widths, a few batches, no progress bar.
TINY = [
    "model.widths=[4,8,8,8]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "data.eval_batch_size=200",
]


@pytest.fixture
def tiny_cfg(tmp_path) -> DictConfig:
    return compose_cfg("train", TINY, tmp_path)
