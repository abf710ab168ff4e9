"""The HandNet's complete explanation, from its parameters, written at the end of the run, and
checked: the learned recipe file it writes must rebuild the same net."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger

from convdissect.handnet.explanation import explain, explanation_markdown, explanation_metrics
from convdissect.handnet.learned_recipes import learned_recipes
from convdissect.handnet.net import HandNet

log = logging.getLogger(__name__)


class ExplanationCallback(L.Callback):
    """On test end (the tested weights, rank zero), into output_dir: explanation.md, labels.json,
    learned_recipes.yaml (rebuilds the net exactly) and learned_recipes_rounded.yaml (every number
    as explanation.md prints it), the explanation as TensorBoard text, and in run_summary() (so in
    metrics.json and the HParams view) the explanation's size and its checks on `roundtrip_images`
    test images (null: all): the rebuilt net's agreement with the tested one and the rounded net's
    accuracy."""

    def __init__(self, output_dir: str, roundtrip_images: int | None = None):
        self.output_dir = Path(output_dir)
        self.roundtrip_images = roundtrip_images
        self.summary: dict = {}

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        net = pl_module.net
        if not isinstance(net, HandNet):
            log.warning("explanation callback: %s is not a HandNet; nothing written", type(net).__name__)
            return
        labels = explain(net)
        text = explanation_markdown(labels)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "labels.json").write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n")
        (self.output_dir / "explanation.md").write_text(text)
        files = {}
        for name, exact in (("learned_recipes.yaml", True), ("learned_recipes_rounded.yaml", False)):
            files[exact] = self.output_dir / name
            files[exact].write_text(
                yaml.safe_dump(learned_recipes(net, exact=exact), sort_keys=False, allow_unicode=True)
            )
        self.summary = {**explanation_metrics(labels), **self.check(trainer, net, files[True], files[False])}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("explanation", text, global_step=trainer.global_step)
        log.info("explanation of %d units written to %s: %s", len(labels["units"]), self.output_dir, self.summary)

    @torch.no_grad()
    def check(self, trainer: L.Trainer, net: HandNet, exact: Path, rounded: Path) -> dict:
        images, digits = trainer.datamodule.tensors("test", self.roundtrip_images)
        was_training = net.training
        net.eval()
        predict = {"trained": net}
        for key, path in (("rebuilt", exact), ("rounded", rounded)):
            predict[key] = HandNet(recipes=str(path)).to(images.device).eval()
        pred = {key: torch.cat([m(x).argmax(1) for x in images.split(1000)]) for key, m in predict.items()}
        net.train(was_training)
        acc = {key: float((p == digits).float().mean()) for key, p in pred.items()}
        return {
            "explanation/roundtrip_agreement": float((pred["rebuilt"] == pred["trained"]).float().mean()),
            "explanation/checked_images": len(digits),
            "explanation/trained_acc": acc["trained"],
            "explanation/rounded_acc": acc["rounded"],
            "explanation/rounded_acc_change": acc["rounded"] - acc["trained"],
        }

    def run_summary(self) -> dict:
        """Merged into metrics.json by train()."""
        return dict(self.summary)
