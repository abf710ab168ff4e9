"""Shared fixtures: the real MNIST files, and real runs trained once per session for the tests that
only read them (tests must not write into them). Shared settings and helpers are in tests/helpers.py."""

import os

import pytest

from tests.helpers import CHECKOUT

DATA_DIR = os.environ.get("CONVDISSECT_DATA_DIR") or str(CHECKOUT / "data")
os.environ["CONVDISSECT_DATA_DIR"] = DATA_DIR  # so ${paths.data_dir} resolves there everywhere


@pytest.fixture(scope="session")
def data_dir() -> str:
    return DATA_DIR
