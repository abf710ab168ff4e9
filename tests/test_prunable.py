"""The producer -> consumer table from the traced net (the cuts: tests/test_cut.py)."""

import torch

from convdissect.models.prunable import producer_consumer_table, prunable_layers
from convdissect.models.simple_convnet import SimpleConvNet

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
