"""Every config group option composes; those a CPU machine can run instantiate."""

import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from threadpoolctl import threadpool_info, threadpool_limits

from convdissect.config import CONFIG_DIR, threads_within
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.train import build_module
from tests.helpers import compose_cfg

GROUPS = ["data", "model", "callbacks", "trainer", "logger", "paths", "hydra", "experiment", "debug", "hparams_search"]
CPU_TRAINERS = {"default", "cpu", "ddp_sim"}


def options(group):
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def all_options():
    return [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group,option", all_options())
def test_every_option_composes(group, option, tmp_path):
    prefix = "+" if group == "experiment" else ""
    cfg = compose_cfg("train", [f"{prefix}{group}={option}"], tmp_path)
    assert cfg.paths.data_dir and cfg.model._target_
    if group == "trainer" and option not in CPU_TRAINERS and not torch.cuda.is_available():
        return  # gpu / ddp need GPUs: composing is all this machine can check
    if group in ("data", "callbacks", "logger"):
        node = cfg[group]
        targets = [node] if "_target_" in node else [v for v in node.values() if "_target_" in v]
        for target in targets:  # each builds the class its config names
            assert type(instantiate(target)).__name__ == target._target_.rsplit(".", 1)[1]
    if group in ("trainer", "debug"):
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs or trainer.fast_dev_run
    if group == "debug":
        assert cfg.trainer.detect_anomaly and cfg.trainer.accelerator == "cpu"
    if group in ("model", "experiment", "hparams_search"):
        if OmegaConf.is_missing(cfg.model, "teacher"):  # prune_distill, handnet_distill ask for a teacher's file
            torch.save(SimpleConvNet([4, 8, 8, 8]).state_dict(), tmp_path / "teacher.pt")
            cfg.model.teacher = str(tmp_path / "teacher.pt")
        net = build_module(cfg).net
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)  # the composed net runs on MNIST-sized input


def test_baseline_experiment(tmp_path):
    cfg = compose_cfg("train", ["+experiment=baseline"], tmp_path)
    assert list(cfg.model.widths) == [32, 64, 128, 128]
    assert cfg.task_name == "baseline"
    assert build_module(cfg).n_params == 274_826  # docs/measures.md: the full SimpleConvNet


def test_run_dirs_follow_task_name():
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        hcfg = compose("train", ["+experiment=baseline"], return_hydra_config=True)
    assert "/baseline/runs/" in hcfg.hydra.run.dir
    assert "/baseline/multiruns/" in hcfg.hydra.sweep.dir
    assert OmegaConf.to_container(hcfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # one dir per job


def test_unknown_option_is_hydras_error(tmp_path):
    with pytest.raises(MissingConfigException, match="nonesuch"):
        compose_cfg("train", ["trainer=nonesuch"], tmp_path)


def test_threads_hold_for_torch_and_the_loaded_pools_and_are_put_back_after_the_block():
    """threads=1 also holds for t-SNE, PCA and the fits: their OpenMP and BLAS pools, left at every
    core beside busy processes, spin (one t-SNE: 95 s instead of 4 s on 2 loaded cores). A dissection
    called from Python leaves its caller's threads as they were."""
    import sklearn.manifold  # noqa: F401  (loads the OpenMP runtime scikit-learn uses)

    torch_threads = torch.get_num_threads()
    with threadpool_limits(limits=None):  # the pools as they were, after the test
        threadpool_limits(limits=2)
        torch.set_num_threads(2)
        with threads_within(1):
            inside = torch.get_num_threads(), {(p["user_api"], p["num_threads"]) for p in threadpool_info()}
        after = torch.get_num_threads(), {p["num_threads"] for p in threadpool_info()}
    torch.set_num_threads(torch_threads)
    assert inside[0] == 1 and ("openmp", 1) in inside[1] and {n for _, n in inside[1]} == {1}
    assert after == (2, {2})


@pytest.mark.slow  # a fresh Python process, where scikit-learn's OpenMP runtime is not yet loaded
def test_threads_hold_for_the_pools_loaded_after_them():
    code = (
        "from convdissect.config import set_threads; set_threads(1); import sklearn.manifold; "
        "from threadpoolctl import threadpool_info; print(sorted({(p['user_api'], p['num_threads']) for p in threadpool_info()}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the test workers set it
    pools = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert "('openmp', 1)" in pools and "2)" not in pools, pools
