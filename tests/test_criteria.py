"""Pruning criteria and the schedule's choice of channels, against references computed another way."""

import pytest
import torch
import torch.nn.functional as F

from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.prunable import producer_consumer_table
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.pruning.callback import PruningCallback
from convdissect.pruning.criteria import Calibration, score_layer
from convdissect.pruning.schedule import Schedule


@pytest.fixture(scope="module")
def val_images(data_dir):
    return MNISTDataModule(data_dir=data_dir).tensors("val", 64)


def calibrate(net, images, labels) -> Calibration:
    net.eval()
    return Calibration(net, producer_consumer_table(net), images, labels, torch.Generator().manual_seed(0))


def test_magnitude_is_the_lp_norm_of_each_out_channel(val_images):
    torch.manual_seed(0)
    net = SimpleConvNet([6, 8, 8, 8])
    cal = calibrate(net, *val_images)
    weight = net.conv2.weight.detach()  # [8, 6, 5, 5]
    by_hand_l1 = torch.tensor([sum(abs(float(v)) for v in weight[c].flatten()) for c in range(8)])
    l1, _ = score_layer(cal, "conv2", {"magnitude": 1.0}, {"magnitude": {"p": 1.0}})
    torch.testing.assert_close(l1, by_hand_l1)
    l2, _ = score_layer(cal, "fc4", {"magnitude": 1.0}, {"magnitude": {"p": 2.0}})
    torch.testing.assert_close(l2, net.fc4.weight.detach().square().sum(dim=1).sqrt())


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
@pytest.mark.parametrize("layer", ["conv1", "conv3", "fc4"])
def test_a_channel_with_no_weights_ranks_last(criterion, layer, val_images):
    torch.manual_seed(0)
    net = SimpleConvNet([6, 8, 8, 8])
    dead = 3
    with torch.no_grad():
        net.get_submodule(layer).bias += 1.0  # the other channels alive (not always cut by ReLU)
        net.get_submodule(layer).weight[dead] = 0.0
        net.get_submodule(layer).bias[dead] = 0.0  # outputs 0: removing it changes nothing
    scores, _ = score_layer(calibrate(net, *val_images), layer, {criterion: 1.0})
    assert scores[dead] == 0 and (scores[torch.arange(len(scores)) != dead] > 0).all(), scores


def test_taylor_is_the_derivative_of_each_images_loss_by_finite_differences(val_images):
    """|d L_i / d s| at s = 1, where s scales the channel as the next layer reads it, averaged
    over the images: the Taylor score by autograd, here by central differences in float64."""
    torch.manual_seed(0)
    net = SimpleConvNet([6, 8, 8, 8]).double().eval()
    images, labels = val_images
    images = images.double()
    layer, consumer = "conv2", "conv3"
    scores, _ = score_layer(calibrate(net, images, labels), layer, {"taylor": 1.0})

    def losses(channel: int, scale: float) -> torch.Tensor:
        def hook(module, args):
            x = args[0].clone()
            x[:, channel] *= scale
            return (x,)

        handle = net.get_submodule(consumer).register_forward_pre_hook(hook)
        with torch.no_grad():
            out = F.nll_loss(net(images), labels, reduction="none")
        handle.remove()
        return out

    h = 1e-4
    by_differences = torch.stack([((losses(c, 1 + h) - losses(c, 1 - h)) / (2 * h)).abs().mean() for c in range(8)])
    torch.testing.assert_close(scores.double(), by_differences, rtol=1e-5, atol=1e-9)
    assert by_differences.min() > 0


def test_taylor_leaves_the_parameters_gradients_alone(val_images):
    net = SimpleConvNet([6, 8, 8, 8])
    cal = calibrate(net, *val_images)
    score_layer(cal, "conv1", {"taylor": 1.0})
    assert all(p.grad is None for p in net.parameters())


def test_bad_magnitude_p_is_a_one_line_error():
    with pytest.raises(UserInputError, match=r"callbacks.pruning.magnitude_p=3: allowed 1 \(L1 norm\) or 2"):
        PruningCallback(criterion="magnitude", target_widths=[2, 2, 2, 2], magnitude_p=3)


# ---------------------------------------------------------------------- per layer or global


def test_global_scope_compares_layers_on_scale_free_scores():
    # Layer a: all channels alike (scale 100); layer b: four strong channels and two near zero.
    scores = {"a": torch.full((6,), 100.0), "b": torch.tensor([3.0, 3.0, 3.0, 3.0, 0.01, 0.01])}
    per_layer = Schedule(target_widths=[3, 3], iterations=1).keep(scores, [6, 6], 1)
    assert {k: v.tolist() for k, v in per_layer.items()} == {"a": [0, 1, 2], "b": [0, 1, 2]}
    # The same 6 channels in all, but b's strong ones beat a's average ones once divided by their layer's mean.
    ranked = Schedule(target_widths=[3, 3], iterations=1, scope="global").keep(scores, [6, 6], 1)
    assert {k: v.tolist() for k, v in ranked.items()} == {"a": [0, 1], "b": [0, 1, 2, 3]}


def test_global_scope_respects_each_layers_min_width():
    scores = {"a": torch.full((6,), 100.0), "b": torch.tensor([3.0, 3.0, 3.0, 3.0, 0.01, 0.01])}
    ranked = Schedule(target_widths=[3, 3], iterations=1, scope="global", min_width=[3, 1]).keep(scores, [6, 6], 1)
    assert [len(v) for v in ranked.values()] == [3, 3]
    # threshold: 1.0 x the median over both layers; b's weak channels fall below it, a keeps its floor
    ranked = Schedule(mode="threshold", threshold=1.0, scope="global", min_width=[2, 5]).keep(scores, [6, 6], 1)
    assert [len(v) for v in ranked.values()] == [6, 5]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scope="net"), r"callbacks.pruning.scope='net': allowed \['layer', 'global'\]"),
        (dict(min_width=[0, 2]), r"callbacks.pruning.min_width=\[0, 2\]: one width >= 1"),
    ],
)
def test_bad_scope_or_min_width_is_a_one_line_error(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        PruningCallback(target_widths=[2, 2, 2, 2], **kwargs)


def test_min_width_per_layer_needs_one_per_layer():
    with pytest.raises(UserInputError, match=r"min_width=\[1, 2\]: need one width per prunable layer \['a', 'b', 'c'"):
        Schedule(target_widths=[2, 2, 2], min_width=[1, 2]).check(["a", "b", "c"], [4, 4, 4])
    with pytest.raises(UserInputError, match=r"b target 2 is below its min_width 3"):
        Schedule(target_widths=[2, 2, 2], min_width=[1, 3, 1]).check(["a", "b", "c"], [4, 4, 4])
