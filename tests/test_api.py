"""convdissect from Python: dissect_net on a net held in memory gives what dissect.py gives on its
checkpoint, and takes the user's own images; prune_net cuts the channels a criterion picks."""

import json

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from convdissect import dissect_net, prune_net
from convdissect.cli import run_dissect
from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.checkpoint import load_net
from convdissect.models.simple_convnet import SimpleConvNet
from tests.helpers import FAST_NULLS, compose_cfg

QUICK = ["n_images=200", "fidelity.images=200", "superstimulus.enabled=false", "report.enabled=false", *FAST_NULLS]


@pytest.mark.slow
def test_dissect_net_labels_a_net_in_memory_as_dissect_py_labels_its_file(tiny_run, tmp_path, one_thread):
    state = tiny_run[0] / "model_state.pt"
    run_dissect(
        compose_cfg("dissect", [f"ckpt_path={state}", "threads=1", *QUICK], tmp_path / "cli")
    )  # dissect.py's job
    d = dissect_net(load_net(state), out_dir=tmp_path / "api", overrides=QUICK)
    expected = json.loads((tmp_path / "cli" / "labels.json").read_text())
    # the file's run dir names each unit's channel before pruning; a net in memory has no history
    assert [u["label"] for u in d.labels["units"]] == [u["label"] for u in expected["units"]]
    assert d.claims["fidelity"] == json.loads((tmp_path / "cli" / "claims.json").read_text())["fidelity"]
    assert d.report is None and (tmp_path / "api" / "labels.json").is_file()


def test_dissect_net_takes_the_users_images_and_refuses_them_without_digits(tiny_run, data_dir, tmp_path, one_thread):
    net = load_net(tiny_run[0] / "model_state.pt")
    images, digits = MNISTDataModule(data_dir=data_dir).tensors("train", 150)
    with pytest.raises(UserInputError, match="digits: one class per image"):
        dissect_net(net, images, None, tmp_path / "refused", QUICK)
    d = dissect_net(net, images, digits, tmp_path / "own", QUICK + ["claims.ablation=false"])
    conv2 = [u for u in d.labels["units"] if u["layer"] == "conv2"]
    assert len(conv2) == 8 and all("fidelity" in u for u in conv2)
    assert torch.equal(
        MNISTDataModule(data_dir=data_dir).tensors("train", 150)[1], digits
    )  # the caller's tensors untouched
    # into the user's own SummaryWriter, read back from its event file
    with SummaryWriter(tmp_path / "events") as writer:
        d.to_tensorboard(writer)
    events = EventAccumulator(str(tmp_path / "events"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    assert events.Scalars("dissect/fidelity/conv2")[0].value == pytest.approx(d.claims["fidelity"]["conv2"]["median"])
    text = events.Tensors("dissect/labels/text_summary")[0].tensor_proto.string_val[0].decode()
    assert conv2[0]["label"] in text


def test_prune_net_keeps_the_channels_of_largest_variance_with_their_weights(data_dir, one_thread):
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8])
    images, digits = MNISTDataModule(data_dir=data_dir).tensors("val", 100)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    with torch.no_grad():  # by hand: the variance of what conv3 reads of each conv2 channel
        seen = F.max_pool2d(F.relu(net.conv2(F.max_pool2d(F.relu(net.conv1(images)), 2))), 2)
    expected = seen.transpose(0, 1).flatten(1).var(dim=1).argsort(descending=True)[:5].sort().values
    kept = prune_net(net, images, digits, {"conv2": 5}, "activation_variance")
    assert kept == {"conv2": expected.tolist()}
    assert torch.equal(net.conv2.weight, before["conv2.weight"][expected])
    assert torch.equal(net.conv3.weight, before["conv3.weight"][:, expected])
    assert net.widths == [4, 5, 8, 8] and net(images).shape == (100, 10)
    with pytest.raises(UserInputError, match=r"widths\['conv2'\]=9: must be an integer in 1\.\.5"):
        prune_net(net, images, digits, {"conv2": 9})
    with pytest.raises(UserInputError, match=r"need as many labels as images, at least one \(0, 0\)"):
        prune_net(net, images[:0], digits[:0], {"conv2": 4})
