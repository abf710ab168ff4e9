"""The command-line entry points: `convdissect train|dissect|eval|tables ...` (also `python -m convdissect`)
and the console scripts convdissect-train, convdissect-dissect and convdissect-eval read the package's
configs; a checkout's train.py and dissect.py pass its conf/."""

from __future__ import annotations

import difflib
import logging
import math
import sys
from collections.abc import Callable
from numbers import Number
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ValueType
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from convdissect.config import CONFIG_DIR, check_config, check_dissect_config, check_eval_config
from convdissect.errors import UserInputError
from convdissect.runs import forget_failed_job, in_multirun, record_failed_job

log = logging.getLogger(__name__)


class _DropLightningTips(logging.Filter):
    """Lightning logs adverts for its cloud services at INFO ("💡 Tip: ... try installing litlogger",
    "... litmodels"); they say nothing about the run, and INFO is where the run's own lines are."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip")


_DROP_TIPS = _DropLightningTips()  # one instance: adding it again (each multirun job) is a no-op


def _tidy_lightning_logging() -> None:
    """Each line once and no adverts: `import lightning` gives its logger a console handler of its own,
    while its records also reach Hydra's handlers (the console and <task_name>.log)."""
    import lightning  # noqa: F401  (adds the handler that is removed here)

    if logging.getLogger().handlers:  # Hydra's job logging is on (not hydra/job_logging=disabled)
        logging.getLogger("lightning").handlers.clear()
    # lightning_utilities' rank_zero_info logs through whichever of these loggers was installed last.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DROP_TIPS)


def optimized_value(cfg: DictConfig, metrics: dict) -> float | tuple[float, ...] | None:
    """metrics[cfg.optimized_metric], what a Hydra sweeper optimises (a tuple for a list of metrics, as a
    multi-objective Optuna search wants); None when no metric is named."""
    names = cfg.get("optimized_metric")
    if names is None:
        return None
    values = []
    for name in [names] if isinstance(names, str) else names:
        if not _is_number(metrics.get(name)):
            allowed = sorted(k for k, v in metrics.items() if _is_number(v) and not k.startswith("test/"))
            raise UserInputError(f"optimized_metric={name!r} is not a metric of this run; allowed: {allowed}")
        values.append(float(metrics[name]))
    return values[0] if isinstance(names, str) else tuple(values)


def _failed_value(cfg: DictConfig) -> float | tuple[float, ...] | None:
    """What a failed sweep job returns: NaN for each optimised metric (Optuna records a failed trial and
    samples on), None when nothing is optimised."""
    names = cfg.get("optimized_metric")
    if names is None:
        return None
    return math.nan if isinstance(names, str) else tuple(math.nan for _ in names)


def _is_number(value) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def check_optimized_metric(cfg: DictConfig) -> None:
    """Refuse, before any training, to let a sweeper tune on the test set."""
    names = cfg.get("optimized_metric")
    for name in [names] if isinstance(names, str) else names or []:
        if str(name).startswith("test/"):
            raise UserInputError(
                f"optimized_metric={name!r}: a search must not see the test set; "
                "name a validation metric such as val/acc"
            )


# Each job checks its config before its heavy imports (Lightning alone takes seconds): a bad value is
# one line at once.


def run_train(cfg: DictConfig) -> float | None:
    check_config(cfg)
    check_optimized_metric(cfg)
    _tidy_lightning_logging()
    from convdissect.train import train

    return optimized_value(cfg, train(cfg))


def run_dissect(cfg: DictConfig) -> None:
    check_dissect_config(cfg)
    _tidy_lightning_logging()
    from convdissect.dissection import dissect

    dissect(cfg)


def run_eval(cfg: DictConfig) -> None:
    check_eval_config(cfg)
    _tidy_lightning_logging()
    from convdissect.evaluate import evaluate

    evaluate(cfg)


def null_groups_as_empty(args: list[str], config_dir: str) -> list[str]:
    """GROUP=null (e.g. logger=null) as GROUP=[]: Hydra takes only a name or a list for a config group,
    and the empty list drops the group's defaults, as null does in a defaults list."""
    return [
        f"{arg.split('=', 1)[0]}=[]"
        if arg.endswith("=null") and (Path(config_dir) / arg.split("=", 1)[0]).is_dir()
        else arg
        for arg in args
    ]


def _compose(config_name: str, overrides: list[str], config_dir: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with hydra.initialize_config_dir(version_base="1.3", config_dir=config_dir):
        return hydra.compose(config_name, overrides, return_hydra_config=True)


def check_composition(config_name: str, overrides: list[str], config_dir: str, multirun: bool = False) -> None:
    """Compose the config as the Hydra app will, before it does: Hydra reports a bad override in several
    lines (exit 1); here it is one UserInputError naming the override, what is allowed and the nearest
    candidate. A sweep (-m) is composed once per value of each swept key."""
    for override in overrides:
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as err:
            raise UserInputError(f"{override}: not an override Hydra can read ({_one_line(err)})") from None
    cfg = _checked_compose(config_name, _sweep_variants(overrides)[0] if multirun else overrides, config_dir)
    if multirun:
        for variant in _sweep_variants(overrides + _sweeper_params(cfg, overrides)):
            _checked_compose(config_name, variant, config_dir)


def _checked_compose(config_name: str, overrides: list[str], config_dir: str) -> DictConfig:
    try:
        return _compose(config_name, overrides, config_dir)
    except MissingConfigException as err:
        raise UserInputError(_missing_config_line(err, overrides)) from None
    except ConfigCompositionException as err:
        if isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
            raise UserInputError(
                _unknown_key_line(err.__cause__.full_key, config_name, overrides, config_dir)
            ) from None
        raise UserInputError(_one_line(err)) from None


def _sweeper_params(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The sweep a config holds in hydra.sweeper.params (e.g. from +sweep=...) as overrides, less the keys
    the command line sets: Hydra's sweepers let the command line win."""
    given = {override.split("=", 1)[0].lstrip("+~") for override in overrides}
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return [f"{key}={value}" for key, value in params.items() if key.lstrip("+~") not in given]


def _sweep_variants(overrides: list[str]) -> list[list[str]]:
    """The overrides with every swept key at its first value, then one list per other value of a swept
    key: each value a job can take is composed once. Interval and glob sweeps, whose values only the
    sweeper knows, are left out."""
    values = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            values.append([override.input_line])
        elif override.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP, ValueType.RANGE_SWEEP):
            values.append([f"{override.get_key_element()}={v}" for v in override.sweep_string_iterator()])
    first = [choices[0] for choices in values]
    return [first] + [first[:i] + [v] + first[i + 1 :] for i, choices in enumerate(values) for v in choices[1:]]


def _one_line(err: Exception) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _override_of(key: str, overrides: list[str]) -> str | None:
    """The override that sets `key` or a key inside it (a config key, or a config group such as hydra/launcher)."""
    for override in overrides:
        name = override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]
        if name == key or name.startswith(key + "."):
            return override
    return None


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _missing_config_line(err: MissingConfigException, overrides: list[str]) -> str:
    """model=resnet or +experiment=missing: the group's configs are the allowed values."""
    group, _, name = (err.missing_cfg_file or "").rpartition("/")
    override = _override_of(group, overrides)
    where = override or f"the defaults list's {group}={name}"
    if err.options is None:
        return f"{where}: no config group {group or name} ({_one_line(err).split(';')[0]})"
    return f"{where}: no {group} config {name}; allowed: {', '.join(err.options)}" + _did_you_mean(name, err.options)


def _unknown_key_line(key: str, config_name: str, overrides: list[str], config_dir: str) -> str:
    """foo=1 or trainer.max_epoch=3: the keys beside it (in the config composed without it) are the candidates."""
    override = _override_of(key, overrides) or key
    others = [o for o in overrides if o != override]
    try:
        cfg = _compose(config_name, others, config_dir)
    except Exception:  # another override fails too: the defaults alone still list the keys
        cfg = _compose(config_name, [], config_dir)
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    names = [str(k) for k in node] if isinstance(node, DictConfig) else []
    hint = _did_you_mean(name, names)
    if parent and hint:
        hint = hint.replace("mean ", f"mean {parent}.", 1)
    elif parent and names:
        hint = f"; keys there: {', '.join(names)}"
    return f"{override}: no key {key} in the {config_name} config{hint} (+{key}=VALUE adds a new key)"


def _hydra_app(job: Callable[[DictConfig], object], config_name: str, config_dir: str | None) -> None:
    """Run `job` as a Hydra app over <config_dir>/<config_name>.yaml (an absolute path; default: the
    package's configs). Bad input, a bad override included, ends the run with one `error: ...` line and
    exit status 2."""
    config_dir = config_dir or str(CONFIG_DIR)

    @hydra.main(version_base="1.3", config_path=config_dir, config_name=config_name)
    def main(cfg: DictConfig):
        if in_multirun():
            forget_failed_job()
        try:
            return job(cfg)
        except UserInputError as err:
            if not in_multirun():
                print(f"error: {err}", file=sys.stderr)
                sys.exit(2)
            record_failed_job(f"error: {err}")
        except Exception as err:  # a bug: its traceback goes to the log; a sweep's other jobs still run
            if not in_multirun():
                raise
            log.exception("the job failed")
            record_failed_job(f"{type(err).__name__}: {_one_line(err)}")
        return _failed_value(cfg)

    sys.argv[1:] = null_groups_as_empty(sys.argv[1:], config_dir)
    args = get_args_parser().parse_args(sys.argv[1:])
    if not (args.config_dir or args.config_path or args.shell_completion or args.help or args.hydra_help):
        try:
            multirun = args.multirun or "hydra.mode=MULTIRUN" in args.overrides
            check_composition(args.config_name or config_name, args.overrides, config_dir, multirun)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
    main()


def train_main(config_dir: str | None = None) -> None:
    """convdissect-train [+experiment=NAME] [key=value ...]"""
    _hydra_app(run_train, "train", config_dir)


def dissect_main(config_dir: str | None = None) -> None:
    """convdissect-dissect ckpt_path=PATH [key=value ...]"""
    _hydra_app(run_dissect, "dissect", config_dir)


def eval_main(config_dir: str | None = None) -> None:
    """convdissect-eval ckpt_path=PATH [key=value ...]"""
    _hydra_app(run_eval, "eval", config_dir)


def tables_main(argv: list[str] | None = None) -> None:
    """convdissect tables NAME ... (`convdissect tables --help` lists the names); markdown on stdout"""
    from convdissect.tables import render

    try:
        print(render(sys.argv[1:] if argv is None else argv))
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


COMMANDS = {"train": train_main, "dissect": dissect_main, "eval": eval_main, "tables": tables_main}


def main() -> None:
    """convdissect COMMAND ...: one command for all; a Hydra command reads its overrides from sys.argv."""
    usage = f"usage: convdissect {{{','.join(COMMANDS)}}} ... (each with --help)"
    if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
        print(usage)
        return
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(usage, file=sys.stderr)
        sys.exit(2)
    command = sys.argv.pop(1)
    COMMANDS[command]()
