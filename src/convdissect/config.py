"""Where our configs live, the OmegaConf resolvers they use, and Hydra's instantiate for them;
imported by the entry points and the tests."""

import json
import math
import os
from importlib import resources
from pathlib import Path

import hydra.utils
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from convdissect.errors import UserInputError


def _config_dir() -> Path:
    """The configs of this copy of the package: the wheel ships them as package data (convdissect/conf);
    an editable install or a checkout on PYTHONPATH reads the top-level conf/ beside src/."""
    packaged = Path(str(resources.files("convdissect") / "conf"))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent.parent / "conf"


CONFIG_DIR = _config_dir()
# The directory holding conf/: the checkout, or the installed package (whose conf/ is the wheel's copy).
REPO_ROOT = CONFIG_DIR.parent


def launch_dir() -> str:
    """The directory the command was started in (Hydra's runtime.cwd, which hydra.job.chdir does not move)."""
    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def running_config_dir() -> str:
    """The config directory this run was composed from (root train.py: the checkout's conf/; the console
    scripts: the package's); CONFIG_DIR outside a Hydra app, e.g. under the compose API."""
    if HydraConfig.initialized():
        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main":
                if source.schema == "pkg":
                    return str(resources.files(source.path))
                return str(Path(source.path).resolve())
    return str(CONFIG_DIR)


# ${cwd:} - paths.root_dir: outputs/ and data/ go under the directory a run starts in, never into the
# checkout the package happens to be installed from.
OmegaConf.register_new_resolver("cwd", launch_dir, replace=True)
# ${conf_dir:} - paths.conf_dir, for files beside the configs (the HandNet's recipes).
OmegaConf.register_new_resolver("conf_dir", running_config_dir, replace=True)
# ${pid:} - this process's id: with the time to the microsecond, run dirs of runs started together differ.
OmegaConf.register_new_resolver("pid", lambda: os.getpid(), replace=True)


def instantiate(node, **kwargs):
    """Hydra's instantiate, with our UserInputError unwrapped (the entry points print it as one line)."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserInputError):
            raise err.__cause__ from None
        raise


def set_threads(threads) -> None:
    """Torch's intra-op threads; null leaves torch's default."""
    _check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)


def _check_threads(threads) -> None:
    _check(
        "threads",
        threads,
        threads is None or _is_int(threads, 1),
        "allowed a positive integer, or null for torch's default",
    )


def check_config(cfg: DictConfig) -> None:
    """Settings of train.py and eval.py whose wrong type or range would fail, or quietly do something
    else, only later: one line naming the key, its value and what is allowed, before any work."""
    for key in ("fit", "overwrite"):  # a string such as "false" would count as true
        _check(key, cfg.get(key, False), isinstance(cfg.get(key, False), bool), "allowed true or false")
    _check("seed", cfg.get("seed"), _is_int(cfg.get("seed"), 0), "allowed an integer >= 0")
    _check_threads(cfg.get("threads"))
    for key in ("batch_size", "eval_batch_size"):
        if key in cfg.get("data", {}):
            _check(f"data.{key}", cfg.data[key], _is_int(cfg.data[key], 1), "allowed an integer >= 1")
    if not cfg.get("fit"):  # eval.py, or train.py fit=false: nothing is trained
        return
    max_epochs = cfg.trainer.get("max_epochs")
    _check(
        "trainer.max_epochs",
        max_epochs,
        _is_int(max_epochs, 1),
        "a fit needs at least 1 epoch, an integer (fit=false tests without training)",
    )
    for group, key in (("optimizer", "lr"), ("scheduler", "max_lr")):
        node = cfg.get(group)
        if node and key in node:
            rate = node[key]
            ok = isinstance(rate, (int, float)) and not isinstance(rate, bool) and math.isfinite(rate) and rate > 0
            _check(f"{group}.{key}", rate, ok, "allowed a finite number > 0")


def _is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check(key: str, value, ok: bool, allowed: str) -> None:
    """One line naming the key and its value as a config writes it: true, null, a string in quotes ("3" is not 3)."""
    if not ok:
        shown = json.dumps(value) if isinstance(value, (str, bool)) or value is None else str(value)
        raise UserInputError(f"{key}={shown}: {allowed}")
