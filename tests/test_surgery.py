"""Channel surgery: the producer -> consumer table from the traced net, and exact channel removal."""

import pytest
import torch

from convdissect.errors import UserInputError
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.models.surgery import producer_consumer_table, prunable_layers, remove_channels

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


@pytest.mark.parametrize("variant", VARIANTS)
def test_removing_a_channel_with_zero_outgoing_weights_keeps_the_logits(variant):
    net = make_net(variant)
    table = producer_consumer_table(net)
    x = torch.randn(16, 1, 28, 28)
    for layer, consumer in table.items():
        dead = 2  # its outgoing weights are zeroed, so it contributes nothing downstream
        with torch.no_grad():
            net.get_submodule(consumer).weight[:, dead] = 0.0
            before = net(x)
        width = len(net.get_submodule(layer).weight)
        remove_channels(net, layer, [i for i in range(width) if i != dead], table)
        with torch.no_grad():
            after = net(x)
        assert net.get_submodule(layer).weight.shape[0] == width - 1
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert net.widths == [w - 1 for w in VARIANTS[variant]["widths"]]


def test_a_pruned_state_dict_rebuilds_by_its_shapes():
    net = make_net("conv2")
    remove_channels(net, "conv2", [7, 0, 3])  # any order: the kept channels come in this order
    remove_channels(net, "fc4", [5])
    state = net.state_dict()
    widths, conv2 = SimpleConvNet.widths_from_state_dict(state)
    assert widths == net.widths == [6, 3, 10, 1] and conv2
    fresh = SimpleConvNet(widths)
    fresh.load_state_dict(state)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), net(x))


def test_kept_channels_are_the_named_ones():
    net = make_net("conv2")
    original = net.conv1.weight.detach().clone()
    remove_channels(net, "conv1", [4, 1])
    torch.testing.assert_close(net.conv1.weight, original[[4, 1]])
    assert net.conv2.weight.shape[1] == 2


@pytest.mark.parametrize("keep", [[], [0, 0], [6], [-1]])
def test_bad_keep_lists_are_clear_errors(keep):
    with pytest.raises(UserInputError, match="channels to keep of conv1"):
        remove_channels(make_net("conv2"), "conv1", keep)


def test_the_logits_layer_is_not_prunable():
    net = make_net("conv2")
    assert prunable_layers(net) == ["conv1", "conv2", "conv3", "fc4"]
    with pytest.raises(UserInputError, match="'fc5' cannot be pruned"):
        remove_channels(net, "fc5", [0])
