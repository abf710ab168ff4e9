"""The pruning callback: short real pruning runs, resume, criteria, schedules and clear errors."""

import itertools
import json
import statistics
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from convdissect.cli import run_train
from convdissect.config import CONFIG_DIR
from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.lit_module import LitClassifier
from convdissect.models.prunable import producer_consumer_table
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.pruning.callback import PruningCallback
from convdissect.pruning.cost import flops_per_image
from convdissect.pruning.criteria import CRITERIA, Calibration, parse_criterion, score_layer
from convdissect.pruning.schedule import Schedule, geometric_width
from convdissect.tables import render
from convdissect.train import build_module, train
from tests.helpers import PRUNE, PRUNE_TARGET, TINY, compose_cfg


def tb(log_dir: Path) -> tuple[dict[str, list], set[str]]:
    """Scalars {tag: [(step, value)]} and the other tags of all event files under log_dir."""
    scalars, other = {}, set()
    for events in sorted(log_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        other |= set(acc.Tags()["images"]) | set(acc.Tags()["tensors"]) | set(acc.Tags()["histograms"])
    return scalars, other


def tb_histograms(log_dir: Path, tag: str) -> list:
    """(step, number of values) of a histogram tag in the event files under log_dir."""
    found = []
    for events in sorted(log_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events), size_guidance={"histograms": 0})  # 0: keep every step, not a sample
        acc.Reload()
        if tag in acc.Tags()["histograms"]:
            found += [(e.step, e.histogram_value.num) for e in acc.Histograms(tag)]
    return found


def tb_custom_scalars(log_dir: Path) -> dict[str, list[str]]:
    """{chart title: its tags} of the custom-scalars layout in the event files under log_dir."""
    charts = {}
    for events in sorted(log_dir.rglob("events.out.tfevents*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tag = "custom_scalars__config__"
        for event in acc.Tensors(tag) if tag in acc.Tags()["tensors"] else []:
            layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
            charts.update({chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart})
    return charts


@pytest.mark.slow
def test_pruning_run_fills_the_history(pruned_run):
    out, metrics = pruned_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    history = metrics["pruning_history"]
    assert [h["iteration"] for h in history] == [1, 2] and [h["epoch"] for h in history] == [1, 2]
    assert history[0]["widths_before"] == [4, 8, 8, 8]
    assert history[0]["widths"] == [geometric_width(w, t, 1, 2) for w, t in zip([4, 8, 8, 8], PRUNE_TARGET)]
    assert history[1]["widths"] == metrics["widths"] == PRUNE_TARGET
    assert (
        history[1]["n_params"]
        == metrics["n_params"]
        == sum(p.numel() for p in SimpleConvNet(PRUNE_TARGET).parameters())
    )
    # FLOPs per image: those of an untrained net of the same widths, falling at every step
    image = torch.zeros(1, 1, 28, 28)
    assert metrics["pruning"]["start_flops"] == flops_per_image(SimpleConvNet([4, 8, 8, 8]), image)
    assert [h["flops"] for h in history] == [flops_per_image(SimpleConvNet(h["widths"]), image) for h in history]
    assert metrics["pruning"]["start_flops"] > history[0]["flops"] > history[1]["flops"] == metrics["flops"]
    for h in history:
        assert [len(k) for k in h["kept_channels"].values()] == h["widths"]
        assert h["criterion_fallbacks"] == {"fc4": {"weight_noise": "activation_variance"}}
        for key in ("val_acc_before", "val_acc_pruned", "val_acc_retrained"):
            assert 0.0 <= h[key] <= 1.0
    # kept channels are 1-based numbers of the original net, step 2 keeps a subset of step 1
    for layer, kept in history[1]["kept_channels"].items():
        assert set(kept) <= set(history[0]["kept_channels"][layer]) and min(kept) >= 1
    assert history[0]["val_acc_retrained"] == history[1]["val_acc_before"]


@pytest.mark.slow
def test_pruning_is_logged_and_drawn(pruned_run):
    out, metrics = pruned_run
    scalars, other = tb(out / "tensorboard")
    for tag in (
        "pruning/val_acc_before",
        "pruning/val_acc_pruned",
        "pruning/val_acc_retrained",
        "pruning/n_params",
        "pruning/width_fc4",
        "pruning/flops",
    ):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert [value for _, value in scalars["pruning/width_conv2"]] == [6, 4]
    assert [value for _, value in scalars["pruning/flops"]] == [h["flops"] for h in metrics["pruning_history"]]
    # each step's scores, one per channel of the layer before the cut
    history = metrics["pruning_history"]
    for index, layer in enumerate(["conv1", "conv2", "conv3", "fc4"]):
        steps = [(h["iteration"], h["widths_before"][index]) for h in history]
        assert tb_histograms(out / "tensorboard", f"pruning/scores/{layer}") == steps
    charts = tb_custom_scalars(out / "tensorboard")
    assert charts["val accuracy: before / right after pruning / after retraining"] == [
        "pruning/val_acc_before",
        "pruning/val_acc_pruned",
        "pruning/val_acc_retrained",
    ]
    # The learning-rate monitor shows OneCycle starting afresh after each step (epochs 1 and 2, 8 batches each).
    lr = scalars["lr-AdamW"]
    assert [step for step, value in lr if value == pytest.approx(lr[0][1], rel=1e-5)] == [0, 8, 16]
    assert {"pruning/accuracy", "pruning/kept_channels/text_summary"} <= other
    assert (out / "pruning_accuracy.png").stat().st_size > 1000
    assert "val/acc" in scalars


@pytest.mark.slow
def test_pruned_checkpoint_reloads_and_the_best_one_is_after_the_last_step(pruned_run, data_dir):
    out, metrics = pruned_run
    tested = Path(metrics["tested_checkpoint"])
    assert tested.name in ("epoch_002.ckpt",)  # the only epoch after the last step (epoch 2)
    module = LitClassifier.load_from_checkpoint(tested)
    assert module.net.widths == PRUNE_TARGET and module.hparams.net["widths"] == PRUNE_TARGET
    trainer = L.Trainer(accelerator="cpu", logger=False, limit_test_batches=2, enable_progress_bar=False)
    (result,) = trainer.test(module, datamodule=MNISTDataModule(data_dir=data_dir, eval_batch_size=200))
    assert result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    state = torch.load(out / "model_state.pt", weights_only=True)
    assert SimpleConvNet.widths_from_state_dict(state) == (PRUNE_TARGET, True)
    torch.testing.assert_close(state, dict(module.net.state_dict()))


@pytest.mark.slow
def test_a_pruning_run_keeps_last_ckpt_and_the_best_after_its_last_step(tmp_path):
    """The default checkpointing (save_top_k=1): each step's surgery drops the best file it held."""
    metrics = train(compose_cfg("train", [o for o in PRUNE if "save_top_k" not in o], tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch_002.ckpt", "last.ckpt"]
    assert Path(metrics["tested_checkpoint"]).name == "epoch_002.ckpt"  # the only epoch after the last step


@pytest.mark.slow
def test_resume_mid_schedule_continues_at_the_next_step(pruned_run, tmp_path):
    out, metrics = pruned_run
    # epoch_001.ckpt: the end of epoch 1, after step 1; step 2 is still to come
    resumed = train(compose_cfg("train", PRUNE + [f"ckpt_path={out / 'checkpoints' / 'epoch_001.ckpt'}"], tmp_path))
    first, again = metrics["pruning_history"], resumed["pruning_history"]
    assert [h["iteration"] for h in again] == [1, 2]
    assert again[0]["kept_channels"] == first[0]["kept_channels"]
    assert again[0]["val_acc_pruned"] == first[0]["val_acc_pruned"]
    assert again[1]["widths_before"] == first[0]["widths"] and resumed["widths"] == PRUNE_TARGET
    # only step 2 ran here
    assert [step for step, _ in tb(tmp_path / "tensorboard")[0]["pruning/val_acc_pruned"]] == [2]


@pytest.mark.slow
def test_init_from_starts_from_a_model_state(pruned_run, tmp_path):
    out, metrics = pruned_run
    # no training: the test accuracy is the loaded net's own
    cfg = compose_cfg("train", TINY + [f"model.init_from={out / 'model_state.pt'}", "fit=false"], tmp_path)
    result = train(cfg)
    assert result["widths"] == PRUNE_TARGET and result["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert "init_from" not in build_module(cfg).hparams.net


def test_bad_init_from_is_a_one_line_error(tmp_path):
    bad = tmp_path / "model_state.pt"
    bad.write_text("not a state dict")
    for path, match in ((bad, "not a readable PyTorch file"), (tmp_path / "missing.pt", "no such file")):
        with pytest.raises(UserInputError, match=f"model.init_from={path}: {match}"):
            build_module(compose_cfg("train", TINY + [f"model.init_from={path}"], tmp_path))


# ---------------------------------------------------------------------- criteria


@pytest.fixture(scope="module")
def calibration_images(data_dir):
    return MNISTDataModule(data_dir=data_dir).tensors("val", 300)


@pytest.mark.parametrize("criterion", ["activation_variance", "selectivity", "superstimulus_contrast"])
@pytest.mark.parametrize("layer", ["conv1", "conv2", "fc4"])
def test_a_dead_channel_ranks_last(criterion, layer, calibration_images):
    torch.manual_seed(0)
    net = SimpleConvNet([6, 8, 8, 8]).eval()
    dead = 3
    with torch.no_grad():
        net.get_submodule(layer).bias += 1.0  # the other channels alive (not always cut by ReLU)
        net.get_submodule(layer).weight[dead] = 0.0  # a constant output whatever the input
        net.get_submodule(layer).bias[dead] = 0.2
    images, labels = calibration_images
    table = producer_consumer_table(net)
    cal = Calibration(net, table, images, labels, torch.Generator().manual_seed(0))
    scores, _ = score_layer(cal, layer, {criterion: 1.0})
    assert scores.argmin() == dead and (scores[dead] < scores.sort().values[1]), scores


def test_unknown_criterion_lists_the_known_ones():
    with pytest.raises(UserInputError, match="criterion='variance'.*known criteria.*activation_variance") as err:
        PruningCallback(criterion="variance", target_widths=PRUNE_TARGET)
    assert all(name in str(err.value) for name in CRITERIA)


# ---------------------------------------------------------------------- schedules and their errors


def test_geometric_widths_reach_the_target_and_never_go_below_one():
    widths = [geometric_width(32, 8, k, 7) for k in range(1, 8)]
    assert widths == sorted(widths, reverse=True) and widths[-1] == 8 and widths[0] < 32
    assert [geometric_width(3, 1, k, 4) for k in range(1, 5)][-1] == 1
    schedule = Schedule(mode="threshold", threshold=0.5)
    # all below 0.5 x -4: the best survives
    assert schedule.keep({"a": torch.tensor([-5.0, -4.0, -3.0])}, [3], 1)["a"].tolist() == [2]
    # median 1 (the lower one)
    assert schedule.keep({"a": torch.tensor([1.0, 5.0, 0.1, 3.0])}, [4], 1)["a"].tolist() == [0, 1, 3]


@pytest.mark.parametrize("threshold", [0, 1.5, -0.2])
def test_threshold_outside_zero_one_is_an_error(threshold):
    with pytest.raises(UserInputError, match=f"callbacks.pruning.threshold={threshold}: must be in \\(0, 1\\]"):
        PruningCallback(mode="threshold", threshold=threshold)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["callbacks.pruning.target_widths=[2,16,4,4]"],
            r"target_widths=\[2, 16, 4, 4\]: conv2 target 16 is above its current width 8",
        ),
        (["callbacks.pruning.target_widths=[2,0,4,4]"], r"target_widths=\[2, 0, 4, 4\]: one width >= 1"),
        (["callbacks.pruning.target_widths=[2,4,4]"], r"need one width per prunable layer"),
        (["trainer.max_epochs=2"], r"trainer.max_epochs=2 cannot hold the pruning schedule: .* need max_epochs >= 3"),
    ],
)
def test_bad_schedules_fail_before_training(overrides, match, tmp_path):
    with pytest.raises(UserInputError, match=match):
        train(compose_cfg("train", PRUNE + overrides, tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # nothing trained


def test_multi_device_pruning_is_refused(tmp_path):
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, max_epochs=5, default_root_dir=tmp_path
    )
    module = LitClassifier(
        {"_target_": "convdissect.models.simple_convnet.SimpleConvNet", "widths": [4, 8, 8, 8]}, None
    )
    with pytest.raises(UserInputError, match="pruning runs on one device only"):
        PruningCallback(target_widths=PRUNE_TARGET).setup(trainer, module, "fit")


# ---------------------------------------------------------------------- experiments, sweeps


def test_experiments_compose():
    prune = compose_cfg("train", ["+experiment=prune_7iters"])
    p = prune.callbacks.pruning
    assert p.target_widths == [8, 16, 24, 16] and p.iterations == 7
    assert prune.trainer.max_epochs >= p.pretrain_epochs + p.iterations * p.every_n_epochs
    assert compose_cfg("train", ["+experiment=small_scratch"]).trainer.max_epochs == prune.trainer.max_epochs
    no_conv2 = build_module(compose_cfg("train", ["+experiment=no_conv2"]))
    assert not any(k.startswith("conv2.") for k in no_conv2.net.state_dict())
    sweep = compose_cfg("train", ["+experiment=prune_7iters", "+sweep=pruning"])
    assert sweep.callbacks.pruning.mode == "threshold" and sweep.callbacks.pruning.target_widths is None
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        baselines = compose("train", ["+experiment=prune_7iters", "+sweep=pruning_baselines"], return_hydra_config=True)
    params = baselines.hydra.sweeper.params
    assert params["callbacks.pruning.criterion"] == "activation_variance,magnitude,taylor,random"
    assert params.seed == "0,1,2"
    for criterion in params["callbacks.pruning.criterion"].split(","):
        parse_criterion(criterion)
    threshold = compose_cfg("train", ["callbacks=pruning_threshold"]).callbacks
    assert threshold.pruning.mode == "threshold" and "model_checkpoint" in threshold


@pytest.mark.slow
def test_no_conv2_net_prunes(tmp_path):
    overrides = [o for o in PRUNE if not o.startswith(("callbacks.pruning.target_widths", "model.widths"))]
    overrides += [
        "model.conv2=false",
        "model.widths=[4,8,8]",
        "callbacks.pruning.target_widths=[2,4,4]",
        "trainer.limit_train_batches=2",
    ]
    metrics = train(compose_cfg("train", overrides, tmp_path))
    assert metrics["widths"] == [2, 4, 4]
    assert list(metrics["pruning_history"][0]["kept_channels"]) == ["conv1", "conv3", "fc4"]


@pytest.mark.slow
def test_global_ranking_keeps_the_summed_width_and_each_layers_min_width(tmp_path):
    overrides = PRUNE + [
        "callbacks.pruning.scope=global",
        "callbacks.pruning.criterion=taylor",
        "callbacks.pruning.min_width=[2,3,3,3]",
        "trainer.limit_train_batches=2",
    ]
    metrics = train(compose_cfg("train", overrides, tmp_path))
    for h in metrics["pruning_history"]:
        planned = [geometric_width(w, t, h["iteration"], 2) for w, t in zip([4, 8, 8, 8], PRUNE_TARGET)]
        assert sum(h["widths"]) == sum(planned) and all(w >= m for w, m in zip(h["widths"], [2, 3, 3, 3])), h["widths"]
    widths = metrics["widths"]
    assert metrics["flops"] == flops_per_image(SimpleConvNet(widths), torch.zeros(1, 1, 28, 28))
    assert metrics["pruning"]["scope"] == "global"


@pytest.mark.slow
def test_threshold_mode_shrinks_every_layer_but_never_below_one(tmp_path):
    overrides = PRUNE + [
        "callbacks.pruning.mode=threshold",
        "callbacks.pruning.threshold=1.0",
        "callbacks.pruning.target_widths=null",
        "model.widths=[4,8,8,2]",
        "trainer.limit_train_batches=2",
    ]
    history = train(compose_cfg("train", overrides, tmp_path))["pruning_history"]
    widths = [[4, 8, 8, 2]] + [h["widths"] for h in history]
    for before, after in zip(widths, widths[1:]):
        assert all(1 <= a <= b for a, b in zip(after, before)) and after != before


@pytest.mark.slow
def test_sweep_table_averages_the_seeds_of_each_criterion(tmp_path):
    sweep = tmp_path / "sweep"
    # the jobs of the multirun a user starts (2 criteria x 2 seeds, each run tiny), in-process as a sweep runs them
    overrides = [o for o in PRUNE if not o.startswith(("callbacks.pruning.criterion", "+callbacks.model_checkpoint"))]
    for job, (criterion, seed) in enumerate(itertools.product(("magnitude", "taylor"), (0, 1))):
        job_overrides = [f"callbacks.pruning.criterion={criterion}", f"seed={seed}", "trainer.limit_train_batches=2"]
        train(compose_cfg("train", [*overrides, *job_overrides, "threads=1"], sweep / str(job)))
    table = render(["pruning", str(sweep)])
    runs = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))]
    assert len(runs) == 4
    for criterion, label in (("magnitude", "magnitude (L2)"), ("taylor", "taylor")):
        (row,) = [line for line in table.splitlines() if line.startswith(f"| {label} | geometric | ")]
        group = [m for m in runs if criterion in m["pruning"]["criterion"]]
        assert sorted(m["pruning"]["seed"] for m in group) == [0, 1] and "| 0, 1 |" in row
        for k in range(2):  # mean ± sd over the two seeds, in %
            after = [100 * m["pruning_history"][k]["val_acc_pruned"] for m in group]
            mean, sd = statistics.mean(after), statistics.stdev(after)
            assert f"| {mean:.2f} ± {sd:.2f} |" in row
        assert f"| {group[0]['flops']:,} |" in row and "[2, 4, 4, 4]" in row


def test_prune_7iters_refuses_a_schedule_too_long_in_one_line(tmp_path):
    """In-process: test_bad_inputs' subprocess rows show that such an error exits 2 with this one line."""
    cfg = compose_cfg("train", ["+experiment=prune_7iters", "trainer.max_epochs=5", "threads=1"], tmp_path)
    with pytest.raises(UserInputError) as raised:
        run_train(cfg)
    assert str(raised.value) == (
        "trainer.max_epochs=5 cannot hold the pruning schedule: 1 pretrain epochs + 7 iterations x 1 epoch(s) "
        "need max_epochs >= 8"
    )
    assert not (tmp_path / "checkpoints").exists()
