"""Any nn.Module as the net through Hydra, and its loss: cross-entropy by default, on logits or
log-probabilities alike."""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict
from torch import nn

from convdissect.api import dissect_net
from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.checkpoint import load_net
from convdissect.models.lit_module import LitClassifier
from convdissect.models.simple_convnet import SimpleConvNet, equivalent_simple_convnet
from convdissect.models.zoo import LeNet5
from convdissect.train import train
from tests.helpers import FAST_NULLS, TINY, compose_cfg

# TINY without the SimpleConvNet's widths, three epochs of 30 batches: far above chance, in seconds.
SHORT = [o for o in TINY if not o.startswith("model.")] + [
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=30",
    "threads=1",
]
SMALL_NET = "convdissect.models.zoo.SmallConvNet"


def run(tmp_path, name: str, overrides=(), model: dict | None = None) -> dict:
    cfg = compose_cfg("train", SHORT + list(overrides), tmp_path / name)
    if model is not None:  # a user's class by its dotted path, in place of the model config
        with open_dict(cfg):
            cfg.model = OmegaConf.create(model)
    return train(cfg)


@pytest.mark.slow
def test_logits_and_log_probabilities_train_alike_with_no_flag(tmp_path, one_thread):
    logits = run(tmp_path, "logits", model={"_target_": SMALL_NET, "log_probs": False})
    log_probs = run(tmp_path, "log_probs", model={"_target_": SMALL_NET, "log_probs": True})
    assert logits["test/acc"] > 0.5  # nll_loss on logits, the old hard-coded loss, stays at chance
    assert logits["test/acc"] == pytest.approx(log_probs["test/acc"], abs=0.003)


@pytest.mark.slow
def test_nll_on_a_net_of_logits_is_a_clear_error(tmp_path, one_thread):
    with pytest.raises(UserInputError, match=r"model.loss=nll: the net returns logits, not log-probabilities"):
        run(tmp_path, "nll", model={"_target_": SMALL_NET, "loss": "nll"})


@pytest.mark.slow
def test_the_simple_convnet_trains_as_with_nll_and_keeps_its_keys(tmp_path, one_thread):
    default = run(tmp_path, "default", ["model.widths=[4,8,8,8]"])
    nll = run(tmp_path, "nll", ["model.widths=[4,8,8,8]", "model.loss=nll"])
    assert default["test/acc"] == pytest.approx(nll["test/acc"], abs=0.003)
    assert default["test/loss"] == pytest.approx(nll["test/loss"], abs=1e-4)
    state = torch.load(tmp_path / "default" / "model_state.pt", weights_only=True)
    assert list(state) == [
        f"{layer}.{p}" for layer in ("conv1", "conv2", "conv3", "fc4", "fc5") for p in ("weight", "bias")
    ]


@pytest.mark.slow
def test_an_nn_sequential_written_in_yaml_trains(tmp_path, one_thread):
    metrics = run(tmp_path, "sequential", ["model=sequential"])
    assert metrics["test/acc"] > 0.5
    state = torch.load(tmp_path / "sequential" / "model_state.pt", weights_only=True)
    assert list(state)[:2] == ["0.weight", "0.bias"] and state["7.weight"].shape == (10, 32)


def test_cross_entropy_on_log_probabilities_is_their_nll():
    torch.manual_seed(0)
    log_probs, labels = F.log_softmax(10 * torch.randn(64, 10), dim=1), torch.randint(0, 10, (64,))
    torch.testing.assert_close(F.cross_entropy(log_probs, labels), F.nll_loss(log_probs, labels), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "settings,match",
    [
        ({"loss": "mse"}, r"model.loss='mse': allowed \['cross_entropy', 'nll'\]"),
        ({"num_classes": 1}, "model.num_classes=1"),
    ],
)
def test_bad_loss_settings_are_one_line(settings, match):
    with pytest.raises(UserInputError, match=match):
        LitClassifier({"_target_": SMALL_NET}, None, **settings)


def test_a_net_with_another_number_of_outputs_than_num_classes_is_refused_on_its_first_batch():
    module = LitClassifier({"_target_": SMALL_NET, "num_classes": 10}, None, num_classes=5)
    batch = (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(UserInputError, match=r"model.num_classes=5: the net's outputs have shape \[4, 10\]"):
        module.training_step(batch, 0)


def article_net_as_sequential(net: SimpleConvNet, pool: type[nn.Module] = nn.MaxPool2d) -> nn.Sequential:
    """The SimpleConvNet's layers written as a user would write them, its weights copied."""
    c1, c2, c3, f4 = net.widths
    sequential = nn.Sequential(
        *(nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), pool(2)),
        *(nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), pool(2)),
        *(nn.Conv2d(c2, c3, 5), nn.ReLU(), pool(3)),
        *(nn.Flatten(), nn.Linear(c3, f4), nn.ReLU(), nn.Linear(f4, 10)),
    )
    sequential.load_state_dict(dict(zip(sequential.state_dict(), net.state_dict().values())))
    return sequential


def test_a_sequential_computing_the_article_net_is_read_as_it_and_no_other(data_dir):
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8])
    images = MNISTDataModule(data_dir=data_dir).tensors("val", 64)[0]
    found = equivalent_simple_convnet(article_net_as_sequential(net), images)
    assert found.widths == [4, 8, 8, 8] and found.state_dict().keys() == net.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(found.state_dict().values(), net.state_dict().values()))
    assert equivalent_simple_convnet(article_net_as_sequential(net, nn.AvgPool2d), images) is None
    assert equivalent_simple_convnet(LeNet5(), images) is None


@pytest.mark.slow
def test_the_article_net_as_a_sequential_gets_the_article_nets_labels_and_claims(tiny_run, tmp_path, one_thread):
    net = load_net(tiny_run[0] / "model_state.pt")
    quick = ["n_images=200", "fidelity.images=200", "superstimulus.enabled=false", "report.enabled=false"]
    expected = dissect_net(net, out_dir=tmp_path / "simple", overrides=[*quick, *FAST_NULLS])
    found = dissect_net(article_net_as_sequential(net), out_dir=tmp_path / "seq", overrides=[*quick, *FAST_NULLS])
    assert [u["label"] for u in found.labels["units"]] == [u["label"] for u in expected.labels["units"]]
    assert found.claims == expected.claims  # the article's claims, judged as for the net itself
