"""Where our configs live, the OmegaConf resolvers they use, and Hydra's instantiate for them;
imported by the entry points and the tests."""

import json
import math
import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import hydra.utils
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from threadpoolctl import threadpool_limits

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


def compose_for(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The package's config as its Hydra app composes it, for a job run in Python: paths.output_dir at output_dir."""
    with hydra.initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = hydra.compose(config_name=config_name, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def set_threads(threads) -> None:
    """Torch's intra-op threads, and those of the OpenMP and BLAS pools scikit-learn and numpy use
    (t-SNE, PCA, the dictionary fits): the loaded ones directly, those loaded later (scikit-learn loads
    its OpenMP runtime on first use) through OMP_NUM_THREADS; null leaves the libraries' defaults. A
    pool left at every core beside other busy processes spins: one t-SNE took 95 s instead of 4 s on
    2 loaded cores."""
    _check_threads(threads)
    if threads is not None:
        torch.set_num_threads(threads)
        threadpool_limits(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@contextmanager
def threads_within(threads):
    """set_threads for a block (a dissection called from Python); torch's threads, the loaded pools and
    OMP_NUM_THREADS as they were afterwards."""
    torch_threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    with threadpool_limits(limits=None):  # puts the loaded pools back on leaving
        try:
            set_threads(threads)
            yield
        finally:
            torch.set_num_threads(torch_threads)
            if omp is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = omp


def _check_threads(threads) -> None:
    _check(
        "threads",
        threads,
        threads is None or _is_int(threads, 1),
        "allowed a positive integer, or null for the libraries' defaults",
    )


def _is_finite(value, above: float | None = None, least: float | None = None) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return number and (above is None or value > above) and (least is None or value >= least)


def _is_int_list(value) -> bool:
    """Integers only (2.9 would become 2): their range is the pruning callback's to check, per layer."""
    return isinstance(value, ListConfig) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _is_weights(value) -> bool:
    """A criterion: one name, or a map {name: weight} whose weights are finite numbers."""
    return isinstance(value, str) or (isinstance(value, DictConfig) and all(_is_finite(w) for w in value.values()))


BOOLEAN = (lambda v: isinstance(v, bool), "allowed true or false")  # a string such as "no" would count as true
INT_1 = (lambda v: _is_int(v, 1), "allowed an integer >= 1")
POSITIVE = (lambda v: _is_finite(v, above=0), "allowed a finite number > 0")
# key: (test, what is allowed), checked where the composed config has the key.
RULES = {
    "fit": BOOLEAN,
    "overwrite": BOOLEAN,
    "model.conv2": BOOLEAN,
    "model.edges": BOOLEAN,
    "data.download": BOOLEAN,
    "data.verify": BOOLEAN,
    "trainer.deterministic": BOOLEAN,
    "trainer.enable_progress_bar": BOOLEAN,
    "callbacks.pruning.iterations": INT_1,
    "callbacks.pruning.target_widths": (
        lambda v: v is None or _is_int_list(v),
        "allowed a list of integers, one per prunable layer (null in threshold mode)",
    ),
    "callbacks.pruning.criterion": (
        _is_weights,
        "allowed a criterion's name or a map {name: weight} of finite weights",
    ),
    "callbacks.explanation.roundtrip_images": (
        lambda v: v is None or _is_int(v, 1),
        "allowed an integer >= 1, or null for all test images",
    ),
}
HANDNET_RULES = {
    "model.line_sigma": (lambda v: v is None or _is_finite(v, above=0), "allowed a finite number > 0, or null"),
    "model.burst_sigma": (lambda v: v is None or _is_finite(v, above=0), "allowed a finite number > 0, or null"),
    **{
        f"model.{key}": (lambda v: _is_finite(v, least=0), "allowed a finite number >= 0")
        for key in ("l1_readout", "l1_bursts", "group_readout")
    },
}
DISSECT_RULES = {
    "data.download": BOOLEAN,
    "data.verify": BOOLEAN,
    "claims.ablation": BOOLEAN,
    "superstimulus.enabled": BOOLEAN,
    "superstimulus.steps": INT_1,
    "superstimulus.lr": POSITIVE,
    "report.enabled": BOOLEAN,
    "report.dpi": INT_1,
    "report.top_k": INT_1,
}


_ABSENT = object()


def _check_rules(cfg: DictConfig, rules: dict) -> None:
    for key, (ok, allowed) in rules.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT:
            _check(key, value, ok(value), allowed)


def check_dissect_config(cfg: DictConfig) -> None:
    """dissect.py's settings whose wrong type or range would fail, or quietly do something else, only
    later: one line each, before any work."""
    _check_threads(cfg.get("threads"))
    _check_rules(cfg, DISSECT_RULES)


def check_config(cfg: DictConfig) -> None:
    """Settings of train.py and eval.py whose wrong type or range would fail, or quietly do something
    else, only later: one line naming the key, its value and what is allowed, before any work."""
    _check_rules(cfg, RULES)
    if str(cfg.get("model", {}).get("_target_", "")).endswith("HandNet"):
        _check_rules(cfg, HANDNET_RULES)
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
            _check(f"{group}.{key}", node[key], _is_finite(node[key], above=0), "allowed a finite number > 0")


def check_eval_config(cfg: DictConfig) -> None:
    """eval.py's settings: check_config's, and the weights to test."""
    check_config(cfg)
    if not cfg.get("ckpt_path"):
        raise UserInputError(
            "ckpt_path is not set: python eval.py ckpt_path=PATH (a Lightning .ckpt or a model_state.pt)"
        )


def _is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check(key: str, value, ok: bool, allowed: str) -> None:
    """One line naming the key and its value as a config writes it: true, null, a string in quotes ("3" is not 3)."""
    if not ok:
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        shown = json.dumps(value) if isinstance(value, (str, bool)) or value is None else str(value)
        raise UserInputError(f"{key}={shown}: {allowed}")
