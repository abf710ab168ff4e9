"""Any ConvNet, dissected: loaded from its run dir (rebuilt from the run's model node and cut to its
pruning's kept channels), measured through forward hooks, labelled, scored and reported. The nets
are ones we did not write for the article: LeNet-5, the ResidualNet and the YAML nn.Sequential."""

import itertools
import json

import pytest
import torch

from convdissect.analysis.activations import record
from convdissect.analysis.families import line_kernels
from convdissect.analysis.traced import trace
from convdissect.analysis.traced_measures import conv_contributions, measure_layers
from convdissect.api import dissect_net
from convdissect.data.mnist import MNISTDataModule
from convdissect.data.probes import stroke_images
from convdissect.dissect.any_net import OMEGA_SQUARED as OMEGA
from convdissect.errors import UserInputError
from convdissect.evaluate import evaluate
from convdissect.models.zoo import LeNet5, ResidualNet
from convdissect.pruning.rebuild import load_trained_net
from tests.helpers import (
    REPORT_FAST,
    Page,
    centred_pearson,
    compose_cfg,
    dissect_zoo_run,
    hand_conv_fidelity,
    train_zoo_run,
)

LENET = "convdissect.models.zoo.LeNet5"
RESIDUAL = "convdissect.models.zoo.ResidualNet"
# Each net's model config and the target widths of its prunable layers.
NETS = {
    "lenet": ({"_target_": LENET}, [4, 12, 60, 42]),
    "residual": ({"_target_": RESIDUAL}, [12]),
    "sequential": ("sequential", [12, 24]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each net trained, pruned by one step and retrained in a short real run: {name: (run dir, metrics)}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name in NETS:
        out[name] = train_zoo_run(tmp_path_factory.mktemp(name), *NETS[name])
    torch.set_num_threads(threads)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_a_pruned_net_of_any_class_loads_from_its_run_and_tests_as_it_trained(runs, name, tmp_path):
    run_dir, metrics = runs[name]
    net, spec = load_trained_net(run_dir / "model_state.pt")
    assert sum(p.numel() for p in net.parameters()) == metrics["pruning_history"][-1]["n_params"]
    same_test = ["trainer.limit_test_batches=2", "data.eval_batch_size=200", "threads=1"]  # the run's test images
    again = evaluate(compose_cfg("eval", [f"ckpt_path={run_dir / 'model_state.pt'}", *same_test], tmp_path))
    assert again["test/acc"] == metrics["test/acc"]


def test_an_unknown_state_dict_outside_a_run_dir_says_how_to_dissect_it(tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)).state_dict(), tmp_path / "net.pt")
    with pytest.raises(UserInputError, match=r"pass the net in Python \(convdissect.dissect_net\(net\)\)") as err:
        load_trained_net(tmp_path / "net.pt")
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_any_net_is_dissected_from_its_run_dir_with_a_report(runs, name, tmp_path):
    run_dir, metrics = runs[name]
    labels = dissect_zoo_run(run_dir, tmp_path)
    net, _ = load_trained_net(run_dir / "model_state.pt")
    layers = [n for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert labels["layers"] == layers and len(labels["units"]) == sum(labels["widths"])
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert set(claims["fidelity"]) == {n for n in layers if n in claims["fidelity"]} and claims["fidelity"]
    assert all(c["verdict"].startswith("not applicable") for c in claims["article_claims"].values())
    page = Page((tmp_path / "report.html").read_text())
    assert page.sections[1:] == layers and f"{layers[0]}_kernels.png" in page.images
    assert all(f"{layer}_superstimuli.png" in page.images for layer in layers)
    assert set(torch.load(tmp_path / "superstimuli.pt")) == set(layers)


# Each net's first conv and a later conv whose input channels are its source's channels (the
# ResidualNet's `left` reads the residual sum: its inputs are named (stem.0_j+block.3_j)).
PLANTED = {"lenet": ("features.0", "features.3"), "residual": ("stem.0", "left"), "sequential": ("0", "3")}


# The planted first conv's flat offset per cell: the line alone does not reach its printed fidelity.
OFFSET = 0.1


def planted_net(run_dir, name: str, copied: int):
    """The run's net with its first conv's unit 1 an exact vertical line of the family plus a flat offset,
    and its later conv's unit 1 a copy of input channel `copied` (the identity kernel on it, zeros elsewhere,
    no bias)."""
    net, _ = load_trained_net(run_dir / "model_state.pt")
    first, later = (net.get_submodule(layer) for layer in PLANTED[name])
    size = first.kernel_size[0]
    with torch.no_grad():
        first.weight[0, 0] = line_kernels(torch.tensor(torch.pi / 2), 0.45, 0.0, 1.0, "line", size) + OFFSET
        later.weight[0] = 0.0
        later.weight[0, copied, later.kernel_size[0] // 2, later.kernel_size[1] // 2] = 1.0
        later.bias[0] = 0.0
    return net


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_planted_truth_is_found(runs, name, tmp_path):
    run_dir, _ = runs[name]
    copied = 1
    labels = dissect_zoo_run(run_dir, tmp_path, planted_net(run_dir, name, copied), report=False)
    first, later = PLANTED[name]
    units = {u["name"]: u for u in labels["units"]}
    line = units[f"{first}_1"]
    assert line["label_terms"] == ["vertical line", "brightness"] and line["label"].startswith("vertical line + bright")
    assert line["fit_r2"] > 0.99 and line["fidelity"] > 0.99 and line["fidelity_shuffled"] < line["fidelity"]
    assert abs(line["tuned_orientation_deg"] - 90.0) <= 10.0  # its strongest response: a near-vertical stroke
    copy = units[f"{later}_1"]
    source = f"{first}_{copied + 1}" if name != "residual" else f"(stem.0_{copied + 1}+block.3_{copied + 1})"
    assert copy["drivers"][0]["input"] == source and copy["drivers"][0]["share"] == 1.0
    assert [(b["input"], b["notation"]) for b in copy["bursts"]] == [(source, "+[centre]")]
    assert copy["fidelity"] >= 0.99 and copy["label"].startswith(source)
    claims = json.loads((tmp_path / "claims.json").read_text())["fidelity"][first]
    assert claims["units"] == len([u for u in units.values() if u["layer"] == first])
    assert claims["shuffled"] is not None and claims["untrained"] is not None


def hand_linear_fidelity(
    layer, fit: torch.Tensor, scored: tuple, k: int, kept: list[int], blocks: int, activation
) -> float:
    """A Linear's unit k rebuilt from the blocks `kept` of its inputs, every other feature at its mean
    over the fit images, written out feature by feature; Pearson r of the outputs through `activation` on the
    scored images."""
    inputs, outputs = scored
    mean, size = fit.mean(dim=0), inputs.shape[1] // blocks
    simulated = torch.full((len(inputs),), float(layer.bias[k]))
    for f in range(inputs.shape[1]):
        simulated += layer.weight[k, f] * (inputs[:, f] if f // size in kept else mean[f])
    return centred_pearson(activation(simulated), activation(outputs[:, k]))


@pytest.mark.slow
@pytest.mark.parametrize("name", NETS)
def test_fidelity_agrees_with_a_hand_written_loop(runs, name, data_dir):
    run_dir, _ = runs[name]
    net, _ = load_trained_net(run_dir / "model_state.pt")
    images = MNISTDataModule(data_dir=data_dir).tensors("val", 200)[0]
    fit, scored = trace(net, images[:100]), trace(net, images[100:])
    measured = measure_layers(fit, scored)
    conv = next(i for i, m in enumerate(measured) if m.contributions is not None and m.traced.is_conv)
    linear = next(i for i, m in enumerate(measured) if not m.traced.is_conv)
    with torch.no_grad():
        for i, hand in ((conv, hand_conv_fidelity), (linear, hand_linear_fidelity)):
            m, t, s = measured[i], fit[i], scored[i]
            k = next(k for k, u in enumerate(m.programs.units) if u.activity == "varies")
            unit = m.programs.units[k]
            if hand is hand_conv_fidelity:
                kept = torch.zeros(t.layer.weight.shape[1:], dtype=torch.bool)
                for term in unit.terms[: unit.printed]:
                    kept[term.input] |= term.cells
                expected = hand(t.layer, (t.inputs, t.outputs), (s.inputs, s.outputs), k, kept, t.activate)
            else:
                kept = [term.input for term in unit.terms[: unit.printed]]
                expected = hand(t.layer, t.inputs, (s.inputs, s.outputs), k, kept, len(m.input_names), t.activate)
            assert unit.fidelity == pytest.approx(expected, abs=1e-4)


def test_inputs_after_an_add_or_a_concatenation_are_named_by_their_sources():
    torch.manual_seed(0)
    traced = {t.name: t for t in trace(ResidualNet(width=2), torch.randn(4, 1, 28, 28))}
    assert traced["block.0"].input_channels == ["stem.0_1", "stem.0_2"]  # through BatchNorm and ReLU modules
    assert traced["left"].input_channels == ["(stem.0_1+block.3_1)", "(stem.0_2+block.3_2)"]  # F.relu(x + block(x))
    assert traced["mix"].input_channels == ["left_1", "left_2", "right_1", "right_2", "right_3", "right_4"]
    assert traced["fc"].input_channels == [f"mix_{c}" for c in range(1, 5)]  # F.adaptive_avg_pool2d, flatten


@pytest.mark.slow
def test_batchnorm_folding_matches_the_unfolded_net(runs, data_dir):
    net, _ = load_trained_net(runs["residual"][0] / "model_state.pt")
    images = MNISTDataModule(data_dir=data_dir).tensors("val", 100)[0]
    traced = {t.name: t for t in trace(net, images)}
    recorded = record(net, images, ["stem.1", "block.1", "block.4"])  # the BatchNorms' own outputs
    for conv, bn in (("stem.0", "stem.1"), ("block.0", "block.1"), ("block.3", "block.4")):
        t = traced[conv]
        assert t.folded == bn
        with torch.no_grad():
            torch.testing.assert_close(t.layer(t.inputs), recorded[bn], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_dissect_net_takes_any_net_in_python(tmp_path, data_dir, one_thread):
    torch.manual_seed(0)
    net = LeNet5()  # untrained: the API needs no run dir
    images, digits = MNISTDataModule(data_dir=data_dir).tensors("val", 200)
    d = dissect_net(net, images, digits, tmp_path, overrides=[*REPORT_FAST, "threads=1"])
    assert d.labels["class"] == "LeNet5" and set(d.claims["fidelity"]) == set(d.labels["layers"])
    assert d.report is not None and (tmp_path / "features.0_kernels.png").is_file()


def swept_net(responds_to: str) -> torch.nn.Sequential:
    """A first conv, then a later conv whose one unit responds only to `responds_to` of a short stroke:
    "pattern": a vertical line detector copied by a 1x1 conv, read at its maximum over the map (anywhere);
    "position": the local brightness weighed by a ramp in x over the whole 28x28 map (one output cell)."""
    size = 1 if responds_to == "pattern" else 28
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 1, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(1, 1, size),
        torch.nn.Flatten(),
        torch.nn.Linear((29 - size) ** 2, 10),
    )
    with torch.no_grad():
        net[0].bias.zero_()
        net[2].bias.zero_()
        if responds_to == "pattern":
            net[0].weight[0, 0] = line_kernels(torch.tensor(torch.pi / 2), 0.45, 0.0, 1.0, "line", 5)
            net[2].weight.fill_(1.0)
        else:
            net[0].weight.fill_(1 / 25)
            net[2].weight[0, 0] = torch.linspace(-1, 1, size)[None].expand(size, -1)
    return net.eval()


@pytest.mark.parametrize("responds_to", ["pattern", "position"])
def test_omega_squared_of_a_planted_unit(responds_to, tmp_path, data_dir, one_thread):
    torch.manual_seed(0)
    images, digits = MNISTDataModule(data_dir=data_dir).tensors("val", 100)
    overrides = ["n_images=100", "fidelity.images=100", "report.enabled=false", "superstimulus.enabled=false"]
    d = dissect_net(swept_net(responds_to), images, digits, tmp_path, overrides=[*overrides, "threads=1"])
    unit = next(u for u in d.labels["units"] if u["layer"] == "2")
    other = "position" if responds_to == "pattern" else "pattern"
    assert unit[f"{responds_to}_index"] > 0.9 and abs(unit[f"{other}_index"]) < 0.05
    medians = d.claims["position_pattern"]["2"]
    assert medians[responds_to] == unit[f"{responds_to}_index"] and set(medians["untrained"]) == set(OMEGA)


def stroke_r2(image: torch.Tensor, angle_deg: float) -> float:
    """R² of a raw image [1, 28, 28] fitted (least squares) as a sum of 1-pixel strokes at angle_deg, one at
    every offset across the image: near 1 for stripes along that angle, near 0 across it."""
    strokes = stroke_images(angle_deg, thickness=1.0, offset=torch.arange(-14.0, 15.0), raw=True).flatten(1).T
    strokes = torch.cat([strokes, torch.ones(len(strokes), 1)], dim=1).double()
    y = image.flatten().double()
    fitted = strokes @ torch.linalg.lstsq(strokes, y[:, None]).solution
    return float(1 - (y - fitted[:, 0]).square().sum() / (y - y.mean()).square().sum())


def test_a_planted_line_units_superstimulus_is_made_of_strokes_along_its_line(tmp_path, data_dir, one_thread):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 5, padding=2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(24, 10),
    )
    with torch.no_grad():  # unit 1 a vertical line, unit 2 a horizontal one
        for k, angle in enumerate((torch.pi / 2, 0.0)):
            net[0].weight[k, 0] = line_kernels(torch.tensor(angle), 0.45, 0.0, 1.0, "line", 5)
            net[0].bias[k] = 0.0
    images, digits = MNISTDataModule(data_dir=data_dir).tensors("val", 100)
    overrides = ["n_images=100", "fidelity.images=100", "report.enabled=false", "superstimulus.steps=64"]
    d = dissect_net(net.eval(), images, digits, tmp_path, overrides=[*overrides, "threads=1"])
    stimuli = torch.load(tmp_path / "superstimuli.pt")
    assert list(stimuli) == ["0", "3", "7"] and [len(s) for s in stimuli.values()] == [4, 6, 10]
    # its superstimulus: stripes along the unit's line (the objective is the mean over positions)
    for k, (along, across) in enumerate(((90.0, 0.0), (0.0, 90.0))):
        assert stroke_r2(stimuli["0"][k], along) > 0.2 > 0.1 > stroke_r2(stimuli["0"][k], across)
    units = {u["name"]: u for u in d.labels["units"]}
    assert units["0_1"]["superstimulus_objective"] > units["0_1"]["best_image_objective"]
    assert all("superstimulus_objective" in u for u in units.values())


@pytest.mark.parametrize("activation", [torch.nn.Tanh, torch.nn.ReLU])
def test_contributions_are_summed_where_the_output_survives_its_nonlinearity(activation, data_dir):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        *(torch.nn.Conv2d(1, 2, 3, padding=1), activation(), torch.nn.Conv2d(2, 2, 3, padding=1), activation()),
        *(torch.nn.Flatten(), torch.nn.Linear(2 * 28 * 28, 10)),
    )
    images = MNISTDataModule(data_dir=data_dir).tensors("val", 20)[0]
    t = trace(net, images)[1]
    found = conv_contributions(t).cells.sum(dim=(2, 3))  # [Cout, Cin]
    # by hand: each input's part of the pre-activation, summed over every cell (Tanh) or the positive ones (ReLU)
    surviving = torch.ones_like(t.outputs) if activation is torch.nn.Tanh else (t.outputs > 0).float()
    for k, j in itertools.product(range(2), range(2)):
        part = torch.nn.functional.conv2d(
            t.inputs[:, j : j + 1] - t.blank_inputs[:, j : j + 1],
            net[2].weight.detach()[k : k + 1, j : j + 1],
            padding=1,
        )
        assert float(found[k, j]) == pytest.approx(
            float((part[:, 0] * surviving[:, k]).sum()) / len(images), rel=1e-4, abs=1e-6
        )


def test_a_7x7_first_conv_reads_its_planted_line_as_the_3x3_and_5x5_ones_do(data_dir):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        *(torch.nn.Conv2d(1, 4, 7, padding=3), torch.nn.ReLU(), torch.nn.MaxPool2d(2)),
        *(torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
        torch.nn.Linear(4, 10),
    )
    with torch.no_grad():
        net[0].weight[0, 0] = line_kernels(torch.tensor(torch.pi / 2), 0.45, 0.0, 1.0, "line", 7)
    images = MNISTDataModule(data_dir=data_dir).tensors("val", 200)[0]
    first = measure_layers(trace(net, images[:100]), trace(net, images[100:]))[0]
    assert first.fit.labels()[0] == "vertical line" and float(first.fit.r2[0]) > 0.99
    assert first.programs.units[0].fidelity > 0.99
