"""Training tricks for the pruned net: distillation from the unpruned net, label smoothing, random
shifts of the training images and a longer final retraining; each off by default."""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from convdissect.config import instantiate
from convdissect.data.mnist import MNISTDataModule
from convdissect.errors import UserInputError
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.train import build_module, train
from tests.helpers import EXPLAINABLE_RUN, PRUNE, TINY, compose_cfg

TEMPERATURE, WEIGHT = 3.0, 0.6
DISTILL = [f"callbacks.pruning.distill.temperature={TEMPERATURE}", f"callbacks.pruning.distill.weight={WEIGHT}"]


class LossRecorder(L.Callback):
    """Each training step's loss as the trainer back-propagates it, next to the outputs of the net (and of
    the net as it was at the end of the pretraining, the teacher) on the same batch, before the step."""

    def __init__(self, pretrain_epochs: int):
        self.pretrain_epochs, self.steps, self.teacher = pretrain_epochs, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = batch

    def on_before_backward(self, trainer, pl_module, loss):
        x, y, *cached = self.batch  # cached: the teacher's outputs the batch carries (model.distill.cache)
        with torch.no_grad():
            teacher = self.teacher(x) if self.teacher is not None else None
            step = {"epoch": trainer.current_epoch, "loss": loss.detach(), "x": x, "y": y, "student": pl_module(x)}
            step["cached"] = cached[0] if cached else None
            self.steps.append(step | {"teacher": teacher, "distilling": pl_module.distillation is not None})

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.pretrain_epochs - 1:  # the next epoch starts with the first pruning step
            self.teacher = copy.deepcopy(pl_module.net).eval()


def fit_recorded(overrides: list[str], tmp_path) -> tuple[L.Trainer, LossRecorder]:
    """The composed config's module, data and callbacks.pruning (if any) fitted by a real Trainer, each loss recorded."""
    cfg = compose_cfg("train", overrides, tmp_path)
    L.seed_everything(0)
    pruning = [instantiate(cfg.callbacks.pruning)] if "pruning" in cfg.callbacks else []
    recorder = LossRecorder(cfg.callbacks.pruning.pretrain_epochs if pruning else 0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=cfg.trainer.max_epochs,
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[*pruning, recorder],
    )
    trainer.fit(build_module(cfg), datamodule=instantiate(cfg.data))
    return trainer, recorder


def test_the_defaults_leave_prune_7iters_the_articles_recipe():
    cfg = compose_cfg("train", ["+experiment=prune_7iters"])
    assert cfg.callbacks.pruning.distill.weight == 0 and cfg.callbacks.pruning.final_epochs is None
    assert cfg.model.label_smoothing == 0 and cfg.data.random_shift == 0
    distilled = compose_cfg("train", ["+experiment=prune_distill", "model.teacher=run/model_state.pt"])
    for key in ("target_widths", "iterations", "pretrain_epochs", "every_n_epochs", "criterion", "mode"):
        assert distilled.callbacks.pruning[key] == cfg.callbacks.pruning[key]
    assert distilled.trainer.max_epochs == cfg.trainer.max_epochs
    assert distilled.model.distill.weight > 0 and distilled.callbacks.pruning.distill.weight == 0
    handnet = compose_cfg("train", ["+experiment=handnet_distill", "model.teacher=run/model_state.pt"])
    explainable = compose_cfg("train", ["+experiment=handnet_explainable"])
    assert (
        (handnet.model.n_bursts, handnet.model.terms)
        == (explainable.model.n_bursts, explainable.model.terms)
        == (2, 12)
    )
    assert handnet.model.distill.weight > 0


def test_default_pruning_loss_is_exactly_the_cross_entropy(one_thread, tmp_path):
    trainer, recorder = fit_recorded(PRUNE, tmp_path)
    assert len(recorder.steps) == 3 * 8 and not any(s["distilling"] for s in recorder.steps)
    for s in recorder.steps:
        assert torch.equal(s["loss"], F.cross_entropy(s["student"], s["y"]))


def test_distilled_loss_is_the_hand_computed_one(one_thread, tmp_path):
    trainer, recorder = fit_recorded(PRUNE + DISTILL, tmp_path)
    pretrain, retrain = recorder.steps[:8], recorder.steps[8:]
    assert not any(s["distilling"] for s in pretrain) and all(s["distilling"] for s in retrain)
    for s in pretrain:
        assert torch.equal(s["loss"], F.cross_entropy(s["student"], s["y"]))
    for s in retrain:
        torch.testing.assert_close(s["loss"], hand_distilled_loss(s, TEMPERATURE, WEIGHT), rtol=1e-5, atol=1e-6)
        hard = F.cross_entropy(s["student"], s["y"])
        assert not torch.allclose(s["loss"], hard)


def hand_distilled_loss(step: dict, temperature: float, weight: float) -> torch.Tensor:
    """(1 - w) CE + w T^2 KL(p_teacher || p_student) at temperature T, summed over classes, averaged over the batch."""
    p_teacher = torch.softmax(step["teacher"] / temperature, 1)
    log_ratio = torch.log(p_teacher) - torch.log_softmax(step["student"] / temperature, 1)
    kl = (p_teacher * log_ratio).sum(1).mean()
    hard = -step["student"].log_softmax(1).gather(1, step["y"][:, None]).mean()
    return (1 - weight) * hard + weight * temperature**2 * kl


@pytest.fixture
def teacher_file(tmp_path) -> tuple:
    """A SimpleConvNet (other widths than TINY's) saved as a run's model_state.pt."""
    torch.manual_seed(5)
    net = SimpleConvNet(widths=[6, 6, 12, 12])
    torch.save(net.state_dict(), tmp_path / "model_state.pt")
    return tmp_path / "model_state.pt", net.eval()


def test_model_teacher_is_distilled_from_frozen(teacher_file, one_thread, tmp_path):
    path, teacher = teacher_file
    distill = [f"+model.teacher={path}", "+model.distill={temperature:2.0,weight:0.5}"]
    trainer, recorder = fit_recorded(TINY + distill, tmp_path)
    assert trainer.lightning_module.distillation.teacher.training is False
    for s in recorder.steps:
        with torch.no_grad():
            s["teacher"] = teacher(s["x"])
        torch.testing.assert_close(s["loss"], hand_distilled_loss(s, 2.0, 0.5), rtol=1e-5, atol=1e-6)
    frozen = trainer.lightning_module.distillation.teacher.state_dict()
    torch.testing.assert_close(frozen, teacher.state_dict(), rtol=0, atol=0)


def test_cached_teacher_outputs_are_the_teachers_on_the_unshifted_images(teacher_file, one_thread, tmp_path):
    """The reference: the same fit without shifts sees the same images in the same order, unshifted."""
    path, teacher = teacher_file
    cached = [f"+model.teacher={path}", "+model.distill={temperature:2.0,weight:0.5,cache:true}"]
    cached += ["trainer.limit_train_batches=3"]
    _, unshifted = fit_recorded(TINY + cached, tmp_path / "unshifted")
    _, shifted = fit_recorded(TINY + cached + ["data.random_shift=2"], tmp_path / "shifted")
    assert len(shifted.steps) == len(unshifted.steps) == 3
    for plain, moved in zip(unshifted.steps, shifted.steps):
        with torch.no_grad():
            reference = teacher(plain["x"])
        torch.testing.assert_close(plain["cached"], reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(moved["cached"], reference, rtol=1e-5, atol=1e-5)
        assert not torch.equal(moved["x"], plain["x"])
        for s in (plain, moved):
            torch.testing.assert_close(s["loss"], hand_distilled_loss(s | {"teacher": s["cached"]}, 2.0, 0.5))


def test_cached_teacher_outputs_need_the_in_memory_data(teacher_file, tmp_path):
    path, _ = teacher_file
    cfg = compose_cfg("train", TINY + [f"+model.teacher={path}", "+model.distill={weight:0.5,cache:true}"], tmp_path)
    users_data = torch.utils.data.TensorDataset(torch.zeros(64, 1, 28, 28), torch.zeros(64, dtype=torch.long))
    loader = torch.utils.data.DataLoader(users_data, batch_size=32)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path
    )
    with pytest.raises(
        UserInputError,
        match=r"model.distill.cache=true: the fit's data \(data loaders without a data module\) cannot carry",
    ):
        trainer.fit(build_module(cfg), train_dataloaders=loader)


def test_two_teachers_are_refused(teacher_file, tmp_path):
    path, _ = teacher_file
    overrides = PRUNE + DISTILL + [f"+model.teacher={path}", "+model.distill={weight:0.5}"]
    with pytest.raises(UserInputError, match="one teacher at a time"):
        train(compose_cfg("train", overrides, tmp_path / "run"))


@pytest.mark.slow
def test_explainable_handnet_distils_and_keeps_its_round_trip(teacher_file, tmp_path):
    path, _ = teacher_file
    overrides = EXPLAINABLE_RUN + [f"+model.teacher={path}", "+model.distill={temperature:4.0,weight:0.5,cache:true}"]
    metrics = train(compose_cfg("train", overrides, tmp_path / "run"))
    assert metrics["explanation/roundtrip_agreement"] == 1.0


def test_label_smoothing_spreads_the_target(one_thread, tmp_path):
    smoothing = 0.2
    trainer, recorder = fit_recorded(TINY + [f"model.label_smoothing={smoothing}"], tmp_path)
    for s in recorder.steps:
        log_p = s["student"].log_softmax(1)
        expected = -((1 - smoothing) * log_p.gather(1, s["y"][:, None]).squeeze(1) + smoothing * log_p.mean(1)).mean()
        torch.testing.assert_close(s["loss"], expected, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(s["loss"], F.cross_entropy(s["student"], s["y"]))


def test_final_epochs_sets_the_length_of_the_final_retraining(one_thread, tmp_path):
    # PRUNE: steps at the start of epochs 1 and 2, trainer.max_epochs=3; final_epochs=3 retrains epochs 2, 3, 4
    trainer, recorder = fit_recorded(PRUNE + ["callbacks.pruning.final_epochs=3"], tmp_path)
    assert trainer.current_epoch == 5 and sorted({s["epoch"] for s in recorder.steps}) == [0, 1, 2, 3, 4]
    # the OneCycle rebuilt at the last step spans the three final epochs of 8 batches
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 3 * 8


def shifted_by(shifted: torch.Tensor, raw: torch.Tensor, n: int) -> tuple[int, int] | None:
    """The (rows, columns) shift in [-n, n] that moves raw (uint8 [H, W]) onto shifted, black coming in; None if none does."""
    h, w = raw.shape
    for dy in range(-n, n + 1):
        for dx in range(-n, n + 1):
            moved = torch.zeros_like(raw)
            moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = raw[
                max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
            ]
            if torch.equal(moved, shifted):
                return dy, dx
    return None


def test_random_shift_moves_each_training_image_and_only_those(data_dir):
    n = 2
    plain, shifting = (MNISTDataModule(data_dir, batch_size=64, random_shift=s, seed=3) for s in (0, n))
    (x_plain, y_plain), (x_shifted, y_shifted) = (next(iter(dm.train_dataloader())) for dm in (plain, shifting))
    assert torch.equal(y_plain, y_shifted)  # the same images, in the same order

    def to_uint8(x):  # undo normalise
        return ((x[:, 0] * plain.spec.std + plain.spec.mean) * 255).round().to(torch.uint8)

    shifts = [shifted_by(s, r, n) for s, r in zip(to_uint8(x_shifted), to_uint8(x_plain))]
    assert None not in shifts and len(set(shifts)) > 10
    assert max(max(abs(dy), abs(dx)) for dy, dx in shifts) == n
    # validation batches are never shifted
    assert torch.equal(next(iter(plain.val_dataloader()))[0], next(iter(shifting.val_dataloader()))[0])


@pytest.fixture(scope="module")
def distilled_run(tmp_path_factory):
    """The tiny net pruned with distillation in a short real run, every checkpoint kept."""
    out = tmp_path_factory.mktemp("distilled")
    return out, train(compose_cfg("train", PRUNE + DISTILL, out))


@pytest.mark.slow
def test_distilled_resume_matches_the_uninterrupted_run(distilled_run, tmp_path):
    out, metrics = distilled_run
    assert metrics["pruning"]["distill"] == {"temperature": TEMPERATURE, "weight": WEIGHT}
    # epoch_001.ckpt: after step 1, so the teacher comes back from the checkpoint, not from the net
    resumed = train(
        compose_cfg("train", PRUNE + DISTILL + [f"ckpt_path={out / 'checkpoints' / 'epoch_001.ckpt'}"], tmp_path)
    )
    first, again = (torch.load(d / "model_state.pt", weights_only=True) for d in (out, tmp_path))
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert resumed["test/acc"] == metrics["test/acc"]


@pytest.mark.parametrize(
    "override, match",
    [
        ("callbacks.pruning.distill.weight=1.5", r"callbacks.pruning.distill.weight=1.5: allowed 0 \(off\) to 1"),
        ("callbacks.pruning.distill.temperature=0", r"callbacks.pruning.distill.temperature=0: must be > 0"),
        ("+callbacks.pruning.distill.alpha=1", r"callbacks.pruning.distill: unknown keys \['alpha'\]"),
        ("callbacks.pruning.final_epochs=0", r"callbacks.pruning.final_epochs=0: must be an integer >= 1"),
        ("model.label_smoothing=1.0", r"model.label_smoothing=1.0: allowed a number in \[0, 1\)"),
        ("data.random_shift=-1", r"data.random_shift=-1: allowed a whole number of pixels, 0 to 27"),
    ],
)
def test_bad_settings_are_one_line_errors(override, match, tmp_path):
    cfg = compose_cfg("train", PRUNE + [override], tmp_path)
    with pytest.raises(UserInputError, match=match):
        build_module(cfg)
        instantiate(cfg.data)
        instantiate(cfg.callbacks.pruning)
