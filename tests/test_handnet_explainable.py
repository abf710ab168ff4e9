"""The explainable HandNet: K bursts per unit on one learned conv1 channel each, at most T readout
terms per digit, and a complete explanation that rebuilds the net. One real short run (K=1)
serves the slow tests; the references are the saved state_dict and formulas written out here."""

import json
import math
import re

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from convdissect.errors import UserInputError
from convdissect.handnet.layers import MIN_SIGMA, BurstConv2d
from convdissect.handnet.learned_recipes import learned_recipes
from convdissect.handnet.net import HandNet
from convdissect.handnet.schedule import HandNetSchedule, shrink_readout
from convdissect.train import train
from tests.helpers import (
    EXPLAINABLE_RUN,
    EXPLAINABLE_TERMS,
    check_round_trip,
    compose_cfg,
    short_run,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real short K=1, T=3 run: its output dir, metrics and the saved state_dict."""
    return short_run(tmp_path_factory.mktemp("explainable"), EXPLAINABLE_RUN)


def gaussian(mx: float, my: float, sx: float, sy: float, a: float) -> torch.Tensor:
    """One burst on the 5x5 grid, written out: row 0 is the top (y = +2), column 0 the left (x = -2)."""
    grid = torch.zeros(5, 5)
    for row in range(5):
        for col in range(5):
            x, y = col - 2, 2 - row
            grid[row, col] = a * math.exp(-((x - mx) ** 2) / (2 * sx**2) - (y - my) ** 2 / (2 * sy**2))
    return grid


@pytest.mark.slow
def test_k1_each_unit_reads_one_channel_and_its_grid_is_the_burst(run):
    out, metrics, state = run
    net = HandNet(recipes=str(out / "learned_recipes.yaml"))
    assert net.conv3.frozen and int(state["conv3.mode"]) == 2  # the trained net ends frozen too
    # ... after the schedule annealed its choice (frozen at the temperature it had reached)
    assert float(state["conv3.temperature"]) == pytest.approx(0.03, rel=0.2)
    grids = net.conv3.grids().detach()
    for k in range(grids.shape[0]):
        reads = grids[k].abs().sum((1, 2)).nonzero().flatten().tolist()
        assert reads == [int(state["conv3.channel"][k, 0])]
        mx, my, sx, sy, a = (
            float(state[f"conv3.{n}"][k, 0]) for n in ("mean_x", "mean_y", "sigma_x", "sigma_y", "amplitude")
        )
        torch.testing.assert_close(grids[k, reads[0]], gaussian(mx, my, abs(sx), abs(sy), a))
    assert metrics["explanation/bursts_per_unit_max"] == 1


def test_straight_through_is_hard_forward_and_soft_backward():
    torch.manual_seed(0)
    layer = BurstConv2d(4, 3, n_bursts=2)
    layer.reset_random(0.8, 1.0)
    x = torch.rand(2, 4, 7, 7)
    layer.set_channel_mode("hard", temperature=0.5)
    hard = layer(x)
    layer(x).sum().backward()
    assert layer.channel_logits.grad.abs().sum() > 0  # the softmax's gradient reaches the choice
    with torch.no_grad():
        layer.set_channel_mode("frozen")
        torch.testing.assert_close(layer(x), hard)  # the hard forward pass is the frozen one
    assert torch.equal(layer.channel, layer.channel_logits.argmax(-1))


@pytest.mark.slow
def test_readout_keeps_at_most_t_terms_and_every_unit_is_read(run):
    _, metrics, state = run
    weight = state["readout.weight"] * state["readout.mask"]
    terms = (weight != 0).sum(1)
    assert terms.max() <= EXPLAINABLE_TERMS and metrics["explanation/terms_per_digit_max"] == int(terms.max())
    assert (weight != 0).any(0).all()  # units no digit reads were removed
    assert metrics["widths"][1] == weight.shape[1] == metrics["explanation/units_used"] <= 10 * EXPLAINABLE_TERMS


@pytest.mark.slow
def test_round_trip_rebuilds_the_same_predictions(run, data_dir, tmp_path):
    check_round_trip(run, data_dir, tmp_path)


@pytest.mark.slow
def test_explanation_names_every_burst_and_counts_its_numbers(run):
    out, metrics, state = run
    text = (out / "explanation.md").read_text()
    bursts = {}  # unit name -> the inputs of its burst lines
    for line in text.splitlines():
        if line.startswith("- **conv3_"):
            unit = re.match(r"- \*\*(conv3_\d+)\*\*", line).group(1)
            bursts[unit] = []
        elif "× burst" in line:
            bursts[unit].append(re.search(r" on (conv1_\d+) ", line).group(1))
    amplitude = state["conv3.amplitude"]
    assert sum(map(len, bursts.values())) == amplitude.numel()
    for k in range(amplitude.shape[0]):
        assert sorted(bursts[f"conv3_{k + 1}"]) == sorted(f"conv1_{int(c) + 1}" for c in state["conv3.channel"][k])
    n_lines, (n_units, k_bursts) = len(state["conv1.theta"]), amplitude.shape
    terms = int((state["readout.weight"] * state["readout.mask"] != 0).sum())
    assert metrics["explanation/numbers"] == 5 * n_lines + 6 * n_units * k_bursts + n_units + terms + 10


@pytest.mark.slow
def test_explanation_metrics_reach_tensorboard_and_hparams(run):
    out, metrics, _ = run
    scalars, hparam_metrics = {}, set()
    for events in (out / "tensorboard").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars |= {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
        try:
            content = acc.PluginTagToContent("hparams")
        except KeyError:  # an event file without hparams
            content = {}
        if "_hparams_/experiment" in content:  # the HParams view's metric columns
            data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
            hparam_metrics |= {m.name.tag for m in data.experiment.metric_infos}
    for key in (
        "bursts_per_unit_max",
        "terms_per_digit_max",
        "units_used",
        "numbers",
        "roundtrip_agreement",
        "rounded_acc",
    ):
        assert scalars[f"explanation/{key}"] == pytest.approx(metrics[f"explanation/{key}"])
        assert f"explanation/{key}" in hparam_metrics
    assert json.loads((out / "metrics.json").read_text())["explanation/numbers"] == metrics["explanation/numbers"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_bursts=0", r"model\.n_bursts=0: must be an integer >= 1"),
        ("model.terms=0", r"model\.terms=0: must be null \(all\) or an integer from 1 to the"),
        ("model.terms=1000", r"model\.terms=1000: .* from 1 to the 200 conv3 units"),
        ("model.cell_pixels=3", r"model\.cell_pixels=3: allowed 2, 4$"),
        ("model.final_pool=4", r"model\.final_pool=4: allowed 1, 2, 3$"),
        ("model.final_pool=true", r"model\.final_pool=True: allowed 1, 2, 3$"),
        ("model.final_pool=2 model.terms=801", r"model\.terms=801: .* from 1 to the 200 conv3 units x 4 regions$"),
        ("callbacks.handnet_schedule.hard_share=0", r"hard_share=0.*never hardens"),
        ("callbacks.handnet_schedule.choice_end=1.0", r"choice_end=1\.0.*never freezes"),
        ("callbacks.handnet_schedule.temperature_end=2.0", r"temperature must fall"),
        ("callbacks.handnet_schedule.shrink_curve=square", r"shrink_curve='square': allowed \['linear', 'cubic'\]$"),
    ],
)
def test_bad_settings_are_one_line_errors(override, message, tmp_path):
    with pytest.raises(UserInputError, match=message) as err:
        train(compose_cfg("train", ["+experiment=handnet_explainable", *override.split()], tmp_path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("curve", ["linear", "cubic"])
def test_kept_terms_fall_from_all_features_to_t(curve):
    """All features kept up to shrink_start, exactly T from shrink_end on, never rising between; the
    cubic curve cuts most of them early (half way it keeps T + (n - T) / 8, the linear T + (n - T) / 2)."""
    schedule = HandNetSchedule(shrink_start=0.2, shrink_end=0.6, shrink_curve=curve)
    n, t = 400, 12
    kept = [schedule.kept_terms(p / 100, n, t) for p in range(101)]
    assert kept[:21] == [n] * 21 and kept[60:] == [t] * 41
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    assert kept[40] == (t + (n - t) // 8 + 1 if curve == "cubic" else t + (n - t) // 2)


def test_shrinking_ranks_weight_times_spread():
    """A unit that never varies cannot tell digits apart: the shrink drops it before a smaller
    weight on a unit that does (the planted truth), whatever its |weight|."""
    torch.manual_seed(0)
    net = HandNet(extra_detectors=1, init="random")
    images = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        spread = net.features(images).std(0)
        varying, still = spread.argsort(descending=True)[:2].tolist()
        net.conv3.amplitude[still] = 0.0  # its output is the constant relu(bias)
        net.conv3.bias[still] = 1.0
        net.readout.weight.fill_(0.01)
        net.readout.weight[:, still] = 5.0
        net.readout.weight[:, varying] = 0.5
    shrink_readout(net, images, keep=1)
    assert net.readout.mask.sum(1).tolist() == [1.0] * 10
    assert (net.readout.mask[:, varying] == 1).all() and (net.readout.mask[:, still] == 0).all()


def test_a_width_trained_negative_is_written_as_used_and_rebuilds_the_same_net(tmp_path):
    """Training may leave a width parameter negative or 0 (the layers compute with |sigma|, at least MIN_SIGMA);
    the recipe file, which refuses a width <= 0, gets the width as used, and the net it rebuilds computes the
    same outputs."""
    torch.manual_seed(0)
    net = HandNet(n_bursts=2, n_orientations=8, edges=True, extra_detectors=5, init="random", cell_pixels=2)
    net.conv3.set_channel_mode("frozen")
    with torch.no_grad():
        net.conv3.sigma_y[3, 1] *= -1
        net.conv1.sigma[2] *= -1
        net.conv3.sigma_x[0, 0] = 0.0  # computed with MIN_SIGMA
    path = tmp_path / "learned_recipes.yaml"
    recipes = learned_recipes(net.eval(), exact=True)
    path.write_text(yaml.safe_dump(recipes, sort_keys=False))
    assert recipes["lines"][2]["sigma"] == abs(float(net.conv1.sigma[2])) > 0
    assert recipes["units"][3]["bursts"][1]["sigma_y"] == abs(float(net.conv3.sigma_y[3, 1])) > 0
    assert recipes["units"][0]["bursts"][0]["sigma_x"] == float(torch.tensor(MIN_SIGMA))
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(HandNet(recipes=str(path)).eval()(x), net(x))
