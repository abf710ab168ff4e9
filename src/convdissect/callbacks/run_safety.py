"""What keeps a run from being silently wrong around its fit: a resume that refuses a changed config
(every checkpoint holds the composed config), and SIGTERM / SIGINT saving a checkpoint to resume from."""

from __future__ import annotations

import io
import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from convdissect.errors import UserInputError
from convdissect.models.checkpoint import read_checkpoint
from convdissect.runs import atomic_write

log = logging.getLogger(__name__)

# The checkpoint's copy of the composed config, compared by a resume (check_same_config).
CONFIG_KEY = "convdissect_config"
# What a resume must keep: it decides what is trained. Paths, loggers and the trainer's other keys may change.
RESUME_KEEPS = ("model", "data", "seed", "optimizer", "scheduler", "callbacks.pruning")
RESUME_MAY_CHANGE = ("data.data_dir", "data.download")  # where MNIST's files are, not what they hold
# A OneCycleLR's length is fixed when the fit starts (and restored from the checkpoint): the keys setting it.
SCHEDULE_LENGTH = (
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.limit_train_batches",
    "trainer.accumulate_grad_batches",
    "trainer.devices",
    "trainer.num_nodes",
)


def leaves(config: dict, prefix: str = "") -> dict:
    """{dotted key: value} of every leaf of a plain config (keys like callbacks.pruning.criterion)."""
    if not (isinstance(config, dict) and config):
        return {prefix[:-1]: config}
    return {k: v for key, value in config.items() for k, v in leaves(value, f"{prefix}{key}.").items()}


def check_same_config(cfg: DictConfig, ckpt_path: str) -> None:
    """A resume trains on with the checkpoint's model, data, seed, optimizer, schedule and pruning: refuse,
    in one line, a config that changes any of them (the result would match neither config)."""
    saved = read_checkpoint(ckpt_path).get(CONFIG_KEY)
    if saved is None:
        log.warning("ckpt_path=%s holds no config (saved before configs were stored): not compared", ckpt_path)
        return
    current = OmegaConf.to_container(cfg, resolve=True)
    keys = RESUME_KEEPS
    if str((saved.get("scheduler") or {}).get("_target_")).endswith("OneCycleLR"):
        keys += SCHEDULE_LENGTH
    old, new = (
        {k: v for k, v in leaves(config).items() if any(k == p or k.startswith(p + ".") for p in keys)}
        for config in (saved, current)
    )
    changed = [k for k in sorted(old.keys() | new.keys()) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k)]
    if not changed:
        return
    why = "a resume keeps model, data, seed, optimizer, scheduler and callbacks.pruning"
    if any(k in SCHEDULE_LENGTH for k in changed):
        why += "; the OneCycleLR schedule spans the saved run's steps, so it cannot train longer or shorter"
    raise UserInputError(
        f"ckpt_path={ckpt_path} was saved with another config: "
        + ", ".join(f"{k}={old.get(k)} (now {new.get(k)})" for k in changed)
        + f" ({why}); resume with the saved values, or start a new run from its weights with model.init_from={ckpt_path}"
    )


class StoreConfig(L.Callback):
    """Every checkpoint holds the run's composed config (plain values), which a resume compares."""

    def __init__(self, cfg: DictConfig):
        self.config = OmegaConf.to_container(cfg, resolve=True)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CONFIG_KEY] = self.config


class RunInterrupted(Exception):
    """A fit stopped by a signal, after saving a checkpoint to resume from."""

    def __init__(self, signum: int, ckpt_path: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.ckpt_path = signum, ckpt_path


class SaveOnSignal(L.Callback):
    """SIGTERM or SIGINT during a fit: the current training batch finishes, then last.ckpt is saved
    there (a state Lightning resumes from, as its own mid-epoch checkpoints) and the fit stops with
    RunInterrupted. Stopping at once could save a half-applied optimizer step, or nothing."""

    def __init__(self, ckpt_path: Path):
        self.ckpt_path = ckpt_path
        self.signum: int | None = None

    def _receive(self, signum: int, frame) -> None:
        self.signum = signum

    @contextmanager
    def noting_sigterm(self):
        """SIGTERM noted (not fatal) from the fit's setup to the test's end, so that one arriving between
        them, or during the test (whose Lightning handler would exit 0), still ends the run with 143."""
        if threading.current_thread() is not threading.main_thread():  # the only thread that may set handlers
            yield
            return
        previous = signal.signal(signal.SIGTERM, self._receive)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After Lightning's own SIGTERM handler is set (its teardown restores the handlers from before the fit).
        if threading.current_thread() is threading.main_thread():  # the only thread that may set handlers
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._receive)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_signalled(trainer)  # a signal during the epoch's validation

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        if self.signum is None:
            return
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.ckpt_path, trainer.save_checkpoint)  # a second signal or a kill mid-save keeps the old one
        raise RunInterrupted(self.signum, self.ckpt_path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoints written as our other outputs are (runs.atomic_write: a temporary file in the
    checkpoint's own dir, then renamed): Lightning's own writes it in the system's temporary dir and copies
    it over, which on a full disk leaves a truncated checkpoint and a traceback."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, saved_bytes(checkpoint))


def saved_bytes(obj) -> bytes:
    """torch.save's bytes, made in memory: written by Python's own file writes, a full disk is then an
    OSError that atomic_write reports in one line (torch.save's writer raises a bare RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
