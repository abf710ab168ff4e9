"""Load a SimpleConvNet to dissect: a Lightning checkpoint of ours or a plain state_dict .pt.

Files load with torch.load(weights_only=True), so a file from elsewhere never runs code. The net
is built from the tensors' shapes (a pruned checkpoint is smaller than its hyperparameters say).
Every problem is one UserInputError line naming the file and what was expected.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from convdissect.errors import UserInputError
from convdissect.models.simple_convnet import SimpleConvNet

LIGHTNING_PREFIX = "net."
LAYERS = ("conv1", "conv2", "conv3", "fc4", "fc5")


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(SimpleConvNet state_dict, net hyperparameters or {}) from a .ckpt or .pt file."""
    if not path:
        raise UserInputError("ckpt_path is not set: python dissect.py ckpt_path=PATH (a Lightning .ckpt or a state_dict .pt)")
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"ckpt_path={path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # an object other than tensors and plain values: it could run code
            raise UserInputError(
                f"ckpt_path={path}: refused, it holds objects that loading with weights_only=True does not allow "
                f"(only tensors and plain values are loaded, so no code from the file runs): {_reason(err)}"
            ) from None
        raise UserInputError(f"ckpt_path={path}: not a readable PyTorch file ({_reason(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserInputError(f"ckpt_path={path}: not a readable PyTorch file ({_reason(err)})") from None
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):  # Lightning
        state = {k[len(LIGHTNING_PREFIX) :]: v for k, v in payload["state_dict"].items() if k.startswith(LIGHTNING_PREFIX)}
        hparams = payload.get("hyper_parameters", {}).get("net", {}) or {}
    elif isinstance(payload, dict):
        state, hparams = payload, {}
    else:
        raise UserInputError(f"ckpt_path={path}: holds a {type(payload).__name__}, expected a state_dict or a Lightning checkpoint")
    return state, dict(hparams)


def _reason(err: Exception) -> str:
    """The informative line of a torch.load error (its first line is a generic preamble)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    details = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    return (details or lines or [type(err).__name__])[-1]


def load_net(path: str | Path) -> SimpleConvNet:
    """The SimpleConvNet of a checkpoint, in eval mode on the CPU; a HandNet or anything else
    not shaped like a SimpleConvNet is refused."""
    state, hparams = load_state(path)
    name = hparams.get("name", "simple_convnet")
    if name != "simple_convnet":
        raise UserInputError(f"ckpt_path={path}: a {name!r} checkpoint; dissect.py takes SimpleConvNet checkpoints only")
    expected = {f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias")}
    if "conv2.weight" not in state:
        expected -= {"conv2.weight", "conv2.bias"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserInputError(
            f"ckpt_path={path}: not a SimpleConvNet state_dict (missing {missing[:4]}, unexpected {extra[:4]}); "
            f"expected the keys {sorted(expected)}"
        )
    if not all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in state.values()):
        raise UserInputError(f"ckpt_path={path}: every state_dict value must be a tensor with at least one dimension")
    widths, conv2 = SimpleConvNet.widths_from_state_dict(state)
    net = SimpleConvNet(widths, conv2=conv2, fc4_activation=hparams.get("fc4_activation", "relu"))
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    wrong = [f"{k} {tuple(state[k].shape)} (expected {shape})" for k, shape in shapes.items() if tuple(state[k].shape) != shape]
    if wrong:
        raise UserInputError(f"ckpt_path={path}: wrongly shaped for a SimpleConvNet with widths {widths}: {', '.join(wrong[:3])}")
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval()
