"""Dissect a trained net (any ConvNet from its run dir: docs/own_net.md), or explain a HandNet:
python dissect.py ckpt_path=PATH [key=value ...]
(installed: convdissect-dissect)."""

from pathlib import Path

from convdissect.cli import dissect_main

if __name__ == "__main__":
    dissect_main(config_dir=str(Path(__file__).resolve().parent / "conf"))  # this checkout's configs
