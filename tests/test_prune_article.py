"""The article's combined pruning criterion: its config, each criterion's normalisation within the
layer (checked against ranks and z-scores computed by numpy), and a real run with it."""

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.prunable import producer_consumer_table
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.pruning.callback import PruningCallback
from convdissect.pruning.criteria import CRITERIA, Calibration, parse_normalise, score_layer
from convdissect.tables import render
from convdissect.train import train
from tests.helpers import FAST_NULLS, TINY, compose_cfg, run_python

ARTICLE = ["activation_variance", "weight_noise", "superstimulus_contrast", "selectivity"]


@pytest.fixture(scope="module")
def calibration(data_dir):
    torch.manual_seed(0)
    net = SimpleConvNet([6, 8, 8, 8]).eval()
    images, labels = MNISTDataModule(data_dir=data_dir).tensors("val", 64)
    return Calibration(net, producer_consumer_table(net), images, labels, torch.Generator().manual_seed(0))


def numpy_rank01(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / (len(x) - 1)


def numpy_zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def test_the_experiment_weights_all_four_criteria_and_normalises_each():
    cfg = compose_cfg("train", ["+experiment=prune_article"])
    callback = instantiate(cfg.callbacks.pruning)
    assert list(callback.weights) == ARTICLE and all(w > 0 for w in callback.weights.values())
    assert set(callback.normalise) == set(ARTICLE) and set(callback.normalise.values()) <= {"rank", "zscore"}
    # the rest of the schedule is prune_7iters'
    variance = compose_cfg("train", ["+experiment=prune_7iters"])
    assert cfg.callbacks.pruning.target_widths == variance.callbacks.pruning.target_widths
    assert cfg.trainer.max_epochs == variance.trainer.max_epochs


@pytest.mark.parametrize("how", ["rank", "zscore"])
@pytest.mark.parametrize("layer", ["conv2", "fc4"])
def test_combination_is_the_weighted_sum_of_normalised_scores(how, layer, calibration):
    weights = {"activation_variance": 1.0, "weight_noise": 0.5, "selectivity": 2.0}
    combined, fallbacks = score_layer(calibration, layer, weights, normalise=parse_normalise(how, weights))
    norm = numpy_rank01 if how == "rank" else numpy_zscore
    used = {"activation_variance": 1.0 + (0.5 if layer == "fc4" else 0.0), "selectivity": 2.0}
    if layer != "fc4":
        used["weight_noise"] = 0.5
    assert fallbacks == ({"weight_noise": "activation_variance"} if layer == "fc4" else {})
    expected = sum(w * norm(CRITERIA[name].score(calibration, layer).double().numpy()) for name, w in used.items())
    np.testing.assert_allclose(combined.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("how", ["rank", "zscore"])
def test_no_criterion_dominates_by_its_scale(how, calibration):
    """Multiplying one criterion's scores by 1e6 leaves the combined score as it was."""
    weights = {"activation_variance": 1.0, "magnitude": 1.0}
    normalise = parse_normalise(how, weights)
    plain, _ = score_layer(calibration, "conv3", weights, normalise=normalise)
    scaled_net = SimpleConvNet([6, 8, 8, 8]).eval()
    scaled_net.load_state_dict(calibration.net.state_dict())
    with torch.no_grad():  # conv3's weights x 1e6: its magnitudes x 1e6, the variance of its ReLU'd outputs x 1e12
        scaled_net.conv3.weight *= 1e6
        scaled_net.conv3.bias *= 1e6
        scaled_net.fc4.weight /= 1e6
    cal = Calibration(scaled_net, calibration.table, calibration.images, calibration.labels, torch.Generator())
    scaled, _ = score_layer(cal, "conv3", weights, normalise=normalise)
    torch.testing.assert_close(scaled, plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "normalise, match",
    [
        ("percentile", "allowed"),
        ({"activation_variance": "rank", "taylor": "rank"}, "not in the criterion"),
        ({"activation_variance": "minmax"}, "allowed"),
    ],
)
def test_bad_normalise_is_a_one_line_error(normalise, match):
    with pytest.raises(UserInputError, match=match) as err:
        parse_normalise(normalise, {"activation_variance": 1.0, "selectivity": 1.0})
    assert "\n" not in str(err.value)


def test_bad_superstimulus_steps_is_a_one_line_error():
    with pytest.raises(UserInputError, match="superstimulus_steps=0"):
        PruningCallback(criterion={"superstimulus_contrast": 1.0}, target_widths=[2, 4, 4, 4], superstimulus_steps=0)


@pytest.mark.slow
def test_a_prune_article_run_reaches_its_widths_and_records_the_criterion(tmp_path):
    overrides = (
        ["+experiment=prune_article"]
        + TINY
        + [
            "trainer.max_epochs=3",
            "callbacks.pruning.target_widths=[2,4,4,4]",
            "callbacks.pruning.iterations=2",
            "callbacks.pruning.calibration_size=100",
            "callbacks.pruning.eval_size=200",
            "callbacks.pruning.superstimulus_steps=4",
        ]
    )
    metrics = train(compose_cfg("train", overrides, tmp_path))
    assert metrics["widths"] == [2, 4, 4, 4]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert list(saved["pruning"]["criterion"]) == ARTICLE
    assert saved["pruning"]["normalise"] == dict.fromkeys(ARTICLE, "rank")
    assert saved["pruning"]["superstimulus_steps"] == 4
    assert saved["pruning_history"][0]["criterion_fallbacks"] == {"fc4": {"weight_noise": "activation_variance"}}


@pytest.mark.slow
def test_the_criterion_sweep_runs_and_its_table_has_a_row_per_criterion_with_verdicts(tmp_path):
    """The chain of the README's criterion table on 2 tiny runs: the sweep, dissect.py on each, the table."""
    sweep = tmp_path / "sweep"
    made = run_python(
        "train.py",
        "-m",
        "+experiment=prune_7iters",
        "+sweep=article_criteria",
        "callbacks.pruning.criterion={activation_variance:1,weight_noise:1,superstimulus_contrast:1,selectivity:1},random",
        "seed=0",
        *TINY,
        "trainer.max_epochs=3",
        "callbacks.pruning.target_widths=[2,4,4,4]",
        "callbacks.pruning.iterations=2",
        "callbacks.pruning.superstimulus_steps=4",
        f"hydra.sweep.dir={sweep}",
        timeout=600,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    with pytest.raises(UserInputError, match=r"^--dissect-overrides n_imagez=200: .*n_imagez"):
        render(["criteria", str(sweep), "--dissect", "--dissect-overrides", "n_imagez=200"])
    table = render(["criteria", str(sweep), "--dissect", "--dissect-overrides", "n_images=200", *FAST_NULLS])
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in table.splitlines()
        if line.startswith("| prune_article |") or line.startswith("| random |")
    }
    assert set(rows) == {"prune_article", "random"}
    verdicts = ("supported", "not supported", "reversed")
    for cells in rows.values():
        claim_cells = cells[2:5]  # (a) copy fraction, (a) tuning corr., (b) main driver's share
        assert all("untrained" in c and sum(c.count(v) for v in verdicts) >= 2 for c in claim_cells), cells
    assert (sweep / "0" / "dissect" / "claims.json").exists() and (sweep / "1" / "dissect" / "claims.json").exists()
