"""The dissection report: report.html, its PNGs, the TensorBoard figures and projector embeddings,
on a tiny net with planted units (real Hydra config, real SummaryWriter, read back with
TensorBoard's EventAccumulator)."""

import json
import math

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convdissect.analysis.families import line_kernels
from convdissect.analysis.projections import separation
from convdissect.dissection import dissect
from convdissect.errors import UserInputError
from convdissect.models.simple_convnet import SimpleConvNet
from convdissect.report import figures
from tests.helpers import PROJECTION_POINTS, REPORT_FAST, TINY, Page, compose_cfg

SECTIONS = ("conv1", "conv2", "conv3", "fc")
STAGES = {"input": 784, "conv3": 8, "fc4": 8, "fc5": 10}


def planted_net() -> SimpleConvNet:
    """conv1: lines at 0/45/90/135°; conv2_3 copies conv1_2 (a strong / line on it, little
    else), so it is the most copy-like conv2 channel, the report's default."""
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8])
    with torch.no_grad():
        net.conv1.weight[:, 0] = line_kernels(torch.deg2rad(torch.tensor([0.0, 45.0, 90.0, 135.0])), 0.3, 0.0, 1.0)
        net.conv1.bias.zero_()
        net.conv2.weight[2] *= 0.02
        net.conv2.weight[2, 1] = line_kernels(torch.tensor(0.7854), 0.3, 0.0, 2.0)
    return net.eval()


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    """The planted net's weights in a training run's dir (its .hydra/config.yaml, as the Hydra app leaves it)."""
    training = tmp_path_factory.mktemp("training_run")
    (training / ".hydra").mkdir()
    OmegaConf.save(compose_cfg("train", TINY, training), training / ".hydra" / "config.yaml")
    torch.save(planted_net().state_dict(), training / "model_state.pt")
    return training


@pytest.fixture(scope="module")
def run(training_run, tmp_path_factory):
    """The planted net dissected into a dir of its own, with its report."""
    out = tmp_path_factory.mktemp("dissect")
    labels = dissect(compose_cfg("dissect", [f"ckpt_path={training_run / 'model_state.pt'}", *REPORT_FAST], out))
    return out, labels


@pytest.fixture(scope="module")
def events_dir(training_run, run):
    """Where the dissection's TensorBoard events are: beside the training run's, one `tensorboard --logdir RUN`."""
    return training_run / "tensorboard" / f"dissect_{run[0].name}"


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_events_go_beside_the_training_run(training_run, run, events_dir):
    out, labels = run
    assert list((training_run / "tensorboard").iterdir()) == [events_dir] and events_dir.is_dir()
    assert not (out / "tensorboard").exists()
    assert json.loads((out / "labels.json").read_text()) == labels


@pytest.mark.slow
def test_every_image_of_the_page_is_a_png_in_the_run_dir(run):
    out, _ = run
    page = Page((out / "report.html").read_text())
    assert len(page.images) >= 16 and page.captions == len(page.images)
    for src in page.images:
        assert "/" not in src and src.endswith(".png")  # relative, in the run dir itself
        with Image.open(out / src) as image:
            assert image.format == "PNG" and min(image.size) >= 100
    assert sorted(page.images) == sorted(p.name for p in out.glob("*.png"))


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_the_page_has_every_section_and_the_label_tables(run):
    out, labels = run
    text = (out / "report.html").read_text()
    assert Page(text).sections == ["claims", *SECTIONS]
    claims = json.loads((out / "claims.json").read_text())
    assert f"<td>{claims['fidelity']['conv2']['median']}</td>" in text  # the labels' fidelity, next to its nulls
    assert "label net" in text and "terms to read" in text
    for unit in labels["units"]:
        assert f"<td>{unit['name']}</td>" in text
    assert "conv1_2" in text and "kNN accuracy" in text


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_default_dissections_are_the_copying_conv2_channel_and_one_conv3_channel_on_5_and_7(run):
    out, labels = run
    conv2_3 = next(u for u in labels["units"] if u["name"] == "conv2_3")
    assert conv2_3["copies_input"] and conv2_3["drivers"][0]["input"] == "conv1_2"
    assert (out / "conv2_3_dissection_digit0.png").is_file()
    fives = sorted(p.name for p in out.glob("conv3_*_dissection_digit5.png"))
    sevens = sorted(p.name for p in out.glob("conv3_*_dissection_digit7.png"))
    assert len(fives) == len(sevens) == 1 and fives[0].replace("digit5", "digit7") == sevens[0]


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_figures_are_in_tensorboard(run, events_dir):
    out, _ = run
    events = EventAccumulator(str(events_dir), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    stems = {p.stem for p in out.glob("*.png")}
    assert {tag.split("/", 1)[1] for tag in tags} == stems
    assert {tag.split("/", 1)[0] for tag in tags} == set(SECTIONS)
    image = events.Images("conv1/conv1_weights")[0]
    with Image.open(out / "conv1_weights.png") as png:
        assert (image.width, image.height) == png.size


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_labels_are_a_text_table_in_tensorboard(run, events_dir):
    _, labels = run
    events = EventAccumulator(str(events_dir), size_guidance={"tensors": 0})
    events.Reload()
    table = events.Tensors("labels/text_summary")[0].tensor_proto.string_val[0].decode()
    rows = table.splitlines()[2:]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == [u["name"] for u in labels["units"]]
    conv2_3 = next(u for u in labels["units"] if u["name"] == "conv2_3")
    assert f"| conv2_3 | {conv2_3['label']} |" in rows


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_projector_embeddings_are_written(events_dir):
    config = (events_dir / "projector_config.pbtxt").read_text()
    for stage, dims in STAGES.items():
        folder = events_dir / "00000" / stage
        assert f'tensor_name: "{stage}:00000"' in config
        rows = (folder / "tensors.tsv").read_text().splitlines()
        assert len(rows) == PROJECTION_POINTS and len(rows[0].split("\t")) == dims
        digits = (folder / "metadata.tsv").read_text().split()
        assert len(digits) == PROJECTION_POINTS and set(digits) <= {str(d) for d in range(10)} and len(set(digits)) > 5
        with Image.open(folder / "sprite.png") as sprite:
            side = math.ceil(math.sqrt(PROJECTION_POINTS))  # thumbnails a side
            assert sprite.size == (28 * side, 28 * side)


@pytest.mark.slow
def test_chosen_channels_and_the_no_conv2_variant(tmp_path):
    torch.manual_seed(1)
    torch.save(SimpleConvNet([4, 6, 8], conv2=False).state_dict(), tmp_path / "no_conv2.pt")
    overrides = [
        f"ckpt_path={tmp_path / 'no_conv2.pt'}",
        *REPORT_FAST,
        "superstimulus.enabled=false",
        "report.conv3.unit=conv3_2",
        "report.conv3.digits=[3]",
    ]
    dissect(compose_cfg("dissect", overrides, tmp_path))
    text = (tmp_path / "report.html").read_text()
    assert Page(text).sections == ["claims", *SECTIONS] and "has no conv2" in text
    assert (tmp_path / "conv3_2_dissection_digit3.png").is_file()
    assert not list(tmp_path.glob("conv2_*")) and not list(tmp_path.glob("*superstimuli*"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("report.conv2.unit=conv3_1", r"report\.conv2\.unit='conv3_1': expected conv2_K with K in 1\.\.8"),
        ("report.conv3.unit=conv3_9", r"report\.conv3\.unit='conv3_9'"),
        ("report.conv3.digits=[12]", r"report\.conv3\.digits: 12 is not a digit"),
    ],
)
def test_bad_report_choices_are_clear_errors(tmp_path, override, message):
    torch.save(SimpleConvNet([4, 8, 8, 8]).state_dict(), tmp_path / "net.pt")
    cfg = compose_cfg("dissect", [f"ckpt_path={tmp_path / 'net.pt'}", "n_images=50", override], tmp_path)
    with pytest.raises(UserInputError, match=message):
        dissect(cfg)
    assert not (tmp_path / "labels.json").exists()  # failed before any work


def test_separation_scores_tell_separated_classes_from_mixed_ones():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 10
    centres = torch.randn(10, 16, generator=generator) * 10.0
    separated = centres[labels] + torch.randn(200, 16, generator=generator)
    mixed = torch.randn(200, 16, generator=generator)
    sil, acc = separation(separated, labels)
    sil_mixed, acc_mixed = separation(mixed, labels)
    assert sil > 0.5 and acc > 0.95
    assert sil_mixed < 0.1 and acc_mixed < 0.35


@pytest.mark.slow  # the module's dissection with its report: ~14 s
def test_separation_scores_are_written_per_stage(run):
    out, _ = run
    scores = json.loads((out / "separation.json").read_text())
    assert list(scores) == list(STAGES)
    assert all(0.0 <= s["knn_acc"] <= 1.0 and -1.0 <= s["silhouette"] <= 1.0 for s in scores.values())


def test_the_activation_figure_puts_each_map_in_its_row_and_column():
    """One Axes, one image: a map smaller than its input (26 against 28 pixels) sits in its own cell
    (2-pixel frames), on its channel's colour scale."""
    rows, channels, size, step = 2, 3, 26, 28 + 2
    maps = torch.zeros(rows, channels, size, size)
    for r in range(rows):
        for c in range(channels):
            maps[r, c, r, c] = c + 1.0  # the channel's maximum, at (r, c) of row r's map
    fig = figures.activation_maps(torch.zeros(rows, 1, 28, 28), maps, "conv1", ["a", "b"])
    (ax,) = fig.axes
    canvas = ax.images[0].get_array()
    brightest = colormaps["viridis"](1.0)[:3]
    for r in range(rows):
        for c in range(channels):
            top, left = 2 + r * step, 2 + (c + 1) * step
            cell = canvas[top : top + size, left : left + size]
            assert np.argwhere(np.isclose(cell, brightest).all(axis=-1)).tolist() == [[r, c]]
