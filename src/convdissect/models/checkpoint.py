"""Load a net to dissect: a Lightning checkpoint of ours or a plain state_dict .pt.

`load_any_net` reads a SimpleConvNet (`load_net`) or a HandNet (`load_handnet`); any other net is
rebuilt from its training run (convdissect.pruning.rebuild, dissect.py's and eval.py's entry).
Files load with torch.load(weights_only=True), so a file from elsewhere never runs code. A
SimpleConvNet is built from the tensors' shapes (a pruned checkpoint is smaller than its
hyperparameters say); a HandNet from its net spec: the Lightning checkpoint's hparams, or for a
model_state.pt the `model` node of the run's .hydra/config.yaml beside it.
Every problem is one UserInputError line naming the file and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

import convdissect.config  # noqa: F401  (registers ${cwd:}, ${conf_dir:} and ${pid:}, which a run's saved config uses)
from convdissect.errors import UserInputError
from convdissect.models import build_net, net_class, split_model_config
from convdissect.models.simple_convnet import SimpleConvNet

SIMPLE_CONVNET = "convdissect.models.simple_convnet.SimpleConvNet"
HANDNET = "convdissect.handnet.net.HandNet"
LIGHTNING_PREFIX = "net."
LAYERS = ("conv1", "conv2", "conv3", "fc4", "fc5")
HANDNET_KEY = "conv1.theta"  # a parametric conv1: a HandNet state_dict
STATE_HASH_KEY = "model_state_sha256"  # metrics.json's record of the run's model_state.pt

log = logging.getLogger(__name__)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def warn_if_changed(path: str | Path) -> None:
    """A run's model_state.pt whose bytes differ from the sha256 in the run's metrics.json (replaced or
    damaged since the run): one warning line, as its results no longer describe it."""
    path = Path(path)
    metrics = path.parent / "metrics.json"
    if path.name != "model_state.pt" or not metrics.is_file():
        return
    try:
        recorded = json.loads(metrics.read_text()).get(STATE_HASH_KEY)
    except (OSError, ValueError, AttributeError):  # not our metrics.json: nothing recorded to compare
        return
    if recorded and recorded != file_sha256(path):
        log.warning(
            "ckpt_path=%s: its sha256 differs from the one in %s: the file changed since that run wrote it",
            path,
            metrics,
        )


def read_checkpoint(path: str | Path):
    """torch.load(weights_only=True) of a user's file, every failure one UserInputError line."""
    if not path:
        raise UserInputError(
            "ckpt_path is not set: python dissect.py ckpt_path=PATH (a Lightning .ckpt or a state_dict .pt)"
        )
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"ckpt_path={path}: no such file")
    check_intact(path)
    warn_if_changed(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # an object other than tensors and plain values: it could run code
            raise UserInputError(
                f"ckpt_path={path}: refused, it holds objects that loading with weights_only=True does not allow "
                f"(only tensors and plain values are loaded, so no code from the file runs): {_reason(err)}"
            ) from None
        raise UserInputError(f"ckpt_path={path}: not a readable PyTorch file ({_reason(err)})") from None
    except Exception as err:  # text or other files: the unpickler fails with KeyError, IndexError, EOFError ...
        reason = f"{type(err).__name__}: {_reason(err)}"
        raise UserInputError(f"ckpt_path={path}: not a readable PyTorch file ({reason})") from None


def check_intact(path: Path) -> None:
    """torch.save writes a zip whose records carry CRC-32 sums, which torch.load does not check: a file
    damaged after it was written (a bad copy, flipped bits) would load and give other numbers."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format or not a PyTorch file: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise UserInputError(f"ckpt_path={path}: a damaged archive ({type(err).__name__}: {err})") from None
    if damaged is not None:
        raise UserInputError(
            f"ckpt_path={path}: damaged, its record {damaged} fails its CRC-32 check "
            "(the file changed after it was written); use an intact copy"
        )


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(net state_dict, net spec or {}) from a .ckpt or .pt file; its floating tensors all finite."""
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):  # Lightning
        state = {
            k[len(LIGHTNING_PREFIX) :]: v for k, v in payload["state_dict"].items() if k.startswith(LIGHTNING_PREFIX)
        }
        hparams = payload.get("hyper_parameters", {}).get("net", {}) or {}
    elif isinstance(payload, dict):
        state, hparams = payload, {}
    else:
        raise UserInputError(
            f"ckpt_path={path}: holds a {type(payload).__name__}, expected a state_dict or a Lightning checkpoint"
        )
    check_finite(path, state)
    return state, dict(hparams)


def check_finite(path: str | Path, state: dict) -> None:
    """A net with NaN or inf weights gives meaningless results (accuracies, "nan%" labels): refuse it."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise UserInputError(
                f"ckpt_path={path}: tensor {name} holds NaN or inf values; only finite weights can be used"
            )


def check_resumable(path: str | Path) -> None:
    """A Lightning training checkpoint that `ckpt_path=` can resume: epoch, optimizer and loop state."""
    payload = read_checkpoint(path)
    if not (isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict) and "loops" in payload):
        raise UserInputError(
            f"ckpt_path={path}: not a Lightning training checkpoint (a plain state_dict or another file); "
            "resuming needs "
            "a .ckpt from a run's checkpoints/, and model.init_from=PATH starts a new run from a state_dict's weights"
        )
    check_finite(path, payload["state_dict"])


def _reason(err: Exception) -> str:
    """The informative line of a torch.load error (its first line is a generic preamble)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    details = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    return (details or lines or [type(err).__name__])[-1]


def load_net(path: str | Path) -> SimpleConvNet:
    """The SimpleConvNet of a checkpoint, in eval mode on the CPU; a HandNet or anything else
    not shaped like a SimpleConvNet is refused."""
    return _simple_convnet(path, *load_state(path))[0]


def _is_handnet(spec: dict) -> bool:
    return net_class(spec) == "HandNet" or spec.get("name") == "handnet"  # name: checkpoints from before _target_


def _simple_convnet(path: str | Path, state: dict[str, torch.Tensor], hparams: dict) -> tuple[SimpleConvNet, dict]:
    legacy_name = hparams.get("name", "simple_convnet")  # checkpoints from before _target_
    if hparams.get("_target_", SIMPLE_CONVNET) != SIMPLE_CONVNET or legacy_name != "simple_convnet":
        kind = hparams.get("_target_") or hparams.get("name")
        raise UserInputError(f"ckpt_path={path}: a {kind} checkpoint, expected a SimpleConvNet")
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
    activation = hparams.get("fc4_activation", "relu")
    spec = {"_target_": SIMPLE_CONVNET, "widths": widths, "conv2": conv2, "fc4_activation": activation}
    net = build_net(spec)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {shape})"
        for k, shape in shapes.items()
        if tuple(state[k].shape) != shape
    ]
    if wrong:
        raise UserInputError(
            f"ckpt_path={path}: wrongly shaped for a SimpleConvNet with widths {widths}: {', '.join(wrong[:3])}"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()})
    return net.eval(), spec


def load_any_net(path: str | Path) -> nn.Module:
    """The SimpleConvNet or HandNet of a checkpoint, in eval mode on the CPU."""
    return load_net_and_spec(path)[0]


def load_net_and_spec(path: str | Path) -> tuple[nn.Module, dict]:
    """The SimpleConvNet or HandNet of a checkpoint (eval mode, CPU) and the net spec that rebuilds
    it at its own widths ({"_target_": ..., **kwargs}, as in conf/model/)."""
    return known_net_and_spec(path, *load_state(path))


def known_net_and_spec(path: str | Path, state: dict[str, torch.Tensor], hparams: dict) -> tuple[nn.Module, dict]:
    """load_net_and_spec of a state_dict and its hparams already read; a state_dict of another net
    is refused with the two ways that do dissect it."""
    if _is_handnet(hparams) or (not hparams and HANDNET_KEY in state):
        return _handnet(path, state, hparams)
    if not hparams and not {f"{layer}.weight" for layer in ("conv1", "conv3", "fc4", "fc5")} <= set(state):
        raise UserInputError(
            f"ckpt_path={path}: the state_dict of a net other than a SimpleConvNet or HandNet (keys "
            f"{list(state)[:4]}...), outside a training run dir; pass the net in Python "
            "(convdissect.dissect_net(net)) or point ckpt_path at the model_state.pt inside its run dir"
        )
    return _simple_convnet(path, state, hparams)


def training_run_dir(path: str | Path | None) -> Path | None:
    """The training run a checkpoint lies in (RUN/checkpoints/x.ckpt or RUN/model_state.pt: a dir
    whose .hydra/config.yaml has a trainer), or None (also for a net given in Python, no checkpoint)."""
    if path is None:
        return None
    for parent in list(Path(path).resolve().parents)[:3]:
        config = parent / ".hydra" / "config.yaml"
        if config.is_file() and "trainer" in OmegaConf.load(config):
            return parent
    return None


def pruning_history(path: str | Path | None) -> list[dict]:
    """The pruning steps of the training run a checkpoint lies in (its metrics.json's pruning_history,
    each step's kept_channels 1-based in the unpruned net); [] for a net that was not pruned."""
    run = training_run_dir(path)
    metrics = run / "metrics.json" if run is not None else None
    if metrics is None or not metrics.is_file():
        return []
    return json.loads(metrics.read_text()).get("pruning_history") or []


def pruned_channels(path: str | Path | None) -> dict[str, list[int]]:
    """{layer: the 1-based channel numbers the net kept from the net it was pruned from}, read from its
    training run's metrics.json (the last pruning step); {} for a net that was not pruned."""
    history = pruning_history(path) or [{}]
    return history[-1].get("kept_channels", {})


def run_model_spec(path: str | Path) -> dict:
    """The net spec of the training run a checkpoint lies in (the `model` node of its
    .hydra/config.yaml, as train.py's build_module converts it), or {} outside a run dir."""
    run = training_run_dir(path)
    if run is None:
        return {}
    config = run / ".hydra" / "config.yaml"
    try:
        return split_model_config(OmegaConf.to_container(OmegaConf.load(config).model, resolve=True))[0]
    except (OmegaConfBaseException, OSError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserInputError(f"ckpt_path={path}: no readable model node in {config} ({reason})") from None


def load_handnet(path: str | Path, state: dict[str, torch.Tensor], spec: dict) -> nn.Module:
    """A HandNet from its state_dict and net spec; without a spec (a model_state.pt), the spec is
    the `model` node of <dir>/.hydra/config.yaml, converted as train.py's build_module does."""
    return _handnet(path, state, spec)[0]


def _handnet(path: str | Path, state: dict[str, torch.Tensor], spec: dict) -> tuple[nn.Module, dict]:
    path = Path(path)
    if not spec:
        config = path.parent / ".hydra" / "config.yaml"
        if not config.is_file():
            raise UserInputError(
                f"ckpt_path={path}: a HandNet state_dict without its net spec (no {config}); "
                "pass the run's Lightning checkpoint (checkpoints/last.ckpt) or its model_state.pt inside the run dir"
            )
        try:
            spec, _ = split_model_config(OmegaConf.to_container(OmegaConf.load(config).model, resolve=True))
        except (OmegaConfBaseException, OSError, ValueError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UserInputError(f"ckpt_path={path}: no readable model node in {config} ({reason})") from None
        if not _is_handnet(spec):
            raise UserInputError(
                f"ckpt_path={path}: a HandNet state_dict, but {config} builds model._target_={spec.get('_target_')}"
            )
    spec = {"_target_": HANDNET, **{k: v for k, v in spec.items() if k != "name"}}
    try:
        net = build_net(spec)
    except (UserInputError, TypeError) as err:  # e.g. its recipe file is gone, or a kwarg HandNet does not take
        raise UserInputError(f"ckpt_path={path}: cannot rebuild its HandNet from the net spec: {err}") from None
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (RuntimeError, AttributeError) as err:
        raise UserInputError(f"ckpt_path={path}: does not fit the HandNet of its net spec ({_reason(err)})") from None
    return net.eval(), spec
