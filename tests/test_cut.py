"""Channel cuts through Torch-Pruning's DependencyGraph: exactly today's cuts on the SimpleConvNet,
and consistent cuts through BatchNorm, a residual add, a concatenation and a flatten."""

import pytest
import torch

from convdissect.errors import UserInputError
from convdissect.models.prunable import producer_consumer_table
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.models.zoo import ResidualNet
from convdissect.pruning.cut import cut_channels
from convdissect.train import train
from tests.helpers import TINY, compose_cfg

IMAGE = torch.zeros(1, 1, 28, 28)
VARIANTS = {
    "conv2": dict(widths=[6, 8, 10, 12], conv2=True),
    "no_conv2": dict(widths=[6, 10, 12], conv2=False),
}


def make_net(variant: str) -> SimpleConvNet:
    torch.manual_seed(0)
    return SimpleConvNet(**VARIANTS[variant])


def keep_lists(net) -> dict[str, torch.Tensor]:
    """Ascending kept channels of every prunable layer, as the pruning schedule gives them."""
    gen = torch.Generator().manual_seed(1)
    return {
        layer: torch.randperm(w, generator=gen)[: max(1, w // 2)].sort().values
        for layer, w in zip(producer_consumer_table(net), net.widths)
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_cut_is_bit_identical_to_slicing_the_kept_channels(variant):
    net = make_net(variant)
    keep = keep_lists(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cut_channels(net, keep, IMAGE)
    # As the cut before Torch-Pruning did: each layer keeps its kept rows and, of its input columns,
    # its producer's kept channels (conv3's map is 1x1, so fc4 reads one input per channel).
    layers = list(keep) + ["fc5"]
    assert list(net.state_dict()) == list(before)
    for i, layer in enumerate(layers):
        rows = keep.get(layer, torch.arange(10))
        weight = before[f"{layer}.weight"][rows]
        if i > 0:
            weight = weight[:, keep[layers[i - 1]]]
        assert torch.equal(net.state_dict()[f"{layer}.weight"], weight)
        assert torch.equal(net.state_dict()[f"{layer}.bias"], before[f"{layer}.bias"][rows])
    assert net.widths == [len(k) for k in keep.values()]


def test_a_cut_state_dict_rebuilds_by_its_shapes():
    net = make_net("conv2").eval()
    cut_channels(net, {"conv2": [0, 3, 7], "fc4": [5]}, IMAGE)
    state = net.state_dict()
    widths, conv2 = SimpleConvNet.widths_from_state_dict(state)
    assert widths == net.widths == [6, 3, 10, 1] and conv2
    fresh = SimpleConvNet(widths)
    fresh.load_state_dict(state)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), net(x))


def test_a_cut_keeps_training_mode_and_frozen_parameters():
    net = make_net("conv2").train()
    net.conv1.bias.requires_grad_(False)
    cut_channels(net, {"conv1": [0, 2]}, IMAGE)
    assert net.training and not net.conv1.bias.requires_grad and net.conv1.weight.requires_grad


def make_residual_net() -> ResidualNet:
    torch.manual_seed(0)
    net = ResidualNet(width=8)
    net.train()
    net(torch.randn(32, 1, 28, 28))  # BatchNorm running statistics that are not all alike
    return net.eval()


def test_a_cut_through_batchnorm_and_a_residual_add_keeps_them_consistent():
    net = make_residual_net()
    stem_bn = {k: v.clone() for k, v in net.stem[1].state_dict().items()}
    block_bn = {k: v.clone() for k, v in net.block[4].state_dict().items()}
    kept = [0, 3, 4, 7]
    cut_channels(net, {"stem.0": kept}, IMAGE)
    # The add ties the stem's channels to the block's last conv and BatchNorm: all four are cut alike.
    assert net.stem[0].out_channels == net.block[3].out_channels == net.block[0].in_channels == 4
    for bn, original in ((net.stem[1], stem_bn), (net.block[4], block_bn)):
        assert bn.num_features == 4
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(bn.state_dict()[name], original[name][kept])
    assert net.left.in_channels == net.right.in_channels == 4
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_cut_through_a_concatenation_removes_the_right_inputs():
    net = make_residual_net()
    x = torch.randn(4, 1, 28, 28)
    removed = [1, 6]  # of the right branch: its slice of the concatenation follows the 8 left channels
    with torch.no_grad():
        net.mix.weight[:, [8 + c for c in removed]] = 0.0  # channels read by nothing: the cut keeps the logits
        before = net(x)
    cut_channels(net, {"right": [c for c in range(16) if c not in removed]}, IMAGE)
    assert net.left.out_channels == 8 and net.right.out_channels == 14 and net.mix.in_channels == 22
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)


def test_a_cut_through_a_flatten_removes_each_channels_block_of_positions():
    net = make_residual_net()
    x = torch.randn(4, 1, 28, 28)
    removed = [0, 9]
    with torch.no_grad():
        for c in removed:  # after the 2x2 pool, channel c is the 4 inputs 4c .. 4c+3 of fc
            net.fc.weight[:, 4 * c : 4 * c + 4] = 0.0
        before = net(x)
    cut_channels(net, {"mix": [c for c in range(16) if c not in removed]}, IMAGE)
    assert net.fc.in_features == 14 * 4
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)


class ConcatFlattenNet(torch.nn.Module):
    """Two conv branches concatenated, then flattened straight into a Linear."""

    def __init__(self):
        super().__init__()
        self.left, self.right = torch.nn.Conv2d(1, 2, 3, stride=14), torch.nn.Conv2d(1, 3, 3, stride=14)
        self.fc = torch.nn.Linear(5 * 4, 10)

    def forward(self, x):
        return self.fc(torch.cat([self.left(x), self.right(x)], dim=1).flatten(1))


@pytest.mark.xfail(
    strict=True,
    reason="Torch-Pruning 1.6.1 gives a concatenation read through a flatten by a Linear no offsets (it takes "
    "the Linear's in_features for the concatenation's width), so a cut of one branch also cuts the other",
)
def test_a_cut_of_a_concatenation_flattened_into_a_linear():
    torch.manual_seed(0)
    net = ConcatFlattenNet()
    cut_channels(net, {"right": [0, 2]}, IMAGE)
    assert net.left.out_channels == 2 and net.fc.in_features == 4 * 4
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("keep", [[], [0, 0], [6], [-1]])
def test_bad_keep_lists_are_clear_errors(keep):
    with pytest.raises(UserInputError, match="channels to keep of conv1"):
        cut_channels(make_net("conv2"), {"conv1": keep}, IMAGE)


def test_the_logits_and_unknown_layers_are_refused():
    with pytest.raises(UserInputError, match="'fc5' cannot be pruned: its channels are the net's outputs"):
        cut_channels(make_net("conv2"), {"fc5": [0]}, IMAGE)
    with pytest.raises(UserInputError, match=r"'fc9' cannot be pruned: allowed a Conv2d or Linear layer"):
        cut_channels(make_net("conv2"), {"fc9": [0]}, IMAGE)


@pytest.mark.slow
def test_the_pruning_callback_prunes_an_nn_sequential_written_in_yaml(tmp_path, one_thread):
    overrides = [o for o in TINY if not o.startswith("model.")] + [
        "model=sequential",
        "callbacks=pruning",
        "trainer.max_epochs=3",
        "callbacks.pruning.target_widths=[4,8]",
        "callbacks.pruning.iterations=2",
        "callbacks.pruning.pretrain_epochs=1",
        "callbacks.pruning.calibration_size=200",
        "callbacks.pruning.eval_size=400",
        "threads=1",
    ]
    metrics = train(compose_cfg("train", overrides, tmp_path))
    assert [h["widths"] for h in metrics["pruning_history"]] == [[8, 16], [4, 8]]
    state = torch.load(tmp_path / "model_state.pt", weights_only=True)
    assert state["0.weight"].shape == (4, 1, 5, 5) and state["3.weight"].shape == (8, 4, 5, 5)
    assert state["7.weight"].shape == (10, 8)
    assert metrics["pruning_history"][-1]["val_acc_retrained"] > 0.2
