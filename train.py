"""Train (and prune) a ConvNet: python train.py [+experiment=NAME] [key=value ...] (installed: convdissect-train)."""

from pathlib import Path

from convdissect.cli import train_main

if __name__ == "__main__":
    train_main(config_dir=str(Path(__file__).resolve().parent / "conf"))  # this checkout's configs
