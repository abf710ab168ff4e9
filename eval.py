"""Test a checkpoint's own weights: python eval.py ckpt_path=PATH [key=value ...]."""

import sys

import hydra
from omegaconf import DictConfig

import convdissect.config  # noqa: F401  (registers ${repo_root:} and ${pid:})
from convdissect.errors import UserInputError


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    from convdissect.evaluate import evaluate  # heavy imports after Hydra parsed the command line

    try:
        return evaluate(cfg)["test/acc"]
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
