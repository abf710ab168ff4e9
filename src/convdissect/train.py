"""One training run from a composed config: fit, test, write metrics.json and model_state.pt."""

from __future__ import annotations

import json
import logging
import shlex
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from convdissect.callbacks.run_safety import (
    AtomicCheckpointIO,
    RunInterrupted,
    SaveOnSignal,
    StoreConfig,
    check_same_config,
    leaves,
    saved_bytes,
)
from convdissect.config import check_config, instantiate, set_threads
from convdissect.errors import UserInputError
from convdissect.evaluate import evaluate, finite_test_metrics
from convdissect.models import net_class, split_model_config
from convdissect.models.checkpoint import (
    STATE_HASH_KEY,
    check_resumable,
    file_sha256,
    load_net,
    load_net_and_spec,
)
from convdissect.models.lit_module import LitClassifier
from convdissect.runs import atomic_write, check_run_dir, clear_outputs

log = logging.getLogger(__name__)

TEST_CKPTS = ("best", "last")


def build_module(cfg: DictConfig) -> LitClassifier:
    """The LightningModule; with model.init_from (a model_state.pt or a .ckpt), the net gets that
    file's widths and weights."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    net, settings = split_model_config(model)
    init_from = model.get("init_from")
    source = None
    if init_from:
        if net_class(net) != "SimpleConvNet":
            raise UserInputError(
                f"model.init_from={init_from}: only a SimpleConvNet starts from a file, not {net.get('_target_')}"
            )
        try:
            source = load_net(init_from)
        except UserInputError as err:  # its messages name the file as dissect.py's ckpt_path
            raise UserInputError(str(err).replace("ckpt_path=", "model.init_from=", 1)) from None
        net["widths"], net["conv2"] = list(source.widths), source.has_conv2
    scheduler = cfg.get("scheduler")
    module = LitClassifier(
        net=net,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(scheduler, resolve=True) if scheduler else None,
        **settings,
    )
    if source is not None:
        module.net.load_state_dict(source.state_dict())
    return module


def check_before_fit(cfg: DictConfig) -> None:
    """Settings that would otherwise fail, or train nothing, only after (or instead of) training."""
    test_ckpt = cfg.get("test_ckpt")
    if test_ckpt is not None and test_ckpt not in TEST_CKPTS:
        if not Path(str(test_ckpt)).is_file():
            raise UserInputError(
                f"test_ckpt={test_ckpt}: allowed {list(TEST_CKPTS)}, null (the final weights) or a checkpoint file"
            )
        try:  # the test loads it after the whole fit: a file that is not one of our checkpoints fails now
            check_resumable(test_ckpt)
            load_net_and_spec(test_ckpt)
        except UserInputError as err:  # its messages name the file as ckpt_path
            raise UserInputError(str(err).replace("ckpt_path=", "test_ckpt=", 1)) from None
    fast_dev_run = cfg.trainer.get("fast_dev_run")
    if fast_dev_run and "pruning" in (cfg.get("callbacks") or {}):  # Lightning would then set max_epochs=1
        raise UserInputError(
            f"trainer.fast_dev_run={str(fast_dev_run).lower()} (debug=fdr) runs one batch of one epoch, which cannot "
            "hold the pruning schedule of callbacks.pruning; use debug=limit, which keeps the epochs and shortens each"
        )
    if cfg.get("ckpt_path"):
        check_resumable(cfg.ckpt_path)
        check_same_config(cfg, cfg.ckpt_path)


def check_weights_to_test(cfg: DictConfig) -> None:
    """fit=false must test real weights: a file's, or a net built by hand; never a random init."""
    if cfg.model.get("init_from") or cfg.model.get("init") == "hand":
        return
    raise UserInputError(
        "fit=false with nothing to load: the net would be tested at its random initialisation; give ckpt_path=CKPT "
        "(or python eval.py ckpt_path=CKPT), model.init_from=STATE_DICT, or a hand-built net (model.init=hand)"
    )


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def _run_info(cfg: DictConfig) -> dict:
    """The experiment's name and the command-line overrides, when run through Hydra."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return {
            "experiment": hc.runtime.choices.get("experiment") or cfg.task_name,
            "overrides": list(hc.overrides.task),
        }
    return {"experiment": cfg.task_name, "overrides": []}


def flat_config(cfg: DictConfig, experiment: str) -> dict:
    """The whole composed config as flat plain values, for TensorBoard's HParams tab: runs of a sweep
    compare on every setting."""
    flat = leaves(OmegaConf.to_container(cfg, resolve=True))
    return {"experiment": experiment} | {
        k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()
    }


def _progress(trainer: L.Trainer) -> dict:
    """Epochs and steps trained. Spawned DDP workers (ddp_spawn) do not send their counters back
    to this process, so there they are unknown (None) rather than a wrong 0."""
    if trainer.world_size > 1 and trainer.global_step == 0:
        return {"epochs": None, "steps": None}
    return {"epochs": trainer.current_epoch, "steps": trainer.global_step}


def _val_metrics(trainer: L.Trainer) -> dict:
    """The final val/acc and the best one (the monitored checkpoint's; after pruning, among the pruned net's epochs)."""
    final = trainer.callback_metrics.get("val/acc")
    scores = [c.best_model_score for c in trainer.checkpoint_callbacks if c.monitor == "val/acc"]
    best = next((score for score in scores if score is not None), None)
    final = float(final) if final is not None else None
    return {"val/acc": final, "val/acc_best": float(best) if best is not None else final}


def _final_net(metrics: dict) -> dict:
    """HParams metrics describing the final net: its parameters, and for pruning runs each layer's
    width and the FLOPs when the pruning history counts them."""
    final = {"final/n_params": metrics["n_params"]}
    history = metrics.get("pruning_history") or []
    if history:
        layers, widths = history[-1]["kept_channels"], history[-1]["widths"]
        final.update({f"final/width_{layer}": w for layer, w in zip(layers, widths)})
    flops = metrics.get("flops", history[-1].get("flops") if history else None)
    if isinstance(flops, (int, float)):
        final["final/flops"] = flops
    return final


def _resume_command(cfg: DictConfig, ckpt_path: Path) -> str:
    """The command line that resumes this run from ckpt_path: its own overrides, ckpt_path= replaced."""
    overrides = [o for o in _run_info(cfg)["overrides"] if not o.startswith("ckpt_path=")]
    return shlex.join(["python", "train.py", *overrides, f"ckpt_path={ckpt_path}"])


def train(cfg: DictConfig) -> dict:
    """Fit and test one net; return the metrics written to <output_dir>/metrics.json."""
    start = time.perf_counter()
    check_config(cfg)
    set_threads(cfg.get("threads"))
    out_dir = Path(cfg.paths.output_dir)
    fit = cfg.get("fit", True)
    check_run_dir(out_dir, overwrite=cfg.get("overwrite", False), resuming=bool(fit and cfg.get("ckpt_path")))
    if not fit and cfg.get("ckpt_path"):  # test a checkpoint's own weights
        return evaluate(cfg)
    if fit:
        check_before_fit(cfg)
    else:
        check_weights_to_test(cfg)
    if cfg.get("overwrite"):
        test_ckpt = cfg.get("test_ckpt")
        reads = [cfg.get("ckpt_path"), cfg.model.get("init_from"), test_ckpt if test_ckpt not in TEST_CKPTS else None]
        clear_outputs(out_dir, keep=reads)
    L.seed_everything(cfg.seed, workers=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    trainer = build_trainer(cfg, out_dir)
    stopper = next(c for c in trainer.callbacks if isinstance(c, SaveOnSignal))
    with stopper.noting_sigterm():
        val = fit_net(cfg, trainer, module, datamodule) if fit else {"val/acc": None, "val/acc_best": None}
        has_best = any(isinstance(c, ModelCheckpoint) and c.best_model_path for c in trainer.callbacks)
        ckpt_path = cfg.get("test_ckpt") if has_best or cfg.get("test_ckpt") not in TEST_CKPTS else None
        test_metrics = test_net(trainer, stopper, module, datamodule, ckpt_path)
    metrics = {
        **test_metrics,
        **val,
        "widths": list(getattr(module.net, "widths", [])),
        "n_params": module.n_params,
        "wall_s": round(time.perf_counter() - start, 2),
        **_progress(trainer),
        **_run_info(cfg),
        "tested_checkpoint": ckpt_path and trainer.ckpt_path,
        "device": str(trainer.strategy.root_device),
        "torch_version": torch.__version__,
        "lightning_version": L.__version__,
        "debug": bool(cfg.get("debug_run", False)),
    }
    for callback in trainer.callbacks:  # e.g. the pruning callback's per-iteration history
        if hasattr(callback, "run_summary"):
            metrics.update(callback.run_summary())
    if trainer.is_global_zero:
        write_outputs(cfg, trainer, module, metrics, out_dir)
    return metrics


def build_trainer(cfg: DictConfig, out_dir: Path) -> L.Trainer:
    """The Trainer with the config's loggers and callbacks, plus StoreConfig and SaveOnSignal."""
    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _instantiate_group(cfg.get("callbacks"))
    # Callbacks Lightning refuses in these settings (logger=null, trainer.enable_progress_bar=false)
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    checkpoint_dirs = [c.dirpath for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    callbacks.append(StoreConfig(cfg))
    callbacks.append(
        SaveOnSignal(Path(checkpoint_dirs[0] if checkpoint_dirs else out_dir / "checkpoints") / "last.ckpt")
    )
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def fit_net(cfg: DictConfig, trainer: L.Trainer, module: LitClassifier, datamodule) -> dict:
    """The fit (resumed from ckpt_path when given); a signal ends the process with 128 + its number
    after saying how to resume. Returns the final and best val/acc."""
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except RunInterrupted as stop:  # no metrics.json: the run is not finished
        print(
            f"{stop} at epoch {trainer.current_epoch}, step {trainer.global_step}; "
            f"saved {stop.ckpt_path}; resume with: {_resume_command(cfg, stop.ckpt_path)}",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)  # the shell's status for a process ended by that signal
    if _progress(trainer)["steps"] == 0:
        raise UserInputError(
            f"the fit took no optimizer step (trainer.max_epochs={trainer.max_epochs}, "
            f"trainer.limit_train_batches={cfg.trainer.get('limit_train_batches')}, "
            f"data.batch_size={cfg.data.get('batch_size')}): nothing was trained"
        )
    return _val_metrics(trainer)


def test_net(trainer: L.Trainer, stopper: SaveOnSignal, module: LitClassifier, datamodule, ckpt_path) -> dict:
    """test/acc and test/loss of the module's weights, or of ckpt_path's. SIGTERM before or during the test
    ends the process with 143 (Lightning's own handling would exit 0 with no metrics); a non-finite result
    is an error."""
    test_metrics = None
    try:
        if stopper.signum is None:
            (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        pass
    if stopper.signum is not None or trainer.received_sigterm:  # also during the last batch, which Lightning finishes
        saved = [c.best_model_path or c.last_model_path for c in trainer.checkpoint_callbacks]
        hint = f"; test the fit's checkpoint with: python eval.py ckpt_path={saved[0]}" if any(saved) else ""
        print(f"stopped by SIGTERM during the test: no metrics.json{hint}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    return finite_test_metrics(test_metrics)


def write_outputs(cfg: DictConfig, trainer: L.Trainer, module: LitClassifier, metrics: dict, out_dir: Path) -> None:
    """model_state.pt (its sha256 in metrics), metrics.json last (a finished run), the loggers' hparams."""
    state = module.net.state_dict()
    atomic_write(out_dir / "model_state.pt", saved_bytes(state))
    metrics[STATE_HASH_KEY] = file_sha256(out_dir / "model_state.pt")
    atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    # Lightning writes these at step 0: val/acc stays out, so its curve keeps only its epochs.
    hparam_metrics = {k: metrics[k] for k in ("test/acc", "test/loss", "val/acc_best") if metrics[k] is not None}
    for logger in trainer.loggers:
        hparams = flat_config(cfg, metrics["experiment"])
        # ... and a callback's numbers about the net, e.g. the HandNet's explanation/numbers
        explained = {k: v for k, v in metrics.items() if k.startswith("explanation/")}
        if isinstance(logger, TensorBoardLogger):  # the HParams tab; other loggers take no metrics here
            logger.log_hyperparams(hparams, metrics={**hparam_metrics, **_final_net(metrics), **explained})
        else:
            logger.log_hyperparams(hparams)
        logger.finalize("success")
    log.info(
        "test/acc %.4f, %d params, %.1f s; outputs in %s",
        metrics["test/acc"],
        metrics["n_params"],
        metrics["wall_s"],
        out_dir,
    )
