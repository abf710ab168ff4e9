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

from convdissect.config import instantiate, set_threads
from convdissect.errors import UserInputError
from convdissect.evaluate import evaluate
from convdissect.models import net_class, split_model_config
from convdissect.models.checkpoint import check_resumable, load_net
from convdissect.models.lit_module import LitClassifier
from convdissect.runs import check_run_dir, clear_outputs

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
    max_epochs = cfg.trainer.get("max_epochs")
    if max_epochs is not None and max_epochs < 1:
        raise UserInputError(
            f"trainer.max_epochs={max_epochs}: a fit needs at least 1 epoch (fit=false tests without training)"
        )
    test_ckpt = cfg.get("test_ckpt")
    if test_ckpt is not None and test_ckpt not in TEST_CKPTS and not Path(test_ckpt).is_file():
        raise UserInputError(
            f"test_ckpt={test_ckpt}: allowed {list(TEST_CKPTS)}, null (the final weights) or a checkpoint file"
        )
    if cfg.get("ckpt_path"):
        check_resumable(cfg.ckpt_path)


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
    """The whole composed config as flat plain values (keys like callbacks.pruning.criterion), for
    TensorBoard's HParams tab: runs of a sweep compare on every setting."""
    flat = {"experiment": experiment}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            value = node if isinstance(node, (bool, int, float, str)) else str(node)
            flat[prefix[:-1]] = value

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


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


def train(cfg: DictConfig) -> dict:
    """Fit and test one net; return the metrics written to <output_dir>/metrics.json."""
    start = time.perf_counter()
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
        clear_outputs(out_dir)
    L.seed_everything(cfg.seed, workers=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    val = {"val/acc": None, "val/acc_best": None}
    if fit:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        if _progress(trainer)["steps"] == 0:
            raise UserInputError(
                f"the fit took no optimizer step (trainer.max_epochs={trainer.max_epochs}, "
                f"trainer.limit_train_batches={cfg.trainer.get('limit_train_batches')}, "
                f"data.batch_size={cfg.data.get('batch_size')}): nothing was trained"
            )
        val = _val_metrics(trainer)
    has_best = any(isinstance(c, ModelCheckpoint) and c.best_model_path for c in trainer.callbacks)
    ckpt_path = cfg.get("test_ckpt") if has_best or cfg.get("test_ckpt") not in TEST_CKPTS else None
    (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path)

    metrics = {
        "test/acc": float(test_metrics["test/acc"]),
        "test/loss": float(test_metrics["test/loss"]),
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
    }
    for callback in trainer.callbacks:  # e.g. the pruning callback's per-iteration history
        if hasattr(callback, "run_summary"):
            metrics.update(callback.run_summary())
    if trainer.is_global_zero:
        torch.save(module.net.state_dict(), out_dir / "model_state.pt")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        # Lightning writes these at step 0: val/acc stays out, so its curve keeps only its epochs.
        hparam_metrics = {k: metrics[k] for k in ("test/acc", "test/loss", "val/acc_best") if metrics[k] is not None}
        for logger in trainer.loggers:
            hparams = flat_config(cfg, metrics["experiment"])
            # ... and a callback's numbers about the net, e.g. the HandNet's explanation/numbers
            explained = {k: v for k, v in metrics.items() if k.startswith("explanation/")}
            logger.log_hyperparams(hparams, metrics={**hparam_metrics, **_final_net(metrics), **explained})
            logger.finalize("success")
        log.info(
            "test/acc %.4f, %d params, %.1f s; outputs in %s",
            metrics["test/acc"],
            metrics["n_params"],
            metrics["wall_s"],
            out_dir,
        )
    return metrics
