"""Any ConvNet, dissected: loaded from its run dir (rebuilt from the run's model node and cut to its
pruning's kept channels), measured through forward hooks, labelled, scored and reported. The nets
are ones we did not write for the article: LeNet-5, the ResidualNet and the YAML nn.Sequential."""

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from convdissect.errors import UserInputError
from convdissect.evaluate import evaluate
from convdissect.pruning.rebuild import load_trained_net
from convdissect.train import train
from tests.helpers import TINY, compose_cfg

LENET = "convdissect.models.zoo.LeNet5"
RESIDUAL = "convdissect.models.zoo.ResidualNet"
# A few hundred steps' worth of tiny training, then one pruning step and one epoch of retraining.
QUICK = [o for o in TINY if not o.startswith("model.")] + [
    "callbacks=pruning",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=40",
    "callbacks.pruning.iterations=1",
    "callbacks.pruning.pretrain_epochs=1",
    "callbacks.pruning.calibration_size=200",
    "callbacks.pruning.eval_size=400",
]
# Each net's model config and the target widths of its prunable layers.
NETS = {
    "lenet": ({"_target_": LENET}, [4, 12, 60, 42]),
    "residual": ({"_target_": RESIDUAL}, [12]),
    "sequential": ("sequential", [12, 24]),
}


def train_run(out, name: str):
    """A short real run of NETS[name] into out, its config saved as the Hydra app saves it: (out, metrics)."""
    model, widths = NETS[name]
    overrides = QUICK + [f"callbacks.pruning.target_widths=[{','.join(map(str, widths))}]"]
    if isinstance(model, str):
        overrides.append(f"model={model}")
    cfg = compose_cfg("train", overrides, out)
    if isinstance(model, dict):  # a class by its dotted path, in place of the model config
        with open_dict(cfg):
            cfg.model = OmegaConf.create(model)
    metrics = train(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out, metrics


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each net trained, pruned by one step and retrained in a short real run: {name: (run dir, metrics)}."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for name in NETS:
        out[name] = train_run(tmp_path_factory.mktemp(name), name)
    torch.set_num_threads(threads)
    return out


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
