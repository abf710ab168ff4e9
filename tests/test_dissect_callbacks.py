"""The superstimulus and channel-selectivity callbacks in short real training runs, read back
from TensorBoard's event files."""

import io
import json

import matplotlib.image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convdissect.train import train
from tests.helpers import TINY, compose_cfg

pytestmark = pytest.mark.slow  # every test here trains a net with the callbacks

BASE = [o for o in TINY if o != "~callbacks.progress_bar"] + [
    "callbacks=[superstimulus,selectivity]",
    "callbacks.superstimulus.steps=8",
    "callbacks.selectivity.n_images=300",
    "callbacks.selectivity.tuning_step_deg=15",
    "trainer.limit_train_batches=4",
]


def events(log_dir):
    """{kind: {tag: [event, ...]}} of every event file under log_dir."""
    found = {"images": {}, "scalars": {}}
    for path in log_dir.rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["images"]:
            found["images"].setdefault(tag, []).extend(acc.Images(tag))
        for tag in acc.Tags()["scalars"]:
            found["scalars"].setdefault(tag, []).extend(acc.Scalars(tag))
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("callbacks")
    cfg = compose_cfg("train", BASE + ["trainer.max_epochs=3", "callbacks.superstimulus.every_n_epochs=2"], out)
    train(cfg)
    return out, events(out / "tensorboard"), json.loads((out / "metrics.json").read_text())


def test_superstimuli_every_n_epochs_and_at_the_end(run):
    _, found, metrics = run
    for layer, side in (("conv1", 2), ("conv2", 3), ("conv3", 3)):  # 4 / 8 / 8 channels in a square grid
        images = found["images"][f"superstimulus/{layer}"]
        assert [e.step for e in images] == [8, 12]  # after epoch 2 (of 4 steps each) and at the end
        assert (images[0].width, images[0].height) == (side * 29 + 1, side * 29 + 1)
        pixels = matplotlib.image.imread(io.BytesIO(images[-1].encoded_image_string))
        assert pixels.std() > 0.01  # not a blank grid
    assert metrics["superstimulus_callback/calls"] == 2 and metrics["superstimulus_callback/seconds"] > 0


def test_selectivity_every_validation_epoch(run):
    _, found, metrics = run
    for layer in ("conv1", "conv2", "conv3"):
        for tag in (f"selectivity/{layer}_mean", f"orientation/{layer}_mean"):
            values = found["scalars"][tag]
            assert len(values) == 3 and all(0 <= e.value <= 1 for e in values), tag
        assert len(found["images"][f"selectivity/{layer}"]) == 3
    assert metrics["selectivity_callback/calls"] == 3 and metrics["selectivity_callback/seconds"] > 0


def test_no_conv2_variant_skips_the_missing_layer(tmp_path):
    cfg = compose_cfg("train", BASE + ["model.widths=[4,8,8]", "model.conv2=false"], tmp_path)
    train(cfg)
    found = events(tmp_path / "tensorboard")
    assert {t for t in found["images"] if t.startswith("superstimulus/")} == {
        "superstimulus/conv1",
        "superstimulus/conv3",
    }
    assert "selectivity/conv3_mean" in found["scalars"] and "selectivity/conv2_mean" not in found["scalars"]
