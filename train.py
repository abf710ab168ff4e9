"""Train (and prune) a ConvNet: python train.py [+experiment=NAME] [key=value ...]."""

import sys

import hydra
from omegaconf import DictConfig

import convdissect.config  # noqa: F401  (registers ${repo_root:})
from convdissect.errors import UserInputError


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from convdissect.train import train  # heavy imports after Hydra parsed the command line

    try:
        return train(cfg)["test/acc"]  # the value a Hydra sweeper optimises
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
