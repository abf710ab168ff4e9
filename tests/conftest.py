"""Shared fixtures: the real MNIST files, and real runs trained once per session for the tests that
only read them (tests must not write into them). Shared settings and helpers are in tests/helpers.py."""

import os

import pytest
import torch

from convdissect.config import set_threads
from convdissect.train import train
from tests.helpers import CHECKOUT, HANDNET_FINETUNE, PRUNE, TINY_TWO_EPOCHS, compose_cfg

DATA_DIR = os.environ.get("CONVDISSECT_DATA_DIR") or str(CHECKOUT / "data")
os.environ["CONVDISSECT_DATA_DIR"] = DATA_DIR  # so ${paths.data_dir} resolves there everywhere
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: each worker on one core, not N workers on all of them
    # torch's threads and scikit-learn's OpenMP and BLAS pools (they spin when cores are short); through
    # OMP_NUM_THREADS also those of the Python processes a test starts
    set_threads(1)


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny net trained for two epochs, every checkpoint kept (a test can resume from the
    first): its run dir and metrics."""
    out = tmp_path_factory.mktemp("tiny_run")
    return out, train(compose_cfg("train", TINY_TWO_EPOCHS, out))


@pytest.fixture(scope="session")
def pruned_run(tmp_path_factory):
    """The tiny net pruned in a short real run (helpers.PRUNE): its run dir and metrics."""
    out = tmp_path_factory.mktemp("pruned")
    return out, train(compose_cfg("train", PRUNE, out))


@pytest.fixture(scope="session")
def handnet_finetuned(tmp_path_factory):
    """The HandNet fine-tuned in a short real run (helpers.HANDNET_FINETUNE); its explanation
    callback wrote labels.json for the tested weights. Its run dir and metrics."""
    out = tmp_path_factory.mktemp("handnet_finetuned")
    return out, train(compose_cfg("train", HANDNET_FINETUNE, out))


def pytest_collection_modifyitems(items):
    """The modules with the most slow tests first, each module's tests in their order: pytest -n gives
    each worker the next module as it finishes one, so the long ones start early and none is left to
    run alone at the end."""
    slow = {}
    for item in items:
        slow[item.module] = slow.get(item.module, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.module])
