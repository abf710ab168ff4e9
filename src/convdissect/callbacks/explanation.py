"""Explanations of every unit, from the net's parameters, written at the end of the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from convdissect.models.handnet import explanation_markdown

log = logging.getLogger(__name__)


class ExplanationCallback(L.Callback):
    """On test end (the tested weights, rank zero): explanation.md and labels.json in output_dir
    and the explanation as TensorBoard text. Needs a net with `explain()` (e.g. HandNet)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = pl_module.net
        if not hasattr(net, "explain"):
            log.warning("explanation callback: %s has no explain(); nothing written", type(net).__name__)
            return
        labels = net.explain()
        text = explanation_markdown(labels)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "labels.json").write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n")
        (self.output_dir / "explanation.md").write_text(text)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("explanation", text, global_step=trainer.global_step)
        log.info("explanation of %d units written to %s", len(labels["units"]), self.output_dir)
