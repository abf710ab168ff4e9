"""Nets are built by Hydra from their config's `_target_`, so a LightningModule's hyperparameters
stay plain values (a dict with a class path) that a checkpoint rebuilds from."""

from __future__ import annotations

from hydra.errors import InstantiationException

from convdissect.config import instantiate  # Hydra's, with our UserInputError unwrapped
from convdissect.errors import UserInputError

# Keys of a model config (conf/model/) that set the LightningModule or the run, not the net's constructor.
MODULE_KEYS = ("loss", "num_classes", "label_smoothing", "teacher", "distill")
RUN_KEYS = ("init_from",)

# Class paths that checkpoints written before the package's layering still name.
MOVED_TARGETS = {"convdissect.models.handnet.HandNet": "convdissect.handnet.net.HandNet"}


def build_net(spec: dict):
    """spec = {"_target_": "package.module.Class", **kwargs} -> an nn.Module."""
    if not isinstance(spec, dict) or not spec.get("_target_"):
        raise UserInputError(
            f"model={spec!r}: a net spec needs a _target_, e.g. convdissect.models.simple_convnet.SimpleConvNet"
        )
    spec = {**spec, "_target_": MOVED_TARGETS.get(spec["_target_"], spec["_target_"])}
    try:
        return instantiate(spec, _convert_="all")
    except InstantiationException as err:  # an unknown class, or a key the class does not take
        reason = " ".join(str(err).split())
        raise UserInputError(f"model._target_={spec['_target_']}: cannot build the net ({reason})") from None


def split_model_config(model: dict) -> tuple[dict, dict]:
    """A model config -> (the net spec build_net takes, the LightningModule's settings {loss, num_classes, ...})."""
    net = {k: v for k, v in model.items() if k not in MODULE_KEYS + RUN_KEYS}
    return net, {k: model[k] for k in MODULE_KEYS if k in model}


def net_class(spec: dict) -> str:
    """The class name a net spec builds: "SimpleConvNet", "HandNet" ..."""
    return str(spec.get("_target_", "")).rsplit(".", 1)[-1]
