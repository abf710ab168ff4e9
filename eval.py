"""Test a checkpoint's own weights: python eval.py ckpt_path=PATH [key=value ...] (installed: convdissect-eval)."""

from pathlib import Path

from convdissect.cli import eval_main

if __name__ == "__main__":
    eval_main(config_dir=str(Path(__file__).resolve().parent / "conf"))  # this checkout's configs
