"""The producer -> consumer table from the traced net (the cuts: tests/test_cut.py)."""

import torch

from convdissect.models.prunable import producer_consumer_table, prunable_layers
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.models.zoo import SeparableNet

VARIANTS = {
    "conv2": dict(widths=[6, 8, 10, 12], conv2=True),
    "no_conv2": dict(widths=[6, 10, 12], conv2=False),
}


def make_net(variant: str) -> SimpleConvNet:
    torch.manual_seed(0)
    return SimpleConvNet(**VARIANTS[variant]).eval()


def test_table_follows_the_forward_pass():
    assert producer_consumer_table(make_net("conv2")) == {
        "conv1": "conv2",
        "conv2": "conv3",
        "conv3": "fc4",
        "fc4": "fc5",
    }
    assert producer_consumer_table(make_net("no_conv2")) == {"conv1": "conv3", "conv3": "fc4", "fc4": "fc5"}


def test_the_logits_layer_is_not_prunable():
    assert prunable_layers(make_net("conv2")) == ["conv1", "conv2", "conv3", "fc4"]


def test_a_depthwise_conv_passes_its_inputs_channels_on_and_a_grouped_one_is_not_cut():
    assert producer_consumer_table(SeparableNet()) == {"stem": "pointwise", "pointwise": "dilated", "dilated": "fc"}
    grouped = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(576, 10)
    )
    assert producer_consumer_table(grouped) == {}  # the grouped conv's input is tied to it, its output never cut
