# Produced: docs/outputs.md: resuming a killed run gives the same kept channels and bit-identical weights (PASS/FAIL, no number).
"""Fault checks a user can rerun in a few minutes on 2 cores; prints PASS or FAIL per check.

1. kill -9 a short prune_7iters run at a random epoch boundary, resume it with ckpt_path= into its
   own dir, and compare it with the uninterrupted run: the kept channels at every pruning step and
   the sha256 of model_state.pt (CPU, one thread: the same seed gives the same bits).
2. start two runs in the same second with the default run dirs: each must get its own dir, with
   its own metrics.json and checkpoints.
3. SIGTERM the same run mid-epoch: exit 143 and one line saying how to resume; resumed, it must equal
   the uninterrupted run as in 1.
4. resume with a changed seed: refused, exit 2, one `error:` line.
5. a full disk (a 3 MB tmpfs; skipped without root): exit 2, one `error:` line, no partial checkpoint.

python benchmarks/fault_check.py [--epoch K] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRUNE = [
    "+experiment=prune_7iters",
    "trainer.limit_train_batches=0.1",
    "trainer.limit_val_batches=0.2",
    "threads=1",
    "seed=0",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "+callbacks.model_checkpoint.save_top_k=-1",  # every epoch's checkpoint stays
]
TINY = [
    "model.widths=[4,8,8,8]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "threads=1",
]


def train(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(
            f"{what} failed (exit {proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}"
        )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kept_channels(run_dir: Path) -> list[dict]:
    return [step["kept_channels"] for step in json.loads((run_dir / "metrics.json").read_text())["pruning_history"]]


def report(name: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    return ok


def check_kill_and_resume(out: Path, epoch: int) -> bool:
    full, killed = out / "uninterrupted", out / "killed_and_resumed"
    start = time.perf_counter()
    finish(train(PRUNE + [f"hydra.run.dir={full}"]), "the uninterrupted run")
    print(f"uninterrupted run: {time.perf_counter() - start:.0f} s", flush=True)

    boundary = killed / "checkpoints" / f"epoch_{epoch:03d}.ckpt"
    proc = train(PRUNE + [f"hydra.run.dir={killed}"])
    while not boundary.exists():  # epoch `epoch` is over once its checkpoint is written
        if proc.poll() is not None:
            raise SystemExit(f"the run to kill ended (exit {proc.returncode}) before {boundary.name} was written")
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no clean-up, as for a crash or a lost node
    proc.wait()
    print(f"killed the run once {boundary.name} existed (pid {proc.pid})", flush=True)
    finish(train(PRUNE + [f"hydra.run.dir={killed}", f"ckpt_path={boundary}"]), "the resumed run")

    a, b = kept_channels(full), kept_channels(killed)
    same_steps = [i + 1 for i, (x, y) in enumerate(zip(a, b)) if x == y]
    ok_kept = report(
        "kept channels per pruning step",
        a == b and len(a) == 7,
        f"{len(same_steps)} of {len(a)} steps equal (uninterrupted {len(a)} steps, resumed {len(b)})",
    )
    ha, hb = sha256(full / "model_state.pt"), sha256(killed / "model_state.pt")
    ok_hash = report("model_state.pt sha256", ha == hb, f"uninterrupted {ha[:16]}, resumed {hb[:16]}")
    acc_a, acc_b = (json.loads((d / "metrics.json").read_text())["test/acc"] for d in (full, killed))
    print(f"info  test/acc: uninterrupted {acc_a:.4f}, resumed {acc_b:.4f}", flush=True)
    return ok_kept and ok_hash


def check_sigterm_and_resume(out: Path, epoch: int) -> bool:
    full, stopped = out / "uninterrupted", out / "sigterm_and_resumed"
    proc = train(PRUNE + [f"hydra.run.dir={stopped}"])
    while not (stopped / "checkpoints" / f"epoch_{epoch:03d}.ckpt").exists() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.2, 1.0))  # into the next epoch
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    ok_exit = report("SIGTERM: exit 143 and how to resume", proc.returncode == 143 and "ckpt_path=" in last, last)
    ckpt = last.rsplit("ckpt_path=", 1)[-1]
    finish(train(PRUNE + [f"hydra.run.dir={stopped}", f"ckpt_path={ckpt}"]), "the run resumed after SIGTERM")
    ha, hb = sha256(full / "model_state.pt"), sha256(stopped / "model_state.pt")
    ok_same = report(
        "SIGTERM mid-epoch, resumed: model_state.pt sha256",
        ha == hb and kept_channels(full) == kept_channels(stopped),
        f"uninterrupted {ha[:16]}, resumed {hb[:16]}",
    )
    return ok_exit and ok_same


def one_error_line(proc: subprocess.Popen) -> tuple[bool, str]:
    _, err = proc.communicate(timeout=600)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    return proc.returncode == 2 and len(errors) == 1 and "Traceback" not in err, (errors or [""])[-1]


def check_changed_config_refused(out: Path) -> bool:
    ckpt = out / "uninterrupted" / "checkpoints" / "epoch_003.ckpt"
    ok, line = one_error_line(train(PRUNE + ["seed=7", f"ckpt_path={ckpt}", f"hydra.run.dir={out / 'changed'}"]))
    return report("resume with another seed refused", ok and "seed=0 (now 7)" in line, line)


def check_full_disk(out: Path) -> bool:
    disk = out / "small_disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        print("SKIP  full disk: mounting a tmpfs needs root", flush=True)
        return True
    try:  # the full-width net's checkpoint (3.1 MB) does not fit
        run = disk / "run"
        ok, line = one_error_line(train(TINY + ["model.widths=[32,64,128,128]", f"hydra.run.dir={run}"]))
        partial = sorted(p.name for p in (run / "checkpoints").glob("*")) if (run / "checkpoints").exists() else []
        return report("full disk: one line, no partial file", ok and "no space left" in line and not partial, line)
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def check_same_second(out: Path) -> bool:
    log_dir = out / "same_second"
    procs = [train(TINY + [f"paths.log_dir={log_dir}", f"seed={seed}"]) for seed in (1, 2)]
    for proc in procs:
        finish(proc, "a concurrent run")
    runs = sorted((log_dir / "train" / "runs").iterdir())
    seeds = sorted(
        json.loads((run / "metrics.json").read_text())["overrides"][-1]
        for run in runs
        if (run / "metrics.json").exists()
    )
    ckpts = [sorted(p.name for p in (run / "checkpoints").iterdir()) for run in runs]
    ok = len(runs) == 2 and seeds == ["seed=1", "seed=2"] and all(c == ["epoch_000.ckpt", "last.ckpt"] for c in ckpts)
    return report(
        "two runs started together, default dirs",
        ok,
        f"{len(runs)} run dirs {[r.name for r in runs]}, metrics.json of {seeds}, checkpoints {ckpts}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch", type=int, help="the epoch boundary to kill at (0-8); default: a random one")
    parser.add_argument("--out", type=Path, help="where the runs go; default: a new temporary dir")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="fault_check_"))
    epoch = (
        args.epoch if args.epoch is not None else random.randrange(0, 9)
    )  # prune_7iters: 10 epochs, epoch 9 is the last
    print(f"runs in {out}; killing after epoch {epoch}", flush=True)
    results = [
        check_kill_and_resume(out, epoch),
        check_same_second(out),
        check_sigterm_and_resume(out, epoch),
        check_changed_config_refused(out),
        check_full_disk(out),
    ]
    print("ALL PASS" if all(results) else "SOME FAILED", flush=True)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
