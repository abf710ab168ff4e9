"""Evaluating a checkpoint tests its own weights: Lightning .ckpt files (pruned or not) and model_state.pt."""

import json

import pytest
import torch

from convdissect.data.mnist import MNISTDataModule
from convdissect.evaluate import evaluate
from convdissect.models.lit_module import LitClassifier
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.train import train
from tests.helpers import PRUNE_TARGET, TINY, compose_cfg, run_python

EVAL = ["trainer.limit_test_batches=2", "data.eval_batch_size=200", "trainer.enable_progress_bar=false"]

pytestmark = pytest.mark.slow  # every test here trains, or tests, a net


def accuracy_by_hand(state: dict, data_dir: str) -> float:
    """The reference: the state_dict's SimpleConvNet on the first 400 test images, without Lightning."""
    net = SimpleConvNet(*SimpleConvNet.widths_from_state_dict(state))
    net.load_state_dict(state)
    x, y = MNISTDataModule(data_dir=data_dir).tensors("test", 400)
    with torch.no_grad():
        return (net.eval()(x).argmax(1) == y).float().mean().item()


def test_eval_of_the_tested_checkpoint_equals_the_runs_test_accuracy(pruned_run, tmp_path):
    out, metrics = pruned_run
    result = evaluate(compose_cfg("eval", EVAL + [f"ckpt_path={metrics['tested_checkpoint']}"], tmp_path))
    assert result["test/acc"] == metrics["test/acc"] and result["net"]["widths"] == PRUNE_TARGET
    assert json.loads((tmp_path / "metrics.json").read_text())["tested_checkpoint"] == metrics["tested_checkpoint"]


def test_eval_of_model_state_equals_the_runs_test_accuracy(pruned_run, tmp_path):
    out, metrics = pruned_run
    result = evaluate(compose_cfg("eval", EVAL + [f"ckpt_path={out / 'model_state.pt'}"], tmp_path))
    assert result["test/acc"] == metrics["test/acc"] and result["n_params"] == metrics["n_params"]


def test_eval_of_an_unpruned_checkpoint_tests_its_own_weights(pruned_run, tmp_path, data_dir):
    out, _ = pruned_run
    ckpt = out / "checkpoints" / "epoch_000.ckpt"  # before the first pruning step: the full net
    result = evaluate(compose_cfg("eval", EVAL + [f"ckpt_path={ckpt}"], tmp_path))
    state = {k.removeprefix("net."): v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()}
    assert result["net"]["widths"] == [4, 8, 8, 8]
    assert result["test/acc"] == pytest.approx(accuracy_by_hand(state, data_dir), abs=1e-6)


def test_train_fit_false_with_a_checkpoint_tests_it(pruned_run, tmp_path):
    """Before: fit=false ignored ckpt_path and tested (and saved) a freshly initialised net."""
    out, metrics = pruned_run
    result = train(compose_cfg("train", TINY + ["fit=false", f"ckpt_path={metrics['tested_checkpoint']}"], tmp_path))
    assert result["test/acc"] == metrics["test/acc"] and result["tested_checkpoint"] == metrics["tested_checkpoint"]


def test_checkpoint_hparams_are_plain_values(pruned_run):
    """Net, optimizer and scheduler are Hydra specs saved as plain values: a checkpoint loads with
    weights_only=True, and a pruned one rebuilds at its own widths."""
    out, metrics = pruned_run
    ckpt = torch.load(metrics["tested_checkpoint"], weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["net"]["_target_"] == "convdissect.models.simple_convnet.SimpleConvNet"
    assert hparams["optimizer"]["_target_"] == "torch.optim.AdamW" and hparams["optimizer"]["_partial_"] is True
    assert hparams["scheduler"]["_target_"] == "torch.optim.lr_scheduler.OneCycleLR"
    module = LitClassifier.load_from_checkpoint(metrics["tested_checkpoint"], weights_only=True)
    assert module.net.widths == PRUNE_TARGET
    # resizing: a module built at the full widths takes a pruned checkpoint's state (as when ckpt_path= resumes)
    module = LitClassifier(hparams["net"] | {"widths": [4, 8, 8, 8]}, hparams["optimizer"], hparams["scheduler"])
    module.on_load_checkpoint(ckpt)
    module.load_state_dict(ckpt["state_dict"])
    assert module.net.widths == PRUNE_TARGET and module.hparams.net["widths"] == PRUNE_TARGET


def test_eval_entry_point(pruned_run, tmp_path):
    out, metrics = pruned_run
    proc = run_python(
        "eval.py",
        f"ckpt_path={out / 'model_state.pt'}",
        *EVAL,
        f"hydra.run.dir={tmp_path}",
        "threads=1",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["test/acc"] == metrics["test/acc"] and written["tested_checkpoint"] == str(out / "model_state.pt")
