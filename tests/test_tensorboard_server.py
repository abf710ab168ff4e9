"""TensorBoard as its users meet it: the real server over a short run's log dir, read over HTTP."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from convdissect.train import train
from tests.helpers import TINY, compose_cfg

pytestmark = pytest.mark.slow  # every test reads from a real server over a trained run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def poll_tags(base: str, plugin: str, wanted: set[str], deadline_s: float = 90.0) -> set[str]:
    """All tags the plugin serves once `wanted` are among them (or whatever it has at the deadline)."""
    deadline = time.monotonic() + deadline_s
    tags: set[str] = set()
    while time.monotonic() < deadline:
        try:
            runs = get_json(f"{base}/data/plugin/{plugin}/tags")
            tags = {tag for run_tags in runs.values() for tag in run_tags}
            if wanted <= tags:
                break
        except OSError:
            pass  # not listening yet
        time.sleep(1.0)
    return tags


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("tb_run")
    # pruning logs its accuracy figure; the superstimulus callback its image grids
    overrides = [
        "model.widths=[8,8,8,8]",
        "callbacks=[default,superstimulus,pruning]",
        "callbacks.superstimulus.steps=8",
        "callbacks.pruning.target_widths=[4,4,4,4]",
        "callbacks.pruning.iterations=1",
        "callbacks.pruning.pretrain_epochs=1",
        "callbacks.pruning.calibration_size=200",
        "trainer.max_epochs=2",
    ]
    train(compose_cfg("train", TINY + overrides, out))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(out),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=20)


def test_server_shows_scalars(server):
    assert {"val/acc", "val/loss", "test/acc"} <= poll_tags(server, "scalars", {"val/acc", "test/acc"})


def test_server_shows_the_logged_figures(server):
    wanted = {"pruning/accuracy", "superstimulus/conv1", "superstimulus/conv3"}
    assert wanted <= poll_tags(server, "images", wanted)
