"""A depthwise-separable net with a dilated conv (convdissect.models.zoo.SeparableNet), through the same
steps as the other zoo nets (tests/test_any_net.py): trained, dissected from its run dir with a report,
its grouped and dilated convs measured like any other conv; pruned by one step (the depthwise conv
cut with the stem whose channels it carries) and reloaded from its run."""

import json

import pytest
import torch

from convdissect.analysis.traced import trace
from convdissect.analysis.traced_measures import measure_layers
from convdissect.data.mnist import MNISTDataModule
from convdissect.pruning.rebuild import load_trained_net
from tests.helpers import Page, dissect_zoo_run, hand_conv_fidelity, train_zoo_run

SEPARABLE = {"_target_": "convdissect.models.zoo.SeparableNet"}
# The prunable layers' target widths: stem (the depthwise conv, whose channels are the stem's, is cut with
# it), pointwise, dilated.
WIDTHS = [6, 12, 12]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The SeparableNet trained in a short real run (not pruned): (run dir, metrics)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = train_zoo_run(tmp_path_factory.mktemp("separable"), SEPARABLE)
    torch.set_num_threads(threads)
    return out


@pytest.mark.slow
def test_the_pruned_separable_net_loads_from_its_run(tmp_path, one_thread):
    run_dir, metrics = train_zoo_run(tmp_path, SEPARABLE, WIDTHS)
    net, _ = load_trained_net(run_dir / "model_state.pt")
    assert [net.stem.out_channels, net.depthwise.groups, net.pointwise.out_channels] == [6, 6, 12]
    assert sum(p.numel() for p in net.parameters()) == metrics["pruning_history"][-1]["n_params"]


@pytest.mark.slow
def test_the_separable_net_is_dissected_from_its_run_dir_with_a_report(run, tmp_path):
    run_dir, _ = run
    labels = dissect_zoo_run(run_dir, tmp_path)
    assert labels["layers"] == ["stem", "depthwise", "pointwise", "dilated", "fc"]
    measured = [u for u in labels["units"] if u["layer"] in ("depthwise", "dilated")]
    assert measured and all("fidelity" in u and not u["label"].startswith("not measured") for u in measured)
    for unit in (u for u in labels["units"] if u["layer"] == "depthwise"):  # each reads its own input only
        read = {d["input"] for d in unit["drivers"] + unit["inhibitors"]}
        assert read <= {f"stem_{unit['index']}"} and all(b["input"] == f"stem_{unit['index']}" for b in unit["bursts"])
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert {"depthwise", "dilated"} <= set(claims["fidelity"])
    page = Page((tmp_path / "report.html").read_text())
    assert page.sections[1:] == labels["layers"] and "dilated_superstimuli.png" in page.images


@pytest.mark.slow
def test_a_depthwise_unit_copying_its_input_has_it_as_its_only_driver(run, tmp_path):
    run_dir, _ = run
    net, _ = load_trained_net(run_dir / "model_state.pt")
    with torch.no_grad():  # depthwise unit 2 copies its one input, stem_2 (the identity kernel, no bias)
        net.depthwise.weight[1] = 0.0
        net.depthwise.weight[1, 0, 1, 1] = 1.0
        net.depthwise.bias[1] = 0.0
    labels = dissect_zoo_run(run_dir, tmp_path, net, report=False)
    copy = next(u for u in labels["units"] if u["name"] == "depthwise_2")
    assert copy["drivers"] == [{"input": "stem_2", "share": 1.0}] and copy["inhibitors"] == []
    assert [(b["input"], b["notation"]) for b in copy["bursts"]] == [("stem_2", "+[centre]")]
    assert copy["fidelity"] >= 0.99 and copy["label"].startswith("stem_2")


@pytest.mark.slow
def test_a_dilated_units_fidelity_agrees_with_a_hand_written_loop(run, data_dir):
    net, _ = load_trained_net(run[0] / "model_state.pt")
    images = MNISTDataModule(data_dir=data_dir).tensors("val", 200)[0]
    fit, scored = trace(net, images[:100]), trace(net, images[100:])
    i = [t.name for t in fit].index("dilated")
    m, t, s = measure_layers(fit, scored)[i], fit[i], scored[i]
    assert t.layer.dilation == (2, 2)
    k = next(k for k, u in enumerate(m.programs.units) if u.activity == "varies" and u.printed < len(u.terms))
    unit = m.programs.units[k]
    kept = torch.zeros(t.layer.weight.shape[1:], dtype=torch.bool)
    for term in unit.terms[: unit.printed]:
        kept[term.input] |= term.cells
    with torch.no_grad():
        expected = hand_conv_fidelity(t.layer, (t.inputs, t.outputs), (s.inputs, s.outputs), k, kept)
    assert unit.fidelity == pytest.approx(expected, abs=1e-4)
