"""Short real training runs through train(): outputs, TensorBoard, checkpoints, DDP, bad input."""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict
from torch.multiprocessing.spawn import ProcessExitedException

from convdissect.config import REPO_ROOT, instantiate
from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.lit_module import LitClassifier
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.tensorboard_events import accumulators, hparams_of
from convdissect.train import build_module, build_trainer, train
from tests.helpers import TINY, compose_cfg


def scalar_tags(log_dir: Path) -> set[str]:
    return {tag for acc in accumulators(log_dir) for tag in acc.Tags()["scalars"]}


def hparams_tags(log_dir: Path) -> set[str]:
    tags = set()
    for acc in accumulators(log_dir):
        try:
            tags |= set(acc.PluginTagToContent("hparams"))
        except KeyError:  # an event file without hparams
            pass
    return tags


@pytest.mark.slow
def test_run_writes_its_outputs(tiny_run):
    out, metrics = tiny_run
    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics
    assert 0.0 <= written["test/acc"] <= 1.0 and written["test/loss"] > 0
    assert written["widths"] == [4, 8, 8, 8] and written["epochs"] == 2
    assert written["n_params"] == sum(p.numel() for p in SimpleConvNet([4, 8, 8, 8]).parameters())
    assert {"wall_s", "experiment", "overrides", "device", "torch_version", "lightning_version"} <= set(written)
    assert {"val/acc", "val/loss", "train/acc", "test/acc"} <= scalar_tags(out / "tensorboard")
    # the hparams view: the run's hyperparameters with its final metrics
    assert {"_hparams_/session_start_info", "_hparams_/experiment"} <= hparams_tags(out / "tensorboard")


@pytest.mark.slow
def test_model_state_is_the_tested_net(tiny_run, data_dir):
    out, metrics = tiny_run
    state = torch.load(out / "model_state.pt", weights_only=True)
    assert list(state) == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "conv3.weight",
        "conv3.bias",
        "fc4.weight",
        "fc4.bias",
        "fc5.weight",
        "fc5.bias",
    ]
    net = SimpleConvNet(*SimpleConvNet.widths_from_state_dict(state))
    net.load_state_dict(state)
    x, y = MNISTDataModule(data_dir=data_dir).tensors("test", 400)  # limit_test_batches=2 x 200
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(metrics["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_checkpoint_round_trip_gives_the_same_test_accuracy(tiny_run, data_dir):
    out, metrics = tiny_run
    module = LitClassifier.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert module.net.widths == [4, 8, 8, 8]
    trainer = L.Trainer(accelerator="cpu", logger=False, limit_test_batches=2, enable_progress_bar=False)
    (result,) = trainer.test(module, datamodule=MNISTDataModule(data_dir=data_dir, eval_batch_size=200))
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)


def val_acc_steps(log_dir: Path) -> list[int]:
    return [
        e.step for acc in accumulators(log_dir) if "val/acc" in acc.Tags()["scalars"] for e in acc.Scalars("val/acc")
    ]


@pytest.mark.slow
def test_ckpt_path_resumes_mid_run(tiny_run, tmp_path):
    out, _ = tiny_run
    cfg = compose_cfg(
        "train", TINY + ["trainer.max_epochs=2", f"ckpt_path={out / 'checkpoints' / 'epoch_000.ckpt'}"], tmp_path
    )
    metrics = train(cfg)
    assert metrics["epochs"] == 2 and metrics["steps"] == 16
    assert val_acc_steps(out / "tensorboard") == [7, 15]  # the full run validated twice
    assert val_acc_steps(tmp_path / "tensorboard") == [15]  # the resumed one only the second epoch


class RecordFirstBatch(L.Callback):
    """Writes each rank's first training labels, to check that ranks see distinct data."""

    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            torch.save(batch[1].cpu(), Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


def ddp_run(run_dir):
    overrides = ["trainer=ddp_sim", "trainer.strategy=ddp_fork", "trainer.limit_train_batches=3"]
    cfg = compose_cfg("train", TINY + overrides, run_dir)
    with open_dict(cfg):
        cfg.callbacks.record = {"_target_": "tests.test_train.RecordFirstBatch", "out_dir": str(run_dir)}
    return train(cfg)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    """The run forks its 2 ranks: trainer=ddp_sim's spawn re-imports everything in each (12 s more). What
    spawn sends each rank, the trainer with its callbacks and loggers, the module and the data, must pickle."""
    spawned = compose_cfg("train", TINY + ["trainer=ddp_sim"], tmp_path / "spawned")
    pickle.dumps((build_trainer(spawned, tmp_path / "spawned"), build_module(spawned), instantiate(spawned.data)))
    try:
        metrics = ddp_run(tmp_path)
    except ProcessExitedException as err:
        # torch's gloo teardown now and then aborts a spawned process as it exits ("terminate called
        # without an active exception", seen once in 4 suite runs on a loaded machine): one fresh try
        if err.signal_name != "SIGABRT":
            raise
        tmp_path = tmp_path / "second_try"
        metrics = ddp_run(tmp_path)
    assert 0 <= metrics["test/acc"] <= 1 and (tmp_path / "model_state.pt").exists()
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert len(rank0) == len(rank1) == 64 and not torch.equal(rank0, rank1)


@pytest.mark.parametrize("widths", ["[8,16,0,16]", "[8,16,24]", "[-1,16,24,16]"])
def test_bad_widths_are_clear_errors(widths, tmp_path):
    cfg = compose_cfg("train", TINY + [f"model.widths={widths}"], tmp_path)
    with pytest.raises(UserInputError, match=r"model\.widths="):
        train(cfg)


# ---------------------------------------------------------------------- nothing silently wrong

# A pruning run whose batches are shuffled differently every epoch: 2 steps (epochs 1 and 2), 2 final epochs.
PRUNE_RESUME = TINY + [
    "callbacks=pruning",
    "trainer.max_epochs=4",
    "callbacks.pruning.target_widths=[2,4,4,4]",
    "callbacks.pruning.iterations=2",
    "callbacks.pruning.pretrain_epochs=1",
    "callbacks.pruning.calibration_size=200",
    "callbacks.pruning.eval_size=400",
    "+callbacks.model_checkpoint.save_top_k=-1",
    "test_ckpt=null",  # test (and save) the final weights: both runs end with the same ones
    "threads=1",  # bit-identical weights need one CPU thread
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train(compose_cfg("train", PRUNE_RESUME, out))


@pytest.mark.slow
@pytest.mark.parametrize("boundary", ["epoch_000", "epoch_001", "epoch_002"])
def test_resumed_run_equals_the_uninterrupted_one(uninterrupted, boundary, tmp_path):
    """A run killed at an epoch boundary left that epoch's checkpoint (the uninterrupted run's own,
    as training is deterministic on one CPU thread); a new Trainer resumes it with ckpt_path. It
    must keep the same channels at every pruning step and end with the same weights, bit for bit
    (before the fix, the resumed epochs replayed the shuffle of epochs 0, 1, ...)."""
    full_dir, full = uninterrupted
    resumed = train(
        compose_cfg("train", PRUNE_RESUME + [f"ckpt_path={full_dir / 'checkpoints' / f'{boundary}.ckpt'}"], tmp_path)
    )
    assert [h["kept_channels"] for h in resumed["pruning_history"]] == [
        h["kept_channels"] for h in full["pruning_history"]
    ]
    a = torch.load(full_dir / "model_state.pt", weights_only=True)
    b = torch.load(tmp_path / "model_state.pt", weights_only=True)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test/acc"] == full["test/acc"] and resumed["steps"] == full["steps"]


@pytest.mark.slow
def test_a_run_resumed_mid_epoch_equals_the_uninterrupted_one(tmp_path, one_thread):
    """A checkpoint every 5 steps (Lightning's every_n_train_steps), resumed 5 steps into the second of two
    20-step epochs: the same weights, bit for bit, as the run never stopped (Lightning warns that our
    loader is not resumable; measured, the resumed epoch trains the batches the stopped one had left)."""
    every_5_steps = TINY + [
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=20",
        "+callbacks.model_checkpoint.every_n_train_steps=5",
        "+callbacks.model_checkpoint.save_top_k=-1",
        "callbacks.model_checkpoint.filename='s{step:03d}'",
    ]
    train(compose_cfg("train", every_5_steps, tmp_path / "full"))
    mid_epoch = tmp_path / "full" / "checkpoints" / "s025.ckpt"
    assert torch.load(mid_epoch, weights_only=True)["epoch"] == 1
    train(compose_cfg("train", every_5_steps + [f"ckpt_path={mid_epoch}"], tmp_path / "resumed"))
    a, b, c = (
        torch.load(path, weights_only=True)["state_dict"]
        for path in (
            tmp_path / "full" / "checkpoints" / "last.ckpt",
            tmp_path / "resumed" / "checkpoints" / "last.ckpt",
            mid_epoch,
        )
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(c["net.fc5.weight"], a["net.fc5.weight"])  # the resumed run did train on


def test_fit_false_with_nothing_to_load_is_an_error(tmp_path):
    with pytest.raises(
        UserInputError, match="fit=false with nothing to load: the net would be tested at its random initialisation"
    ):
        train(compose_cfg("train", TINY + ["fit=false"], tmp_path))
    assert not (tmp_path / "model_state.pt").exists()


def test_zero_epochs_is_an_error_before_the_fit(tmp_path):
    with pytest.raises(UserInputError, match=r"trainer\.max_epochs=0: a fit needs at least 1 epoch"):
        train(compose_cfg("train", TINY + ["trainer.max_epochs=0"], tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize(
    "override,match",
    [
        ("data.batch_size=100000", r"data\.batch_size=100000: more than the 55000 training images"),
        ("trainer.limit_train_batches=0", r"the fit took no optimizer step .*nothing was trained"),
    ],
)
def test_a_fit_that_trains_nothing_is_an_error(override, match, tmp_path):
    with pytest.raises(UserInputError, match=match):
        train(compose_cfg("train", TINY + [override], tmp_path))
    assert not (tmp_path / "metrics.json").exists()


def test_non_finite_weights_are_refused(tmp_path):
    state = SimpleConvNet([4, 8, 8, 8]).state_dict()
    state["conv3.bias"][2] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(UserInputError, match=r"model\.init_from=.*nan\.pt: tensor conv3\.bias holds NaN or inf values"):
        build_module(compose_cfg("train", TINY + [f"model.init_from={tmp_path / 'nan.pt'}"], tmp_path))


@pytest.mark.slow
def test_a_nan_loss_stops_the_run(tmp_path):
    with pytest.raises(UserInputError, match=r"training loss became nan at epoch 0, batch \d+ \(global step \d+\)"):
        train(compose_cfg("train", TINY + ["optimizer.lr=1e30", "scheduler=null"], tmp_path))
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("pct_start", [0.2, 0.25, 0.5, 0.9])
def test_one_cycle_runs_for_any_number_of_steps(pct_start):
    """OneCycleLR divides by its warm-up length pct_start * steps - 1, zero for 5 steps at 0.2."""
    module = LitClassifier(
        {"_target_": "convdissect.models.simple_convnet.SimpleConvNet", "widths": [2, 2, 2, 2]},
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "_partial_": True, "max_lr": 0.1, "pct_start": pct_start},
    )
    for steps in range(1, 13):
        opt, sched = module._optimizers(steps)
        for _ in range(steps):
            opt.step()
            sched.step()
        assert sched.last_epoch == steps


@pytest.mark.slow
def test_one_cycle_with_five_steps_left_at_a_pruning_step(tmp_path):
    cfg = compose_cfg(
        "train",
        TINY
        + [
            "callbacks=pruning",
            "trainer.limit_train_batches=5",
            "trainer.max_epochs=2",
            "callbacks.pruning.pretrain_epochs=1",
            "callbacks.pruning.iterations=1",
            "callbacks.pruning.target_widths=[2,4,4,4]",
            "callbacks.pruning.calibration_size=200",
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert metrics["steps"] == 10 and metrics["widths"] == [2, 4, 4, 4]


def test_default_run_dirs_name_the_microsecond_and_the_process():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO_ROOT / "conf")):
        hcfg = compose("train", [], return_hydra_config=True)
    for run_dir in (hcfg.hydra.run.dir, hcfg.hydra.sweep.dir):
        assert re.search(rf"/\d{{4}}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{{6}}_{os.getpid()}$", run_dir), run_dir


@pytest.mark.slow
def test_two_runs_started_together_write_their_own_dirs(tmp_path):
    command = [
        sys.executable,
        "train.py",
        *TINY,
        "trainer.limit_train_batches=2",
        f"paths.log_dir={tmp_path}",
        "threads=1",
    ]
    procs = [
        subprocess.Popen(command + [f"seed={seed}"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for seed in (1, 2)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = sorted((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 2
    seeds = sorted(json.loads((run / "metrics.json").read_text())["overrides"][-1] for run in runs)
    assert seeds == ["seed=1", "seed=2"] and all(
        sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"] for run in runs
    )


@pytest.mark.slow
def test_a_finished_run_dir_is_refused_unless_overwrite(tiny_run, tmp_path):
    out, _ = tiny_run
    with pytest.raises(UserInputError, match=f"hydra.run.dir={out} already holds a finished run .*overwrite=true"):
        train(compose_cfg("train", TINY, out))
    shutil.copytree(out, tmp_path / "run")
    metrics = train(compose_cfg("train", TINY + ["overwrite=true", "seed=5"], tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch_000.ckpt",
        "last.ckpt",
    ]  # no last-v1
    assert val_acc_steps(tmp_path / "run" / "tensorboard") == [7]  # the old run's events are gone


@pytest.mark.slow
def test_hparams_describe_the_whole_run(uninterrupted):
    """A pruning sweep compares runs in TensorBoard's HParams tab on every setting of the composed
    config (callbacks.pruning.* included) and on the final net."""
    out, metrics = uninterrupted
    values, metric_tags = hparams_of(out / "tensorboard")
    assert values["callbacks.pruning.criterion"] == "activation_variance"
    assert values["callbacks.pruning.target_widths"] == "[2, 4, 4, 4]" and values["callbacks.pruning.iterations"] == 2
    assert values["optimizer._target_"] == "torch.optim.AdamW" and values["model.widths"] == "[4, 8, 8, 8]"
    assert values["experiment"] == "train" and values["trainer.max_epochs"] == 4
    assert {"test/acc", "val/acc_best", "final/n_params", "final/width_conv1", "final/width_fc4"} <= set(metric_tags)
    scalars = {
        tag: acc.Scalars(tag)[-1].value for acc in accumulators(out / "tensorboard") for tag in acc.Tags()["scalars"]
    }
    assert [scalars[f"final/width_{layer}"] for layer in ("conv1", "conv2", "conv3", "fc4")] == [2, 4, 4, 4]
    assert (
        scalars["final/n_params"]
        == metrics["n_params"]
        == sum(p.numel() for p in SimpleConvNet([2, 4, 4, 4]).parameters())
    )
    # the final and the best validation accuracy (the best among the epochs after the last pruning step)
    val = [
        e.value
        for acc in accumulators(out / "tensorboard")
        if "val/acc" in acc.Tags()["scalars"]
        for e in acc.Scalars("val/acc")
    ]
    assert metrics["val/acc"] == pytest.approx(val[-1]) and metrics["val/acc_best"] == pytest.approx(max(val[-2:]))
    assert scalars["val/acc_best"] == pytest.approx(metrics["val/acc_best"])
