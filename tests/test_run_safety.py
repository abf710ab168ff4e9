"""Runs that are never silently wrong: documented commands finish, interrupted runs say how to resume,
a run never deletes or overwrites what it reads, resumes refuse a changed config, outputs are atomic,
bad settings are refused before any work."""

import hashlib
import json
import logging
import signal
import subprocess
import sys
import time

import pytest
import torch
from omegaconf import OmegaConf

from convdissect.dissection import dissect
from convdissect.errors import UserInputError
from convdissect.evaluate import evaluate
from convdissect.models.checkpoint import read_checkpoint
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.runs import LOCK, atomic_write
from convdissect.tables.common import training_runs
from convdissect.train import train
from tests.helpers import CHECKOUT, FAST_NULLS, TINY, compose_cfg, run_python

# TINY for the command line, on one thread
TINY_ARGS = [arg for arg in TINY if not arg.startswith("~")] + ["threads=1"]


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "[tensorboard,csv]"])
def test_csv_logger_runs_finish(tmp_path, logger, one_thread):
    metrics = train(compose_cfg("train", TINY + [f"logger={logger}"], tmp_path))
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert (tmp_path / "csv" / "hparams.yaml").is_file()
    assert (tmp_path / "tensorboard").is_dir() == (logger != "csv")


@pytest.mark.slow
def test_progress_bar_off_alone(tmp_path, one_thread):
    overrides = [arg for arg in TINY if arg != "~callbacks.progress_bar"]
    train(compose_cfg("train", overrides, tmp_path))
    assert (tmp_path / "metrics.json").is_file()


@pytest.mark.slow
def test_logger_null_on_the_command_line(tmp_path):
    run = run_python("train.py", *TINY_ARGS, "logger=null", f"hydra.run.dir={tmp_path}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "metrics.json").is_file() and not (tmp_path / "tensorboard").exists()


# Many short epochs without a schedule: a fit that runs until it is signalled, and resumes to any epoch.
ENDLESS = TINY_ARGS + ["trainer.max_epochs=1000", "trainer.limit_train_batches=10", "scheduler=null"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_last_ckpt_and_says_how_to_resume(tmp_path, signum, one_thread):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "train.py", *ENDLESS, f"hydra.run.dir={run_dir}"],
        cwd=CHECKOUT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # into a later epoch: the checkpoint must be the one saved at the signal
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 128 + signum
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"stopped by {signum.name} at epoch ") and line.endswith(f" ckpt_path={last}")
    assert not (run_dir / "metrics.json").exists()  # not a finished run
    saved = torch.load(last, weights_only=True)
    assert f"step {saved['global_step']};" in line

    # The printed ckpt_path resumes: one more epoch trains the steps left in the interrupted one.
    epochs = saved["epoch"] + 1
    resume = [a for a in ENDLESS if not a.startswith("trainer.max_epochs")] + [f"trainer.max_epochs={epochs}"]
    metrics = train(compose_cfg("train", resume + [f"ckpt_path={last}"], tmp_path / "resumed"))
    assert metrics["steps"] == 10 * epochs


@pytest.mark.slow
def test_a_failing_sweep_job_is_recorded_and_the_others_run(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    (sweep / "1" / "error.txt").write_text("error: an earlier sweep's job 1\n")  # not this sweep's failure
    run = run_python("train.py", "-m", "model.widths=[4,8,0,8],[4,8,8,8]", *TINY_ARGS[1:], f"hydra.sweep.dir={sweep}")
    error = "error: model.widths=[4, 8, 0, 8]: every width must be a positive integer"
    assert run.returncode == 1, run.stderr[-3000:]
    assert (sweep / "0" / "error.txt").read_text().startswith(error)
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "1" / "error.txt").exists()
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert summary["jobs"] == 2 and summary["failed"] == 1
    assert summary["job_list"][0]["overrides"][0] == "model.widths=[4,8,0,8]"
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"error: 1 of 2 sweep jobs failed ({sweep / 'sweep_summary.json'}): job 0 model.widths=[4,8,0,8] "
    )


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write(path, "old\n")

    def half_written(tmp):
        tmp.write_text("{half")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, half_written)
    assert path.read_text() == "old\n" and list(tmp_path.iterdir()) == [path]  # no temporary file left
    atomic_write(tmp_path / "state.pt", lambda tmp: torch.save({"w": torch.ones(2)}, tmp))
    assert torch.load(tmp_path / "state.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]


@pytest.mark.slow
def test_overwrite_keeps_the_checkpoint_it_resumes(tmp_path, one_thread):
    overrides = TINY + ["scheduler=null"]
    train(compose_cfg("train", overrides, tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    resume = overrides + ["trainer.max_epochs=2", "overwrite=true", f"ckpt_path={last}"]
    metrics = train(compose_cfg("train", resume, tmp_path))
    assert metrics["epochs"] == 2 and metrics["steps"] == 16 and last.is_file()


@pytest.mark.slow
@pytest.mark.parametrize("app, args", [("eval.py", ["overwrite=true"]), ("dissect.py", [])])
def test_eval_and_dissect_leave_a_training_runs_config(tmp_path, app, args):
    saved = tmp_path / ".hydra" / "config.yaml"
    saved.parent.mkdir()
    OmegaConf.save(compose_cfg("train", TINY, tmp_path), saved)  # what train.py leaves in its run dir
    before = saved.read_text()
    run = run_python(app, f"ckpt_path={tmp_path / 'model_state.pt'}", f"hydra.run.dir={tmp_path}", *args)
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"error: hydra.run.dir={tmp_path} holds a training run ({saved}); {app[:-3]} would replace its saved "
        "config: pick another hydra.run.dir"
    )
    assert saved.read_text() == before


@pytest.fixture(scope="module")
def onecycle_run(tmp_path_factory):
    """A finished one-epoch run with the default OneCycleLR schedule."""
    out = tmp_path_factory.mktemp("onecycle")
    train(compose_cfg("train", TINY + ["threads=1"], out))
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_resume_refuses_a_changed_model_or_seed(onecycle_run, tmp_path):
    changed = TINY + ["model.widths=[4,8,8,16]", "seed=1", "trainer.limit_val_batches=1", f"ckpt_path={onecycle_run}"]
    with pytest.raises(UserInputError) as refused:
        train(compose_cfg("train", changed, tmp_path))
    assert str(refused.value).startswith(
        f"ckpt_path={onecycle_run} was saved with another config: data.seed=0 (now 1), "
        "model.widths=[4, 8, 8, 8] (now [4, 8, 8, 16]), seed=0 (now 1) (a resume keeps model, "
    )  # trainer.limit_val_batches changes nothing that is trained: not listed
    assert not (tmp_path / "checkpoints").exists()  # refused before any work


@pytest.mark.slow
def test_resume_refuses_to_stretch_a_onecycle_schedule(onecycle_run, tmp_path):
    longer = TINY + ["trainer.max_epochs=2", f"ckpt_path={onecycle_run}"]
    with pytest.raises(UserInputError, match=r"trainer.max_epochs=1 \(now 2\) .* the OneCycleLR schedule spans"):
        train(compose_cfg("train", longer, tmp_path))


@pytest.mark.parametrize(
    "override, error",
    [
        ("data.batch_size=0", "data.batch_size=0: allowed an integer >= 1"),
        ("data.batch_size=8.5", "data.batch_size=8.5: allowed an integer >= 1"),
        ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5: a fit needs at least 1 epoch, an integer"),
        ("seed=-1", "seed=-1: allowed an integer >= 0"),
        ("optimizer.lr=0", "optimizer.lr=0: allowed a finite number > 0"),
        ("scheduler.max_lr=inf", "scheduler.max_lr=inf: allowed a finite number > 0"),
        ("fit=no", 'fit="no": allowed true or false'),
        ("overwrite='false'", 'overwrite="false": allowed true or false'),
        ("threads=two", 'threads="two": allowed a positive integer, or null'),
    ],
)
def test_bad_settings_refused_before_any_work(tmp_path, override, error):
    with pytest.raises(UserInputError) as refused:
        train(compose_cfg("train", TINY + [override], tmp_path))
    assert str(refused.value).startswith(error)
    assert list(tmp_path.iterdir()) == []


def test_eval_checks_its_settings(tmp_path):
    cfg = compose_cfg("eval", ["ckpt_path=unused.ckpt", "overwrite=1"], tmp_path)
    with pytest.raises(UserInputError, match="^overwrite=1: allowed true or false$"):
        evaluate(cfg)


@pytest.mark.slow
def test_model_state_hash_recorded_and_a_changed_file_warned(tmp_path, one_thread, caplog):
    metrics = train(compose_cfg("train", TINY, tmp_path / "run"))
    state_file, metrics_file = tmp_path / "run" / "model_state.pt", tmp_path / "run" / "metrics.json"
    sha256 = hashlib.sha256(state_file.read_bytes()).hexdigest()
    assert metrics["model_state_sha256"] == json.loads(metrics_file.read_text())["model_state_sha256"] == sha256
    assert metrics["debug"] is False

    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "fc5.bias": state["fc5.bias"] + 1}, state_file)  # replaced after the run
    eval_args = [f"ckpt_path={state_file}", "trainer.limit_test_batches=1", "data.eval_batch_size=100", "threads=1"]
    with caplog.at_level(logging.WARNING):
        evaluate(compose_cfg("eval", eval_args, tmp_path / "eval"))
    warned = [r.getMessage() for r in caplog.records if "sha256" in r.getMessage()]
    assert warned == [
        f"ckpt_path={state_file}: its sha256 differs from the one in {metrics_file}: "
        "the file changed since that run wrote it"
    ]


@pytest.mark.slow
def test_a_damaged_file_is_refused_where_torch_load_would_read_other_weights(tmp_path):
    weight = torch.arange(1000, dtype=torch.float32)
    path = tmp_path / "model_state.pt"
    torch.save({"conv1.weight": weight}, path)
    data = bytearray(path.read_bytes())
    data[data.find(weight.numpy().tobytes()) + 2001] ^= 0xFF  # one bit pattern inside the tensor's record
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["conv1.weight"], weight)  # what a load would use
    with pytest.raises(UserInputError, match=r"^ckpt_path=.*: damaged, its record .*data/0 fails its CRC-32 check"):
        read_checkpoint(path)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system (a tmpfs: needs root, else the test is skipped), unmounted afterwards."""
    disk = tmp_path / "small_disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_partial_checkpoint(small_disk, one_thread):
    # the full-width net's checkpoint (3.1 MB with its optimizer state) does not fit
    overrides = [*TINY, "model.widths=[32,64,128,128]", "trainer.limit_train_batches=4"]
    with pytest.raises(UserInputError, match=r"^\S+/checkpoints/epoch_000.ckpt: no space left on its device;"):
        train(compose_cfg("train", overrides, small_disk / "run"))
    assert list((small_disk / "run" / "checkpoints").iterdir()) == []  # no truncated file, no temporary one


def test_debug_runs_are_marked_and_left_out_of_the_tables(tmp_path, one_thread):
    run_dir = tmp_path / "fdr"
    metrics = train(compose_cfg("train", ["debug=fdr", "model.widths=[4,8,8,8]", "data.eval_batch_size=200"], run_dir))
    assert metrics["debug"] is True and json.loads((run_dir / "metrics.json").read_text())["debug"] is True
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(compose_cfg("train", ["debug=fdr"], run_dir), run_dir / ".hydra" / "config.yaml")
    assert training_runs([tmp_path]) == ([], [])  # neither a result nor a run that failed


@pytest.mark.slow
def test_sigterm_during_the_test_exits_143(tmp_path):
    run_dir = tmp_path / "run"
    slow_test = [a for a in TINY_ARGS if not a.startswith(("trainer.limit_test_batches", "data.eval_batch_size"))]
    proc = subprocess.Popen(
        [sys.executable, "train.py", *slow_test, "data.eval_batch_size=1", f"hydra.run.dir={run_dir}"],
        cwd=CHECKOUT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    best = run_dir / "checkpoints" / "last.ckpt"  # saved when the fit's one epoch ends, before the test
    deadline = time.monotonic() + 120
    while not best.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # into the test: 10000 batches of one image
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("stopped by SIGTERM during the test: no metrics.json; test ")
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_a_run_dir_held_by_a_live_job_is_refused_and_a_dead_jobs_lock_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(str(holder.pid))
        refused = run_python("eval.py", f"ckpt_path={tmp_path / 'missing.pt'}", f"hydra.run.dir={tmp_path}")
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"error: hydra.run.dir={tmp_path} is being written by another job (pid {holder.pid}, "
            f"{tmp_path / LOCK}); pick another dir, or wait for that job to end"
        )
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is taken over, the run gets as far as its own checks, and its lock goes with it
    taken = run_python("eval.py", f"ckpt_path={tmp_path / 'missing.pt'}", f"hydra.run.dir={tmp_path}")
    assert taken.returncode == 2 and "no such file" in taken.stderr and "being written" not in taken.stderr
    assert not (tmp_path / LOCK).exists()


@pytest.mark.slow
def test_a_second_dissection_into_one_dir_is_refused_or_replaces_every_file_of_the_first(tmp_path, one_thread):
    torch.manual_seed(0)
    state = tmp_path / "net.pt"
    torch.save(SimpleConvNet([4, 8, 8, 8]).state_dict(), state)
    out = tmp_path / "dissection"
    out.mkdir()
    for name in ("labels.json", "claims.json", "report.html", "conv1_weights.png"):  # another net's dissection
        (out / name).write_text("the first net's")
    refused = run_python("dissect.py", f"ckpt_path={state}", f"hydra.run.dir={out}", "threads=1")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: hydra.run.dir={out} already holds a finished run (labels.json); pick another dir, "
        "add overwrite=true to replace its outputs"
    )
    quick = [
        "n_images=200",
        "superstimulus.enabled=false",
        "report.enabled=false",
        "claims.ablation=false",
        *FAST_NULLS,
    ]
    dissect(compose_cfg("dissect", [f"ckpt_path={state}", "overwrite=true", *quick], out))
    assert not (out / "report.html").exists() and not (out / "conv1_weights.png").exists()
    assert json.loads((out / "labels.json").read_text())["units"][0]["name"] == "conv1_1"
    assert json.loads((out / "claims.json").read_text())["fidelity"]
