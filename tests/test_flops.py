"""FLOPs per image: Lightning's measure_flops against a count by hand, and after a cut."""

import runpy
import sys

import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.pruning.cost import flops_per_image
from convdissect.pruning.cut import cut_channels
from convdissect.train import build_module
from tests.helpers import CHECKOUT, compose_cfg

IMAGE = torch.zeros(1, 1, 28, 28)


def macs_by_hand(c1: int, c2: int, c3: int, f4: int) -> int:
    """Multiply-adds of the SimpleConvNet's conv and linear layers for one 28x28 image."""
    conv1 = 28 * 28 * c1 * (1 * 5 * 5)  # padding 2: 28x28 outputs
    conv2 = 14 * 14 * c2 * (c1 * 5 * 5)  # after pool 2, padding 2
    conv3 = 3 * 3 * c3 * (c2 * 5 * 5)  # after pool 2: 7x7, no padding: 3x3
    fc4 = c3 * f4  # after pool 3: 1x1
    fc5 = f4 * 10
    return conv1 + conv2 + conv3 + fc4 + fc5


def test_the_full_and_the_pruned_net_match_the_count_by_hand():
    for widths in ([32, 64, 128, 128], [8, 16, 24, 16]):
        assert flops_per_image(SimpleConvNet(widths), IMAGE) == 2 * macs_by_hand(*widths)
    assert macs_by_hand(32, 64, 128, 128) == 12_523_264


def test_a_net_after_a_cut_costs_what_a_fresh_net_of_its_widths_costs():
    torch.manual_seed(0)
    net = SimpleConvNet([6, 8, 10, 12])
    cut_channels(net, {"conv2": [0, 3, 5], "fc4": [1]}, IMAGE)
    assert net.widths == [6, 3, 10, 1]
    fresh = SimpleConvNet([6, 3, 10, 1])
    assert flops_per_image(net, IMAGE) == flops_per_image(fresh, IMAGE) == 2 * macs_by_hand(6, 3, 10, 1)


def test_count_flops_script_agrees_with_the_count_by_hand(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["count_flops.py", "32,64,128,128", "8,16,24,16"])
    runpy.run_path(str(CHECKOUT / "benchmarks" / "count_flops.py"), run_name="__main__")
    printed = capsys.readouterr().out
    for widths in ([32, 64, 128, 128], [8, 16, 24, 16]):
        macs = macs_by_hand(*widths)
        assert f"by layer shapes: {macs:,} MACs = {2 * macs:,} FLOPs; measure_flops: {2 * macs:,} FLOPs" in printed


def test_lightnings_model_summary_shows_the_nets_flops(tmp_path):
    module = build_module(compose_cfg("train", ["model.widths=[8,16,24,16]"], tmp_path))
    summary = ModelSummary(module)
    assert summary.total_flops == 2 * macs_by_hand(8, 16, 24, 16)  # Lightning gave 0 without an example input
    assert "1.7 M" in str(summary)
