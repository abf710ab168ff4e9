"""Nets by name, so a LightningModule's hyperparameters stay plain values."""

from __future__ import annotations

import importlib

from convdissect.errors import UserInputError

# name -> "module:class", imported only when used
NETS = {
    "simple_convnet": "convdissect.models.simple_convnet:SimpleConvNet",
    "handnet": "convdissect.models.handnet:HandNet",
}


def build_net(spec: dict):
    """spec = {"name": ..., **kwargs} -> an nn.Module."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in NETS:
        raise UserInputError(f"model.name={name!r}: allowed {sorted(NETS)}")
    module_name, class_name = NETS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**spec)
