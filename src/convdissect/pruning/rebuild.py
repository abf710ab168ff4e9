"""dissect.py's and eval.py's loader: any net trained by train.py, read back from its run dir.

A SimpleConvNet or HandNet loads as convdissect.models.checkpoint reads it. Any other net is
rebuilt from the `model` node of its run's .hydra/config.yaml (or a Lightning checkpoint's
hparams) and, when the run pruned it, cut (pruning/cut.py) to the kept channels of the pruning
step whose widths its tensors have, before its weights load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from convdissect.errors import UserInputError
from convdissect.models import build_net, net_class
from convdissect.models.checkpoint import known_net_and_spec, load_state, pruning_history, run_model_spec
from convdissect.models.prunable import layer_width, prunable_layers
from convdissect.pruning.cut import cut_channels

# The nets convdissect.models.checkpoint reads by their own rules.
KNOWN_NETS = ("SimpleConvNet", "HandNet")
# The example input a cut traces the net with: one MNIST-sized image.
EXAMPLE_INPUT_SHAPE = (1, 1, 28, 28)


def load_trained_net(path: str | Path) -> tuple[nn.Module, dict]:
    """The net of a checkpoint (eval mode, CPU) and the net spec it was built from."""
    state, hparams = load_state(path)
    spec = hparams or run_model_spec(path)
    if not spec or "name" in spec or net_class(spec) in KNOWN_NETS:  # name: checkpoints from before _target_
        return known_net_and_spec(path, state, hparams)
    return rebuilt_net(path, state, spec), spec


def rebuilt_net(path: str | Path, state: dict[str, torch.Tensor], spec: dict) -> nn.Module:
    """The net of `spec`, cut to the widths of `state` as its run's pruning recorded them, holding `state`."""
    try:
        net = build_net(spec).eval()
    except (UserInputError, TypeError) as err:
        raise UserInputError(f"ckpt_path={path}: cannot rebuild its net from its run's model node: {err}") from None
    layers = prunable_layers(net)
    widths = {layer: _width_in(state, layer) for layer in layers}
    if widths != {layer: layer_width(net.get_submodule(layer)) for layer in layers}:
        steps = [s["kept_channels"] for s in pruning_history(path)]
        kept = next((k for k in reversed(steps) if {layer: len(c) for layer, c in k.items()} == widths), None)
        if kept is None:
            raise UserInputError(
                f"ckpt_path={path}: its widths {widths} are neither {spec.get('_target_')}'s nor those of a "
                f"pruning step in its run's metrics.json ({len(steps)} steps)"
            )
        cut_channels(net, {layer: [c - 1 for c in channels] for layer, channels in kept.items()}, _example(net))
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as err:
        reason = " ".join(str(err).split())
        raise UserInputError(
            f"ckpt_path={path}: does not fit the net of its run's model node ({reason:.300})"
        ) from None
    return net.eval()


def _width_in(state: dict[str, torch.Tensor], layer: str) -> int | None:
    weight = state.get(f"{layer}.weight")
    return None if weight is None else int(weight.shape[0])


def _example(net: nn.Module) -> torch.Tensor:
    first = next(m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    channels = first.in_channels if isinstance(first, nn.Conv2d) else 1
    return torch.zeros(1, channels, *EXAMPLE_INPUT_SHAPE[2:])
