"""The contract for bad input, in one table: each row composes an entry point's config as its
Hydra app would and runs the app's job in this process, which must raise a UserInputError whose
message is one line naming the bad value and what is allowed (the app prints it as `error: ...`
and exits 2). One row per entry point also runs as a user would, in a Python process: exit code 2,
no traceback, and exactly one `error: ...` line, the last one on stderr."""

import re
import shutil

import pytest
import torch

from convdissect.cli import check_composition, run_dissect, run_eval, run_train
from convdissect.config import CONFIG_DIR
from convdissect.errors import UserInputError
from convdissect.models.simple_convnet import SimpleConvNet
from tests.helpers import TINY, compose_cfg, run_python

RUN = [*TINY, "threads=1"]
# The config each entry point composes, and the job its Hydra app runs on it.
APPS = {"train.py": ("train", run_train), "eval.py": ("eval", run_eval), "dissect.py": ("dissect", run_dissect)}
# Rows also run in a Python process, one per entry point; train.py's is refused by the Hydra
# callback RunDirGuard, before the job starts.
IN_A_PROCESS = ("run_dir_finished", "eval_no_ckpt", "dissect_text")
# Rows that take training steps before their error.
TRAINING = ("nan_loss",)

# (entry point, arguments, words the error message must hold); {files} is the fixture's folder.
CASES = {
    # nets
    "widths_scalar": ("train.py", ["model.widths=32"], ["model.widths=32", "expected a list of 4 values"]),
    "widths_zero": (
        "train.py",
        ["model.widths=[8,16,0,16]"],
        ["model.widths=[8, 16, 0, 16]", "every width must be a positive integer"],
    ),
    "widths_count": ("train.py", ["model.widths=[8,16,24]"], ["model.widths=[8, 16, 24]", "expected 4 values"]),
    "recipes_missing": (
        "train.py",
        ["model=handnet", "model.recipes=/nonexistent/recipes.yaml", "fit=false"],
        ["model.recipes='/nonexistent/recipes.yaml'", "no such file"],
    ),
    # data files
    "idx_bad_magic": (
        "train.py",
        [*RUN, "paths.data_dir={files}/bad_magic", "data.verify=false"],
        ["t10k-labels-idx1-ubyte has magic number 0x00000802", "expected 0x00000801"],
    ),
    "idx_garbage": (
        "train.py",
        [*RUN, "paths.data_dir={files}/garbage", "data.verify=false"],
        ["t10k-images-idx3-ubyte has magic number", "expected 0x00000803"],
    ),
    "idx_label_200": (
        "train.py",
        [*RUN, "paths.data_dir={files}/label_200", "data.verify=false"],
        ["holds the label 200", "expected 0 to 9"],
    ),
    "idx_md5": (
        "train.py",
        [*RUN, "paths.data_dir={files}/label_200"],
        ["t10k-labels-idx1-ubyte has MD5 ", "expected 27ae3e4e09519cfbb04c329615203637", "data.verify=false"],
    ),
    "verify_not_a_boolean": ("train.py", [*RUN, "data.verify=1"], ["data.verify=1: allowed true or false"]),
    "idx_truncated": (
        "train.py",
        [*RUN, "paths.data_dir={files}/truncated"],
        ["t10k-labels-idx1-ubyte has 5000 bytes", "expected 10008"],
    ),
    "data_missing": (
        "train.py",
        [*RUN, "paths.data_dir={files}/empty", "data.download=false"],
        ["MNIST not usable in {files}/empty/MNIST/raw", "data.download=false"],
    ),
    # training settings
    "batch_size_too_large": (
        "train.py",
        [*RUN, "data.batch_size=100000"],
        ["data.batch_size=100000", "allowed 1 to 55000"],
    ),
    "zero_epochs": ("train.py", [*RUN, "trainer.max_epochs=0"], ["trainer.max_epochs=0", "at least 1 epoch"]),
    "negative_lr": ("train.py", [*RUN, "optimizer.lr=-1"], ["optimizer.lr=-1", "allowed a finite number > 0"]),
    "pct_start_one": (
        "train.py",
        [*RUN, "scheduler.pct_start=1.0"],
        ["scheduler.pct_start=1.0", "allowed 0 <= pct_start < 1"],
    ),
    "nan_loss": (
        "train.py",
        [*RUN, "optimizer.lr=1e30", "scheduler=null"],
        ["training loss became nan at epoch 0, batch", "optimizer.lr"],
    ),
    "threads": ("train.py", [*RUN, "threads=-1"], ["threads=-1", "positive integer"]),
    "test_ckpt": ("train.py", [*RUN, "test_ckpt=bogus"], ["test_ckpt=bogus", "allowed ['best', 'last']"]),
    "fit_false_nothing_to_load": (
        "train.py",
        [*RUN, "fit=false"],
        ["fit=false with nothing to load", "ckpt_path=", "model.init_from="],
    ),
    # pruning settings
    "pruning_mode": (
        "train.py",
        [*RUN, "callbacks=pruning", "callbacks.pruning.mode=bogus"],
        ["callbacks.pruning.mode='bogus'", "allowed ['geometric', 'threshold']"],
    ),
    "pruning_target_too_wide": (
        "train.py",
        [*RUN, "callbacks=pruning", "trainer.max_epochs=10"],
        ["callbacks.pruning.target_widths=[8, 16, 24, 16]", "above its current width"],
    ),
    "pruning_eval_size_0": (
        "train.py",
        [
            *RUN,
            "callbacks=pruning",
            "trainer.max_epochs=3",
            "callbacks.pruning.target_widths=[2,4,4,4]",
            "callbacks.pruning.iterations=1",
            "callbacks.pruning.pretrain_epochs=1",
            "callbacks.pruning.eval_size=0",
        ],
        ["callbacks.pruning.eval_size=0", "must be >= 1"],
    ),
    "pruning_iterations_float": (
        "train.py",
        [*RUN, "callbacks=pruning", "callbacks.pruning.iterations=1.7"],
        ["callbacks.pruning.iterations=1.7", "allowed an integer >= 1"],
    ),
    "pruning_target_float": (
        "train.py",
        [*RUN, "callbacks=pruning", "callbacks.pruning.target_widths=[2.9,4,4,4]"],
        ["callbacks.pruning.target_widths=[2.9, 4, 4, 4]", "allowed a list of integers"],
    ),
    "pruning_weight_nan": (
        "train.py",
        [*RUN, "callbacks=pruning", "callbacks.pruning.criterion={{activation_variance:nan,weight_noise:1}}"],
        ["callbacks.pruning.criterion={{'activation_variance': nan, 'weight_noise': 1}}", "finite weights"],
    ),
    # other settings
    "conv2_not_a_boolean": ("train.py", [*RUN, "model.conv2=maybe"], ['model.conv2="maybe": allowed true or false']),
    "download_not_a_boolean": (
        "eval.py",
        ["ckpt_path={files}/model_state.pt", "data.download=no"],
        ['data.download="no": allowed true or false'],
    ),
    "handnet_line_sigma_0": (
        "train.py",
        ["threads=1", "model=handnet", "model.line_sigma=0"],
        ["model.line_sigma=0", "allowed a finite number > 0, or null"],
    ),
    "handnet_burst_sigma_negative": (
        "train.py",
        ["threads=1", "model=handnet", "model.burst_sigma=-1"],
        ["model.burst_sigma=-1", "allowed a finite number > 0"],
    ),
    "handnet_l1_readout_negative": (
        "train.py",
        ["threads=1", "model=handnet", "model.l1_readout=-1"],
        ["model.l1_readout=-1", "allowed a finite number >= 0"],
    ),
    "roundtrip_images_0": (
        "train.py",
        ["threads=1", "model=handnet", "callbacks=explanation", "callbacks.explanation.roundtrip_images=0"],
        ["callbacks.explanation.roundtrip_images=0", "allowed an integer >= 1, or null"],
    ),
    "test_ckpt_not_a_checkpoint": (
        "train.py",
        [*RUN, "test_ckpt={files}/text.pt"],
        ["test_ckpt={files}/text.pt: not a readable PyTorch file"],
    ),
    "test_ckpt_a_state_dict": (
        "train.py",
        [*RUN, "test_ckpt={files}/model_state.pt"],
        ["test_ckpt={files}/model_state.pt: not a Lightning training checkpoint"],
    ),
    # checkpoints and state_dicts
    "init_from_text": (
        "train.py",
        [*RUN, "model.init_from={files}/text.pt"],
        ["model.init_from={files}/text.pt", "not a readable PyTorch file"],
    ),
    "init_from_nan": (
        "train.py",
        [*RUN, "model.init_from={files}/nan.pt"],
        ["model.init_from={files}/nan.pt", "tensor conv1.weight holds NaN or inf"],
    ),
    "init_from_wrong_shape": (
        "train.py",
        [*RUN, "model.init_from={files}/wrong_shape.pt"],
        ["wrongly shaped for a SimpleConvNet", "conv3.weight"],
    ),
    "resume_text": (
        "train.py",
        [*RUN, "ckpt_path={files}/text.pt"],
        ["ckpt_path={files}/text.pt", "not a readable PyTorch file"],
    ),
    "resume_missing": (
        "train.py",
        [*RUN, "ckpt_path={files}/missing.ckpt"],
        ["ckpt_path={files}/missing.ckpt", "no such file"],
    ),
    "resume_state_dict": (
        "train.py",
        [*RUN, "ckpt_path={files}/model_state.pt"],
        ["not a Lightning training checkpoint", "model.init_from"],
    ),
    "eval_no_ckpt": ("eval.py", [], ["ckpt_path is not set", "python eval.py ckpt_path=PATH"]),
    "eval_overflow": (
        "eval.py",
        ["ckpt_path={files}/huge.pt", "trainer.limit_test_batches=1", "data.eval_batch_size=100", "threads=1"],
        ["the test gave test/loss=nan", "no metrics.json written"],
    ),
    "fdr_with_pruning": (
        "train.py",
        ["debug=fdr", "+experiment=prune_7iters", "threads=1"],
        ["trainer.fast_dev_run=true (debug=fdr) runs one batch of one epoch", "use debug=limit"],
    ),
    "eval_nan": ("eval.py", ["ckpt_path={files}/nan.pt"], ["tensor conv1.weight holds NaN or inf"]),
    "dissect_text": (
        "dissect.py",
        ["ckpt_path={files}/text.pt"],
        ["ckpt_path={files}/text.pt", "not a readable PyTorch file"],
    ),
    "dissect_nan": ("dissect.py", ["ckpt_path={files}/nan.pt"], ["tensor conv1.weight holds NaN or inf"]),
    "dissect_projection_points_0": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "report.projection_points=0"],
        ["report.projection_points=0", "must be an integer >= 10"],
    ),
    "dissect_steps_0": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "superstimulus.steps=0"],
        ["superstimulus.steps=0", "allowed an integer >= 1"],
    ),
    "dissect_lr_nan": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "superstimulus.lr=nan"],
        ["superstimulus.lr=nan", "allowed a finite number > 0"],
    ),
    "dissect_threads_0": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "threads=0"],
        ["threads=0", "allowed a positive integer"],
    ),
    "dissect_dpi_0": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "report.dpi=0"],
        ["report.dpi=0", "allowed an integer >= 1"],
    ),
    "dissect_top_k_0": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "report.top_k=0"],
        ["report.top_k=0", "allowed an integer >= 1"],
    ),
    "prune_distill_without_teacher": (
        "train.py",
        ["+experiment=prune_distill", "threads=1"],
        ["model.teacher: missing; give a trained SimpleConvNet, model.teacher=RUN/model_state.pt"],
    ),
    "distill_cache_not_a_boolean": (
        "train.py",
        ["+experiment=prune_distill", "model.teacher={files}/model_state.pt", "model.distill.cache=yes", "threads=1"],
        ["model.distill.cache='yes': allowed true or false"],
    ),
    "distill_without_teacher": (
        "train.py",
        ["+experiment=prune_distill", "model.teacher=null", "threads=1"],
        ["model.distill=", "'weight': 0.7", "needs model.teacher=RUN/model_state.pt (it is None)"],
    ),
    "dissect_ablation_median": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "fidelity.ablation=median"],
        ["fidelity.ablation='median'", "allowed ['mean', 'resample']"],
    ),
    "dissect_enabled_not_a_boolean": (
        "dissect.py",
        ["ckpt_path={files}/model_state.pt", "report.enabled=yes"],
        ['report.enabled="yes": allowed true or false'],
    ),
    # run dirs
    "run_dir_not_writable": (
        "train.py",
        [*RUN, "hydra.run.dir=/proc/convdissect/run"],
        ["output dir /proc/convdissect/run cannot be written"],
    ),
    "run_dir_finished": (
        "train.py",
        [*RUN, "hydra.run.dir={files}/finished"],
        ["hydra.run.dir={files}/finished already holds a finished run", "overwrite=true"],
    ),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("bad_inputs")
    (out / "text.pt").write_text("epoch,loss\n1,0.5\n")
    state = SimpleConvNet([4, 8, 8, 8]).state_dict()
    torch.save(state, out / "model_state.pt")
    torch.save({**state, "conv1.weight": torch.full_like(state["conv1.weight"], float("nan"))}, out / "nan.pt")
    torch.save({**state, "conv3.weight": torch.zeros(8, 8, 3, 3)}, out / "wrong_shape.pt")
    torch.save({name: value * 1e38 for name, value in state.items()}, out / "huge.pt")  # finite, but overflows
    (out / "finished").mkdir()
    (out / "finished" / "metrics.json").write_text("{}\n")
    (out / "empty").mkdir()
    real = f"{data_dir}/MNIST/raw"
    for name, damage in (
        ("bad_magic", _bad_magic),
        ("garbage", _garbage),
        ("label_200", _label_200),
        ("truncated", _truncate),
    ):
        raw = out / name / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for idx in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
            (raw / idx).symlink_to(f"{real}/{idx}")
        shutil.copy(f"{real}/t10k-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte")
        damage(raw)
    return out


def _bad_magic(raw):  # right size, but the magic number of another IDX type
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.write(bytes([0, 0, 8, 2]))


def _garbage(raw):  # right size, random bytes
    (raw / "t10k-images-idx3-ubyte").unlink()
    noise = torch.randint(0, 256, (7_840_016,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    (raw / "t10k-images-idx3-ubyte").write_bytes(noise.numpy().tobytes())


def _label_200(raw):
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.seek(8 + 123)
        f.write(bytes([200]))


def _truncate(raw):
    with open(raw / "t10k-labels-idx1-ubyte", "r+b") as f:
        f.truncate(5000)


def rows(names):
    return [pytest.param(*CASES[name], id=name, marks=[pytest.mark.slow] if name in TRAINING else []) for name in names]


def with_run_dir(args: list[str], files, tmp_path) -> tuple[list[str], str]:
    """The row's arguments with {files} filled in, less hydra.run.dir, and that run dir (default: a fresh one)."""
    args = [a.format(files=files) for a in args]
    run_dirs = [a.removeprefix("hydra.run.dir=") for a in args if a.startswith("hydra.run.dir=")]
    return [a for a in args if not a.startswith("hydra.run.dir=")], (run_dirs or [str(tmp_path / "run")])[0]


@pytest.mark.parametrize("app,args,words", rows(CASES))
def test_bad_input_is_a_one_line_user_input_error(app, args, words, files, tmp_path, one_thread):
    """one_thread: the rows' threads=1 would otherwise stay set for the tests after them."""
    args, run_dir = with_run_dir(args, files, tmp_path)
    config_name, job = APPS[app]
    cfg = compose_cfg(config_name, args, run_dir)
    words = [word.format(files=files) for word in words]
    with pytest.raises(UserInputError, match=re.escape(words[0])) as raised:
        job(cfg)
    message = str(raised.value)
    assert "\n" not in message, message
    for word in words[1:]:
        assert word in message, message


@pytest.mark.slow
@pytest.mark.parametrize("app,args,words", rows(IN_A_PROCESS))
def test_bad_input_exits_2_with_one_error_line(app, args, words, files, tmp_path):
    args, run_dir = with_run_dir(args, files, tmp_path)
    proc = run_python(app, *args, f"hydra.run.dir={run_dir}", timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]
    for word in words:
        assert word.format(files=files) in errors[0]


# Hydra's own composition errors: (config, overrides, multirun, how the one line starts, words it holds).
COMPOSITION = {
    "unknown_key": ("train", ["foo=1"], False, "foo=1: no key foo in the train config (+foo=VALUE adds a new key)"),
    "typo_key": (
        "train",
        ["trainer.max_epoch=3"],
        False,
        "trainer.max_epoch=3: no key trainer.max_epoch in the train config; did you mean trainer.max_epochs?",
    ),
    "typo_group": (
        "train",
        ["modle=simple_convnet"],
        False,
        "modle=simple_convnet: no key modle in the train config; did you mean model?",
    ),
    "group_key_not_chosen": (
        "train",
        ["callbacks.pruning.iterations=2"],
        False,
        "callbacks.pruning.iterations=2: no key callbacks.pruning in the train config; keys there: model_checkpoint,",
    ),
    "missing_experiment": (
        "train",
        ["+experiment=missing"],
        False,
        # every experiment file, sorted
        "+experiment=missing: no experiment config missing; allowed: "
        + ", ".join(sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))),
    ),
    "missing_model": (
        "train",
        ["model=resnet"],
        False,
        "model=resnet: no model config resnet; allowed: handnet, sequential, simple_convnet",
    ),
    "typo_option": (
        "train",
        ["callbacks=prunin"],
        False,
        "callbacks=prunin: no callbacks config prunin; allowed: default, ",
        "; did you mean pruning?",
    ),
    "typo_launcher": (
        "train",
        ["hydra/launcher=jobli"],
        False,
        "hydra/launcher=jobli: no hydra/launcher config jobli; allowed: basic, joblib",
        "did you mean joblib?",
    ),
    "unparsable": ("train", ["model.widths=[1,"], False, "model.widths=[1,: not an override Hydra can read"),
    "sweep_without_m": (
        "train",
        ["seed=1,2"],
        False,
        "Ambiguous value for argument 'seed=1,2'; 1. To use it as a list",
    ),
    "sweep_value": ("train", ["seed=1,2", "model=simple_convnet,resnet"], True, "model=resnet: no model config resnet"),
    "eval_typo": (
        "eval",
        ["ckpt_pat=x.ckpt"],
        False,
        "ckpt_pat=x.ckpt: no key ckpt_pat in the eval config; did you mean ckpt_path?",
    ),
    "dissect_typo": (
        "dissect",
        ["report.dpii=50"],
        False,
        "report.dpii=50: no key report.dpii in the dissect config; did you mean report.dpi?",
    ),
}


@pytest.mark.parametrize("case", COMPOSITION.values(), ids=COMPOSITION)
def test_composition_error_is_one_line(case):
    config_name, overrides, multirun, *words = case
    with pytest.raises(UserInputError) as raised:
        check_composition(config_name, overrides, str(CONFIG_DIR), multirun)
    message = str(raised.value)
    assert message.startswith(words[0]) and "\n" not in message, message
    for word in words[1:]:
        assert word in message, message


def test_composition_check_passes_good_overrides():
    check_composition(
        "train", ["+experiment=prune_7iters", "callbacks.pruning.iterations=3", "seed=0,1"], str(CONFIG_DIR), True
    )


def test_a_sweep_configs_values_are_composed_before_any_job_and_the_command_line_wins(tmp_path):
    config_dir = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, config_dir)
    (config_dir / "sweep" / "typo.yaml").write_text(
        "# @package _global_\nhydra:\n  sweeper:\n    params:\n      seed: 0,1\n      trainer.max_epoch: 1,2\n"
    )
    with pytest.raises(UserInputError, match=r"^trainer.max_epoch=1: no key trainer.max_epoch .* trainer.max_epochs\?"):
        check_composition("train", ["+sweep=typo"], str(config_dir), True)
    check_composition("train", ["+sweep=typo", "+trainer.max_epoch=3"], str(config_dir), True)


@pytest.mark.slow
@pytest.mark.parametrize("app,arg", [("train.py", "+experiment=missing"), ("dissect.py", "report.dpii=50")])
def test_composition_error_exits_2_with_one_line(app, arg, tmp_path):
    proc = run_python(app, arg, f"hydra.run.dir={tmp_path}", timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(f"error: {arg}: ")
    assert list(tmp_path.iterdir()) == []  # refused before Hydra made the run dir
