"""HandNet: parametric layers, the recipe file, explanations from parameters, short real runs."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convdissect.analysis.families import burst_grids, line_kernels
from convdissect.config import CONFIG_DIR
from convdissect.data.mnist import MNISTDataModule
from convdissect.data.probes import stroke_images
from convdissect.errors import UserInputError
from convdissect.handnet.explanation import explain
from convdissect.handnet.net import HandNet
from convdissect.handnet.recipes import Part, load_recipes
from convdissect.train import train
from tests.helpers import HANDNET_FINETUNE, compose_cfg

FAMILY_PARAMS = {
    "conv1.theta",
    "conv1.sigma",
    "conv1.offset",
    "conv1.amplitude",
    "conv1.bias",
    "conv3.mean_x",
    "conv3.mean_y",
    "conv3.sigma_x",
    "conv3.sigma_y",
    "conv3.amplitude",
    "conv3.channel_logits",
    "conv3.bias",
    "readout.weight",
    "readout.bias",
}
QUIET = [
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "data.eval_batch_size=200",
    "trainer.limit_test_batches=2",
    "callbacks.explanation.roundtrip_images=300",  # not all 10k test images
    "threads=1",
]


def test_parameter_count_is_the_family_count():
    net = HandNet(n_orientations=8, edges=True, extra_detectors=3, n_bursts=2)
    c1, c3 = net.widths
    assert c1 == 8 * 3 and c3 == len(net.recipes.detectors) + 3
    assert {name for name, _ in net.named_parameters()} == FAMILY_PARAMS
    # theta, sigma, offset, amplitude; mean_x, mean_y, sigma_x, sigma_y, amplitude and a logit per conv1 channel
    per_line, per_burst = 4, 5 + c1
    expected = c1 * (per_line + 1) + c3 * 2 * per_burst + c3 + (c3 + 1) * 10
    assert sum(p.numel() for p in net.parameters()) == expected


def test_kernels_are_computed_from_the_family_parameters():
    net = HandNet(n_orientations=4, edges=True, init="random")
    c = net.conv1
    with torch.no_grad():
        c.offset.uniform_(-0.3, 0.3)
    edge = c.is_edge
    expected_lines = line_kernels(c.theta[~edge], c.sigma[~edge], c.offset[~edge], c.amplitude[~edge], "line")
    expected_edges = line_kernels(c.theta[edge], c.sigma[edge], c.offset[edge], c.amplitude[edge], "edge")
    torch.testing.assert_close(c.kernels()[~edge], expected_lines)
    torch.testing.assert_close(c.kernels()[edge], expected_edges)
    b = net.conv3
    b.set_channel_mode("frozen")
    grids = b.grids()
    for unit in range(b.amplitude.shape[0]):  # each burst's Gaussian, on its own channel
        expected = torch.zeros_like(grids[unit])
        for k in range(b.n_bursts):
            expected[b.channel[unit, k]] += burst_grids(
                b.mean_x[unit, k : k + 1],
                b.mean_y[unit, k : k + 1],
                b.sigma_x[unit, k : k + 1],
                b.sigma_y[unit, k : k + 1],
                b.amplitude[unit, k : k + 1],
            )
        torch.testing.assert_close(grids[unit], expected)


@pytest.mark.parametrize("init", ["random", "hand"])
def test_gradients_reach_every_parameter(init, data_dir):
    torch.manual_seed(0)
    net = HandNet(edges=True, extra_detectors=4, n_bursts=2, init=init, l1_readout=1e-3, l1_bursts=1e-3)
    net.conv3.set_channel_mode("soft")  # as training's schedule starts (a hand-built net comes frozen)
    x, y = MNISTDataModule(data_dir=data_dir).tensors("train", 64)
    if init == "hand":  # the hand-built readout ignores the extra units: one step gives them weight
        F.nll_loss(net(x), y).backward()
        with torch.no_grad():
            net.readout.weight -= 0.1 * net.readout.weight.grad
        net.zero_grad()
    (F.nll_loss(net(x), y) + net.penalty()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_top_horizontal_stroke_drives_the_top_horizontal_unit():
    net = HandNet()
    detectors = net.recipes.detectors
    top = detectors.index(Part("top", "horizontal"))
    stroke = stroke_images(0.0, thickness=2.5, center=(0.0, 8.0), length=14.0)  # y up: near the top
    with torch.no_grad():
        response = net.features(stroke)[0]
    assert response.argmax().item() == top
    assert response[top] > 0
    # The explanation, read from the parameters, names that unit so.
    conv3 = [u for u in explain(net)["units"] if u["layer"] == "conv3"]
    assert conv3[top]["label"] == "top(horizontal)"


def test_hand_built_net_is_far_above_chance(data_dir):
    x, y = MNISTDataModule(data_dir=data_dir).tensors("val", 1000)
    with torch.no_grad():
        acc = (HandNet()(x).argmax(1) == y).float().mean().item()
    assert acc > 0.5  # chance is 0.1; nothing here was fitted to data (the issue: above 50%)


def known_net() -> HandNet:
    """A net with a hand-set parameter set whose explanation is known."""
    net = HandNet(edges=True, n_bursts=2)
    with torch.no_grad():
        c = net.conv1
        c.theta[1], c.sigma[1], c.offset[1] = math.radians(45), 0.3, -0.2  # conv1_2
        # conv1_5, an edge; amplitude < 0 puts its positive lobe right of the centre line (the
        # normal of 90° points left): it fires on a stroke's left boundary.
        c.theta[4], c.sigma[4], c.offset[4], c.amplitude[4] = math.radians(90), 0.4, 0.0, -1.0
        b = net.conv3
        b.amplitude[0] = 0.0
        b.mean_x[0, 0], b.mean_y[0, 0], b.amplitude[0, 0], b.channel[0, 0] = 0.0, 2.0, 1.0, 0  # conv3_1 <- conv1_1
        b.mean_x[0, 1], b.mean_y[0, 1], b.amplitude[0, 1], b.channel[0, 1] = -2.0, -2.0, -0.6, 2  # conv3_1 <- conv1_3
        units = [
            net.recipes.detectors.index(Part(*p))
            for p in (("top", "horizontal"), ("middle", "horizontal"), ("middle", "vertical"))
        ]
        net.readout.weight[5] = 0.0
        net.readout.weight[5, units] = torch.tensor([1.3, 0.9, -0.4])
    return net


def test_explanation_of_a_known_parameter_set():
    labels = explain(known_net())
    units = {u["name"]: u for u in labels["units"]}
    assert units["conv1_1"]["sentence"] == "horizontal line, width 0.5, centred"
    assert units["conv1_2"]["sentence"] == "line at 45° (slope 1.00), width 0.3, shifted 0.2 to the lower right"
    assert units["conv1_5"]["sentence"] == "left side of a vertical line, width 0.4, centred"
    assert units["conv1_5"]["side"] == "left" and units["conv1_5"]["kind"] == "edge"
    assert units["conv3_1"]["sentence"] == (
        "+burst at 12 o'clock, distance 2, on conv1_1 (horizontal line); "
        "-burst at 7:30, distance 2√2, on conv1_3 (vertical line)"
    )
    assert units["conv3_1"]["label"] == "top(horizontal)"
    second = units["conv3_1"]["bursts"][1]
    assert (second["sign"], second["clock"], second["input"], second["input_label"]) == (
        "-",
        "7:30",
        "conv1_3",
        "vertical line",
    )
    assert second["distance"] == pytest.approx(2 * math.sqrt(2), abs=1e-3)
    assert units["digit_5"]["label"] == "5 = 1.3 top(horizontal) + 0.9 middle(horizontal) - 0.4 middle(vertical)"
    detectors = known_net().recipes.detectors
    expected = [
        detectors.index(Part(*p)) + 1 for p in (("top", "horizontal"), ("middle", "horizontal"), ("middle", "vertical"))
    ]
    assert [t["unit"] for t in units["digit_5"]["terms"]] == [f"conv3_{k}" for k in expected]


def write_recipes(tmp_path, edit) -> str:
    recipes = yaml.safe_load((CONFIG_DIR / "handnet" / "recipes.yaml").read_text())
    edit(recipes)
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(recipes, sort_keys=False))
    return str(path)


def test_unknown_pattern_is_a_clear_error(tmp_path):
    path = write_recipes(tmp_path, lambda r: r["digits"][5].append("top/wiggly"))
    with pytest.raises(UserInputError, match=r"digit 5.*unknown pattern 'wiggly'"):
        HandNet(recipes=path)


def test_unknown_position_is_a_clear_error(tmp_path):
    path = write_recipes(tmp_path, lambda r: r["digits"][7].append("upstairs/vertical"))
    with pytest.raises(UserInputError, match=r"digit 7.*unknown position 'upstairs'"):
        HandNet(recipes=path)


def test_unquoted_clock_is_a_clear_error(tmp_path):
    # What YAML makes of an unquoted 10:30 (base 60): the number 630.
    text = (CONFIG_DIR / "handnet" / "recipes.yaml").read_text().replace('"12:00"', "10:30", 1)
    path = tmp_path / "recipes.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=r"position 'top'.*630.*quote it: '10:30'"):
        HandNet(recipes=str(path))
    path = write_recipes(tmp_path, lambda r: r["digits"][5].append(630))
    with pytest.raises(UserInputError, match=r"digit 5.*630.*quote it"):
        HandNet(recipes=path)


def test_handcrafted_experiment_tests_and_explains_the_net_as_built(tmp_path):
    metrics = train(compose_cfg("train", ["+experiment=handnet_handcrafted", *QUIET], tmp_path))
    assert metrics["steps"] == 0 and metrics["n_params"] == sum(p.numel() for p in HandNet().parameters())
    assert metrics["test/acc"] > 0.3
    state = torch.load(tmp_path / "model_state.pt", weights_only=True)
    assert {"conv1.theta", "conv3.mean_x", "readout.weight"} <= set(state)
    torch.testing.assert_close(state["readout.weight"], HandNet().readout.weight)  # nothing was fitted

    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["net"] == "handnet" and labels["widths"] == metrics["widths"]
    by_layer = {layer: [u for u in labels["units"] if u["layer"] == layer] for layer in ("conv1", "conv3", "fc")}
    assert [len(by_layer[k]) for k in ("conv1", "conv3", "fc")] == [*metrics["widths"], 10]
    assert {"orientation_deg", "kind", "side", "fit_r2", "secondary_orientation_deg"} <= set(by_layer["conv1"][0])
    assert {"bursts", "position_index", "pattern_index"} <= set(by_layer["conv3"][0])
    assert set(by_layer["conv3"][0]["bursts"][0]) >= {"sign", "clock", "distance", "input", "input_label"}
    assert by_layer["fc"][5]["name"] == "digit_5" and by_layer["fc"][5]["label"].startswith("5 = ")
    assert by_layer["fc"][5]["terms"][0]["unit"].startswith("conv3_")
    text = (tmp_path / "explanation.md").read_text()
    digit_5 = next(line for line in text.splitlines() if line.startswith("- **digit_5**"))
    assert all(f"{t['unit']} {t['label']}" in digit_5 for t in by_layer["fc"][5]["terms"])
    assert f"- **conv3_1** {by_layer['conv3'][0]['label']}" in text

    tags = set()
    for events in (tmp_path / "tensorboard").rglob("events.out.tfevents*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["tensors"])
    assert any(tag.startswith("explanation") for tag in tags)


@pytest.mark.slow
def test_finetune_trains_only_the_family_parameters(handnet_finetuned):
    out, metrics = handnet_finetuned
    assert metrics["steps"] == 3 and 0.0 <= metrics["test/acc"] <= 1.0
    state = torch.load(out / "model_state.pt", weights_only=True)
    spec = compose_cfg("train", HANDNET_FINETUNE).model
    start = HandNet(**{k: v for k, v in spec.items() if k != "_target_"}).state_dict()
    assert set(state) == set(start)
    assert not torch.equal(state["conv1.theta"], start["conv1.theta"])  # trained ...
    assert not torch.equal(state["conv3.mean_x"], start["conv3.mean_x"])
    assert (out / "labels.json").exists()


def test_sweep_space_names_real_model_options():
    space = yaml.safe_load((CONFIG_DIR / "sweep" / "handnet.yaml").read_text())["hydra"]["sweeper"]["params"]
    for key, values in space.items():
        for value in str(values).split(","):
            cfg = compose_cfg("train", ["+experiment=handnet_finetune", f"{key}={value}"])
            net = HandNet(**{k: v for k, v in cfg.model.items() if k not in ("_target_", "recipes")})
            assert net.widths[0] == len(net.conv1.theta) and net.conv3.n_bursts == cfg.model.n_bursts * net.widths[0]


def test_a_malformed_recipe_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "recipes.yaml"
    bad.write_text("digits: [unclosed\n")
    with pytest.raises(UserInputError, match="not valid YAML") as err:
        load_recipes(bad)
    assert "\n" not in str(err.value)
