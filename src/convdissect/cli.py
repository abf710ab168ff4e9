"""The command-line entry points: `convdissect train|dissect|eval|tables ...` (also `python -m convdissect`)
and the console scripts convdissect-train, convdissect-dissect and convdissect-eval read the package's
configs; a checkout's train.py and dissect.py pass its conf/."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from numbers import Number
from pathlib import Path

import hydra
from omegaconf import DictConfig

from convdissect.config import CONFIG_DIR
from convdissect.errors import UserInputError


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


def run_train(cfg: DictConfig) -> float | None:
    from convdissect.train import train  # heavy imports after Hydra parsed the command line

    check_optimized_metric(cfg)
    return optimized_value(cfg, train(cfg))


def run_dissect(cfg: DictConfig) -> None:
    from convdissect.dissect.run import dissect

    dissect(cfg)


def run_eval(cfg: DictConfig) -> None:
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


def _hydra_app(job: Callable[[DictConfig], object], config_name: str, config_dir: str | None) -> None:
    """Run `job` as a Hydra app over <config_dir>/<config_name>.yaml (an absolute path; default: the
    package's configs). Bad input ends the run with one `error: ...` line and exit status 2."""

    @hydra.main(version_base="1.3", config_path=config_dir or str(CONFIG_DIR), config_name=config_name)
    def main(cfg: DictConfig):
        _tidy_lightning_logging()
        try:
            return job(cfg)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    sys.argv[1:] = null_groups_as_empty(sys.argv[1:], config_dir or str(CONFIG_DIR))
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
