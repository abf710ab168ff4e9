"""dissect.py on a HandNet: labels.json, explanation.md and report.html give its explanation from
its parameters instead of fitted labels. Two sources: the Lightning checkpoint of a real short
fine-tuning run, and a hand-built model_state.pt with its run's .hydra/config.yaml beside it."""

import html
import json

import pytest
import torch
from omegaconf import OmegaConf

from convdissect.dissection import dissect
from convdissect.errors import UserInputError
from convdissect.handnet.explanation import explain, explanation_markdown
from convdissect.handnet.net import HandNet
from convdissect.models.checkpoint import load_any_net
from tests.helpers import REPORT_FAST, Page, compose_cfg


def check_report(out, labels: dict, events=None) -> None:
    """The page shows every unit's sentence (conv1, conv3) and every digit's recipe, in the
    sections conv1, conv3 and fc (readout); every <img> is a PNG of the run dir."""
    text = (out / "report.html").read_text()
    page = Page(text)
    assert page.sections == ["conv1", "conv3", "fc"] and "readout: digit recipes" in text
    for unit in labels["units"]:
        assert html.escape(unit["label"] if unit["layer"] == "fc" else unit["sentence"]) in text
    assert len(page.images) >= 7 and page.captions == len(page.images)
    assert all((out / src).is_file() for src in page.images)
    assert {"conv1_weights.png", "conv3_bursts.png"} <= set(page.images)
    assert (out / "explanation.md").read_text() == explanation_markdown(labels)
    assert list((events or out / "tensorboard").glob("events.out.tfevents*"))


@pytest.mark.slow
def test_a_handnet_lightning_checkpoint_is_explained(handnet_finetuned, tmp_path):
    finetuned, _ = handnet_finetuned
    ckpt = finetuned / "checkpoints" / "last.ckpt"
    labels = dissect(compose_cfg("dissect", [f"ckpt_path={ckpt}", *REPORT_FAST], tmp_path))
    assert labels == json.loads((tmp_path / "labels.json").read_text())
    # the training run's explain(net), plus each unit's superstimulus against the best image (dissect's own)
    strength = {"superstimulus_objective", "best_image_objective"}
    assert all(strength <= set(u) for u in labels["units"] if u["layer"] in ("conv1", "conv3"))
    explained = {**labels, "units": [{k: v for k, v in u.items() if k not in strength} for u in labels["units"]]}
    assert explained == json.loads((finetuned / "labels.json").read_text())
    net = load_any_net(ckpt)
    assert isinstance(net, HandNet) and not net.training
    assert labels["net"] == "handnet" and labels["widths"] == net.widths == [4, len(net.recipes.detectors) + 2]
    counts = {layer: sum(u["layer"] == layer for u in labels["units"]) for layer in ("conv1", "conv3", "fc")}
    assert counts == {"conv1": 4, "conv3": net.widths[1], "fc": 10}
    assert [u.get("sentence", u["label"]) for u in labels["units"]] == [
        u.get("sentence", u["label"]) for u in explain(net)["units"]
    ]
    check_report(tmp_path, labels)
    stimuli = torch.load(tmp_path / "superstimuli.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in stimuli.items()} == {
        "conv1": (4, 1, 28, 28),
        "conv3": (net.widths[1], 1, 28, 28),
        "readout": (10, 1, 28, 28),
    }
    assert "readout_superstimuli.png" in Page((tmp_path / "report.html").read_text()).images


@pytest.mark.slow
def test_a_handcrafted_model_state_dissects_with_its_run_config(tmp_path):
    run = tmp_path / "run"
    # edges: 12 kernels where the model config's defaults give 4 (8 orientations with edges, 24, cost 2.4x the time)
    cfg = compose_cfg("train", ["+experiment=handnet_handcrafted", "model.edges=true"], run)
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # as Hydra saves it: interpolations unresolved
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    net = HandNet(**{k: v for k, v in spec.items() if k != "_target_"})
    torch.save(net.state_dict(), run / "model_state.pt")
    out = tmp_path / "dissect"
    labels = dissect(
        compose_cfg(
            "dissect", [f"ckpt_path={run / 'model_state.pt'}", *REPORT_FAST, "superstimulus.enabled=false"], out
        )
    )
    assert labels == json.loads(json.dumps(explain(net), ensure_ascii=False)) and labels["widths"][0] == 12
    check_report(out, labels, run / "tensorboard" / "dissect_dissect")  # beside the training run's events


def test_a_handnet_model_state_whose_config_does_not_fit_is_a_clear_error(tmp_path):
    cfg = compose_cfg("train", ["+experiment=handnet_handcrafted"], tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # 4 orientations, the file has 8
    torch.save(HandNet(n_orientations=8).state_dict(), tmp_path / "model_state.pt")
    with pytest.raises(UserInputError, match=r"model_state\.pt: does not fit the HandNet of its net spec") as err:
        load_any_net(tmp_path / "model_state.pt")
    assert "\n" not in str(err.value)
