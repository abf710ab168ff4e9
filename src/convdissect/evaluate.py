"""Test a checkpoint's own weights: python eval.py ckpt_path=PATH (or train.py fit=false ckpt_path=PATH).

PATH is a Lightning .ckpt or a model_state.pt of any net train.py trained, pruned or not (another class than
ours is rebuilt from its run dir: docs/own_net.md). The net is rebuilt
at the widths its tensors have, so a pruned checkpoint tests the pruned net.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from convdissect.config import check_eval_config, instantiate, set_threads
from convdissect.errors import UserInputError
from convdissect.models.lit_module import LitClassifier
from convdissect.pruning.rebuild import load_trained_net
from convdissect.runs import atomic_write, check_run_dir

log = logging.getLogger(__name__)


def load_module(path: str | Path) -> LitClassifier:
    """A LightningModule holding the checkpoint's net and weights (one-line errors for bad files)."""
    net, spec = load_trained_net(path)
    module = LitClassifier(net=spec, optimizer=None)
    module.net = net  # a pruned net is narrower than its spec builds
    return module


def finite_test_metrics(test_metrics: dict) -> dict:
    """test/acc and test/loss as floats; a NaN or inf (weights that overflow) is an error, never a number
    in metrics.json."""
    metrics = {key: float(test_metrics[key]) for key in ("test/acc", "test/loss")}
    bad = {key: value for key, value in metrics.items() if not math.isfinite(value)}
    if bad:
        shown = ", ".join(f"{key}={value}" for key, value in bad.items())
        raise UserInputError(
            f"the test gave {shown}: the tested weights overflow (a diverged fit, or weights too large); "
            "no metrics.json written"
        )
    return metrics


def evaluate(cfg: DictConfig) -> dict:
    """Test ckpt_path's weights on the test split; return the metrics written to <output_dir>/metrics.json."""
    start = time.perf_counter()
    check_eval_config(cfg)
    set_threads(cfg.get("threads"))
    out_dir = Path(cfg.paths.output_dir)
    check_run_dir(out_dir, overwrite=cfg.get("overwrite", False), resuming=False)
    module = load_module(cfg.ckpt_path)
    out_dir.mkdir(parents=True, exist_ok=True)

    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    try:
        (test_metrics,) = trainer.test(module, datamodule=instantiate(cfg.data))
    except SIGTERMException:  # Lightning's would exit 0, as if the test had passed
        pass
    if trainer.received_sigterm:  # also during the last batch, which Lightning finishes
        print("stopped by SIGTERM during the test: no metrics.json", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    metrics = {
        **finite_test_metrics(test_metrics),
        "tested_checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "net": module.hparams.net,
        "n_params": module.n_params,
        "wall_s": round(time.perf_counter() - start, 2),
        "device": str(trainer.strategy.root_device),
        "torch_version": torch.__version__,
        "lightning_version": L.__version__,
    }
    if trainer.is_global_zero:
        atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        log.info("test/acc %.4f of %s; metrics in %s", metrics["test/acc"], metrics["tested_checkpoint"], out_dir)
    return metrics
