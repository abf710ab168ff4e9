"""OmegaConf resolvers our configs use, and Hydra's instantiate for our configs; imported by the
entry points and the tests."""

import os
from pathlib import Path

import hydra.utils
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from convdissect.errors import UserInputError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "conf"

# ${repo_root:} - the checkout holding conf/ (paths.root_dir).
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
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
