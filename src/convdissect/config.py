"""Where our configs live, the OmegaConf resolvers they use, and Hydra's instantiate for them;
imported by the entry points and the tests."""

import os
from importlib import resources
from pathlib import Path

import hydra.utils
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

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
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserInputError(f"threads={threads}: must be a positive integer, or null for torch's default")
    torch.set_num_threads(threads)
