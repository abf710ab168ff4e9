"""Dissect a trained SimpleConvNet, or explain a HandNet: python dissect.py ckpt_path=PATH [key=value ...]."""

import sys

import hydra
from omegaconf import DictConfig

import convdissect.config  # noqa: F401  (registers ${repo_root:})
from convdissect.errors import UserInputError


@hydra.main(version_base="1.3", config_path="conf", config_name="dissect")
def main(cfg: DictConfig) -> None:
    from convdissect.dissect.run import dissect  # heavy imports after Hydra parsed the command line

    try:
        dissect(cfg)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
