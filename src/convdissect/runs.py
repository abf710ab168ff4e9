"""A run's own directory: writable, and never silently shared with a finished run."""

from __future__ import annotations

import atexit
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from convdissect.errors import UserInputError

ERROR = "error.txt"  # a sweep job's error line, in its dir (sweep_summary.json lists the failed jobs)
SWEEP_SUMMARY = "sweep_summary.json"
FINISHED = "metrics.json"  # written last by a run: its presence means the dir holds a finished run
DISSECTED = "labels.json"  # written by a dissection: the dir holds one
# What a run writes (conf/callbacks/model_checkpoint.yaml, conf/logger/*): replaced on overwrite=true.
OUTPUTS = ("metrics.json", "model_state.pt", "checkpoints", "tensorboard", "csv", "pruning_accuracy.png")
LOCK = ".convdissect.lock"  # the pid of the job writing a run dir, removed when it exits


def check_writable(run_dir: Path) -> None:
    """The dir, or the nearest folder above it that exists, must take a file (tried with a temporary
    one: permission bits alone do not say, e.g. for root or a read-only mount)."""
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserInputError(
            f"output dir {run_dir} cannot be written ({existing}: {err.strerror or err}); pick another hydra.run.dir"
        ) from None


def check_run_dir(run_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse a dir that cannot be written, or that holds a finished run, unless overwrite=true or
    the run resumes (ckpt_path=)."""
    run_dir = Path(run_dir)
    check_writable(run_dir)
    held = [name for name in (FINISHED, DISSECTED) if (run_dir / name).exists()]
    if held and not overwrite and not resuming:
        raise UserInputError(
            f"hydra.run.dir={run_dir} already holds a finished run ({held[0]}); pick another dir, "
            "add overwrite=true to replace its outputs"
            + (", or ckpt_path=CKPT to resume" if held[0] == FINISHED else "")
        )


def lock_run_dir(run_dir: Path) -> None:
    """Take the dir for this process until it exits: refused while another live process holds it (two
    jobs into one explicit hydra.run.dir would mix their outputs); a lock whose process is gone is taken over."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    mine = run_dir / f"{LOCK}.{os.getpid()}"
    mine.write_text(str(os.getpid()))
    try:
        while True:
            try:
                os.link(mine, lock)  # atomic, and fails where a lock exists: the lock is never half-written
            except FileExistsError:
                holder = _lock_holder(lock)
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise UserInputError(
                        f"hydra.run.dir={run_dir} is being written by another job (pid {holder}, {lock}); "
                        "pick another dir, or wait for that job to end"
                    ) from None
                lock.unlink(missing_ok=True)  # left by a job that ended without removing it
                continue
            atexit.register(lock.unlink, missing_ok=True)
            return
    finally:
        mine.unlink()


def _lock_holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None  # unreadable: taken over


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def clear_outputs(run_dir: Path, keep: Iterable[str | Path | None] = (), outputs: Iterable[str] = OUTPUTS) -> None:
    """Remove a previous run's outputs (overwrite=true), so none of them is mistaken for the new run's;
    an output that is or holds a file in `keep` (one this run reads, e.g. its ckpt_path) stays."""
    kept = [Path(path).resolve() for path in keep if path]
    for name in outputs:
        path = (Path(run_dir) / name).resolve()
        if any(file == path or path in file.parents for file in kept):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def check_not_a_training_run(run_dir: Path, config: DictConfig) -> None:
    """eval.py and dissect.py must not replace a training run's saved config (.hydra/config.yaml, which
    model_state.pt's loading and the results table read): refuse such a dir."""
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if "fit" in config or not saved.is_file():  # train.py (resuming or overwrite=true) writes its own
        return
    if "fit" in OmegaConf.load(saved):
        raise UserInputError(
            f"hydra.run.dir={run_dir} holds a training run ({saved}); {config.task_name} would replace its saved "
            "config: pick another hydra.run.dir"
        )


def atomic_write(path: str | Path, content: str | bytes | Callable[[Path], object]) -> None:
    """Write path whole or not at all: the text, or `content(tmp)` (e.g. a torch.save), goes to a temporary
    file in the same dir, which then replaces path in one step (os.replace); a crash or kill mid-write leaves
    the previous file, never a truncated one that looks finished; a full disk is one UserInputError line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise UserInputError(f"{path}: no space left on its device; free some, or pick another hydra.run.dir") from None
    finally:
        tmp.unlink(missing_ok=True)


class RunDirGuard(Callback):
    """Hydra callback: checks the run dir before Hydra writes its .hydra/ files and log there
    (a refused run must not touch a finished run's saved config). Prints one line and exits 2."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_not_a_training_run(Path(config.hydra.run.dir), config)
            if "overwrite" in config:  # the train and eval apps write metrics.json
                resuming = bool(config.get("fit") and config.get("ckpt_path"))
                check_run_dir(Path(config.hydra.run.dir), bool(config.overwrite), resuming)
            else:
                check_writable(Path(config.hydra.run.dir))
            lock_run_dir(Path(config.hydra.run.dir))
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_writable(Path(config.hydra.sweep.dir))
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)


def in_multirun() -> bool:
    """Whether this is a job of a Hydra sweep (-m), whose failure must not end the other jobs."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def forget_failed_job() -> None:
    """A sweep job starting over an earlier sweep's job dir: that job's error.txt is not this one's."""
    (Path(HydraConfig.get().runtime.output_dir) / ERROR).unlink(missing_ok=True)


def record_failed_job(line: str) -> None:
    """A sweep job failed: its error line goes to stderr and to error.txt in its dir, where SweepReport
    finds it when the sweep ends."""
    hydra_config = HydraConfig.get()
    print(f"{line} (sweep job {hydra_config.job.num})", file=sys.stderr)
    job_dir = Path(hydra_config.runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(job_dir / ERROR, line + "\n")


class SweepReport(Callback):
    """Hydra callback: when a sweep ends, sweep_summary.json in its dir lists every job (its dir and
    overrides) and the failed ones' error lines; a sweep with a failed job exits 1 with one line naming them."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        saved = config.hydra.output_subdir  # each job's .hydra/, holding its overrides
        job_dirs = {p.parent.parent for p in sweep_dir.rglob(f"{saved}/overrides.yaml")} if saved else set()
        job_dirs |= {p.parent for p in sweep_dir.rglob(ERROR)}
        jobs = [
            {
                "dir": str(job_dir.relative_to(sweep_dir)),
                "overrides": _job_overrides(job_dir / str(saved) / "overrides.yaml"),
                "error": (job_dir / ERROR).read_text().strip() if (job_dir / ERROR).is_file() else None,
            }
            for job_dir in sorted(job_dirs)
        ]
        failed = [job for job in jobs if job["error"]]
        summary = {"jobs": len(jobs), "failed": len(failed), "job_list": jobs}
        atomic_write(sweep_dir / SWEEP_SUMMARY, json.dumps(summary, indent=2) + "\n")
        if failed:
            listed = "; ".join(
                f"job {job['dir']} {' '.join(job['overrides'])}: {job['error'].removeprefix('error: ')}"
                for job in failed
            )
            print(
                f"error: {len(failed)} of {len(jobs)} sweep jobs failed ({sweep_dir / SWEEP_SUMMARY}): {listed}",
                file=sys.stderr,
            )
            sys.exit(1)


def _job_overrides(path: Path) -> list[str]:
    return list(OmegaConf.load(path)) if path.is_file() else []
