"""One training run from a composed config: fit, test, write metrics.json and model_state.pt."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from convdissect.config import instantiate
from convdissect.dissect.checkpoint import load_net
from convdissect.errors import UserInputError
from convdissect.models.lit_module import LitClassifier

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig) -> LitClassifier:
    """The LightningModule; with model.init_from (a model_state.pt or a .ckpt), the net gets that
    file's widths and weights."""
    net = OmegaConf.to_container(cfg.model, resolve=True)
    init_from = net.pop("init_from", None)
    source = None
    if init_from:
        if net["name"] != "simple_convnet":
            raise UserInputError(f"model.init_from={init_from}: only model.name=simple_convnet starts from a file, not {net['name']!r}")
        try:
            source = load_net(init_from)
        except UserInputError as err:  # its messages name the file as dissect.py's ckpt_path
            raise UserInputError(str(err).replace("ckpt_path=", "model.init_from=", 1)) from None
        net["widths"], net["conv2"] = list(source.widths), source.has_conv2
    module = LitClassifier(
        net=net,
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
    )
    if source is not None:
        module.net.load_state_dict(source.state_dict())
    return module


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a callbacks/logger group that has a _target_."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def _run_info(cfg: DictConfig) -> dict:
    """The experiment's name and the command-line overrides, when run through Hydra."""
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return {"experiment": hc.runtime.choices.get("experiment") or cfg.task_name, "overrides": list(hc.overrides.task)}
    return {"experiment": cfg.task_name, "overrides": []}


def _hparams(cfg: DictConfig, module: LitClassifier) -> dict:
    """Flat, plain hyperparameters for TensorBoard's hparams view."""
    flat = {
        "seed": cfg.seed,
        "batch_size": cfg.data.batch_size,
        "max_epochs": cfg.trainer.max_epochs,
        "n_params": module.n_params,
    }
    for group in ("net", "optimizer", "scheduler"):
        for key, value in module.hparams[group].items():
            flat[f"{group}/{key}"] = str(value) if isinstance(value, (list, tuple)) else value
    return flat


def _progress(trainer: L.Trainer) -> dict:
    """Epochs and steps trained. Spawned DDP workers (ddp_spawn) do not send their counters back
    to this process, so there they are unknown (None) rather than a wrong 0."""
    if trainer.world_size > 1 and trainer.global_step == 0:
        return {"epochs": None, "steps": None}
    return {"epochs": trainer.current_epoch, "steps": trainer.global_step}


def train(cfg: DictConfig) -> dict:
    """Fit and test one net; return the metrics written to <output_dir>/metrics.json."""
    start = time.perf_counter()
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if cfg.get("fit", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    has_best = any(isinstance(c, ModelCheckpoint) and c.best_model_path for c in trainer.callbacks)
    ckpt_path = cfg.get("test_ckpt") if has_best else None
    (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {
        "test/acc": float(test_metrics["test/acc"]),
        "test/loss": float(test_metrics["test/loss"]),
        "widths": list(module.net.widths),
        "n_params": module.n_params,
        "wall_s": round(time.perf_counter() - start, 2),
        **_progress(trainer),
        **_run_info(cfg),
        "tested_checkpoint": ckpt_path and trainer.ckpt_path,
        "device": str(trainer.strategy.root_device),
        "torch_version": torch.__version__,
        "lightning_version": L.__version__,
    }
    for callback in trainer.callbacks:  # e.g. the pruning callback's per-iteration history
        if hasattr(callback, "run_summary"):
            metrics.update(callback.run_summary())
    if trainer.is_global_zero:
        torch.save(module.net.state_dict(), out_dir / "model_state.pt")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        for logger in trainer.loggers:
            # test/acc, test/loss and the callbacks' numbers (e.g. explanation/numbers) in the HParams view
            scalars = {k: v for k, v in metrics.items() if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
            logger.log_hyperparams(_hparams(cfg, module), metrics=scalars)
            logger.finalize("success")
        log.info("test/acc %.4f, %d params, %.1f s; outputs in %s", metrics["test/acc"], metrics["n_params"], metrics["wall_s"], out_dir)
    return metrics
