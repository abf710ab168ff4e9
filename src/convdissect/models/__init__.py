"""Nets by name, so a LightningModule's hyperparameters stay plain values."""

from __future__ import annotations

from convdissect.errors import UserInputError


def build_net(spec: dict):
    """spec = {"name": ..., **kwargs} -> an nn.Module."""
    from convdissect.models.simple_convnet import SimpleConvNet

    nets = {"simple_convnet": SimpleConvNet}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in nets:
        raise UserInputError(f"model.name={name!r}: allowed {sorted(nets)}")
    return nets[name](**spec)
