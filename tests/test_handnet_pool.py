"""The HandNet's pooling options: cell_pixels=2 (finer burst positions before conv3) and
final_pool=2 or 3 (a readout term reads one unit in one region). Real short runs rebuild exactly
from their learned recipes; hand-built nets answer strokes placed in pixels (the planted truth)."""

import html
import re

import pytest
import torch
import yaml

from convdissect.conventions import REGION_NAMES
from convdissect.data.mnist import MNISTDataModule
from convdissect.data.probes import stroke_images
from convdissect.errors import UserInputError
from convdissect.handnet.explanation import explain
from convdissect.handnet.learned_recipes import learned_recipes
from convdissect.handnet.net import HandNet
from convdissect.handnet.recipes import Part
from convdissect.report.page import page
from tests.helpers import EXPLAINABLE_RUN, check_round_trip, short_run

SHORTER = [*EXPLAINABLE_RUN, "trainer.limit_train_batches=30"]


@pytest.fixture(scope="module", params=["model.cell_pixels=2", "model.final_pool=2"])
def pooled_run(request, tmp_path_factory):
    return short_run(tmp_path_factory.mktemp("pool"), [*SHORTER, request.param])


@pytest.mark.slow
def test_round_trip_is_exact_with_either_pooling(pooled_run, data_dir, tmp_path):
    check_round_trip(pooled_run, data_dir, tmp_path)
    out, metrics, state = pooled_run
    learned = yaml.safe_load((out / "learned_recipes.yaml").read_text())
    final_pool = learned["final_pool"]
    regions = final_pool**2
    assert (learned["cell_pixels"], regions) == (2, 1) or (learned["cell_pixels"], regions) == (4, 4)
    assert state["readout.weight"].shape[1] == metrics["widths"][1] * regions
    terms = [t for entry in learned["digits"].values() for t in entry["terms"]]
    assert len(terms) == int(state["readout.mask"].sum())
    # each term names its region (and a reader must read it: one more number per term)
    assert all(("region" in t) == (regions > 1) for t in terms)
    assert {t["region"] for t in terms if regions > 1} <= set(REGION_NAMES[final_pool])
    bursts = state["conv3.amplitude"].numel()
    numbers = 5 * len(state["conv1.theta"]) + 6 * bursts + metrics["widths"][1] + len(terms) * (2 if regions > 1 else 1)
    assert metrics["explanation/numbers"] == numbers + 10
    text = (out / "explanation.md").read_text()
    assert f"one cell = {learned['cell_pixels']} pixels" in text
    assert (" region" in text.split("## readout")[1]) == (regions > 1)


def test_a_stroke_in_one_region_drives_only_that_region():
    """A short stroke (3 pixels: inside one 4-pixel cell) centred on each of the 3x3 conv3 map's
    positions, in pixels from the image centre: the hand-built middle detector of its orientation
    reads it in that region (row by row from the top left) and nowhere else."""
    net = HandNet(final_pool=3)
    centres = torch.tensor([[4.0 * (col - 1), 4.0 * (1 - row)] for row in range(3) for col in range(3)])  # y up
    for angle, pattern in ((0.0, "horizontal"), (90.0, "vertical")):
        unit = net.recipes.detectors.index(Part("middle", pattern))
        with torch.no_grad():
            features = net.features(stroke_images(angle, thickness=2.5, center=centres, length=3.0))
        read = features[:, unit * 9 : unit * 9 + 9]
        assert torch.equal(read > 0, torch.eye(9, dtype=torch.bool)), (pattern, read)


def test_a_hand_built_net_reads_its_parts_in_the_regions_of_a_centred_digit(data_dir):
    """The recipes describe a centred digit: with final_pool=3 a part reads its unit in the centre
    region, where the grid sits on the image centre. Read in all 9 regions (their mean), a unit that
    fires in one region reads near 0, every negative part always holds and the net is near chance
    (0.14); the reference is the same recipes read by the one-maximum net (final_pool=1)."""
    data = MNISTDataModule(data_dir=data_dir)
    data.prepare_data()
    data.setup()
    images, digits = data.tensors("test", 1000)
    for cell_pixels in (4, 2):
        accuracy = {}
        for final_pool in (1, 3):
            with torch.no_grad():
                predicted = HandNet(cell_pixels=cell_pixels, final_pool=final_pool)(images).argmax(1)
            accuracy[final_pool] = float((predicted == digits).float().mean())
        assert accuracy[3] > max(0.2, 0.5 * accuracy[1]), (cell_pixels, accuracy)


@pytest.mark.parametrize("cell_pixels", [4, 2])
def test_hand_built_parts_sit_at_their_recipe_place_in_pixels(cell_pixels):
    """The recipe's top part is 2 cells of 4 pixels up, whatever the net's cell: a long horizontal
    stroke swept from 12 pixels down to 12 up drives the top detector around y = +8 pixels (the
    centroid of its response; the final max-pool spreads it over +-4 pixels), and the explanation
    calls every hand-built unit by its recipe part."""
    net = HandNet(cell_pixels=cell_pixels)
    assert net.conv3.size == 20 // cell_pixels
    ys = torch.arange(-12.0, 12.5, 0.5)
    for part, angle, axis in ((Part("top", "horizontal"), 0.0, 1), (Part("left", "vertical"), 90.0, 0)):
        centres = torch.zeros(len(ys), 2)
        centres[:, axis] = ys
        with torch.no_grad():
            response = net.features(stroke_images(angle, thickness=2.5, center=centres))[
                :, net.recipes.detectors.index(part)
            ]
        place = 8.0 if part.position == "top" else -8.0
        assert float((response * ys).sum() / response.sum()) == pytest.approx(place, abs=1.5)
    labels = [u["label"] for u in explain(net)["units"] if u["layer"] == "conv3"]
    assert labels == [part.label for part in net.recipes.detectors]


def test_a_learned_file_without_the_pooling_keys_loads_as_before(tmp_path):
    """Learned recipe files written before cell_pixels and final_pool existed: 4 and 1."""
    torch.manual_seed(0)
    net = HandNet(n_bursts=2, extra_detectors=2)
    recipes = learned_recipes(net)
    del recipes["cell_pixels"], recipes["final_pool"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(recipes, sort_keys=False, allow_unicode=True))
    old = HandNet(recipes=str(tmp_path / "old.yaml"))
    assert (old.cell_pixels, old.final_pool) == (4, 1)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(old(x), net(x))


def test_a_net_with_both_poolings_rebuilds_exactly_from_its_learned_file(tmp_path):
    """cell_pixels=2 and final_pool=3 together, a sparse readout whose terms sit in scattered
    regions: the learned file names each term's unit and region, and the net it builds answers
    random images exactly as the original."""
    torch.manual_seed(0)
    net = HandNet(cell_pixels=2, final_pool=3, n_bursts=2, extra_detectors=2)
    with torch.no_grad():
        net.readout.weight.normal_()
        net.readout.mask.bernoulli_(0.3)
    (tmp_path / "learned.yaml").write_text(yaml.safe_dump(learned_recipes(net), sort_keys=False, allow_unicode=True))
    rebuilt = HandNet(recipes=str(tmp_path / "learned.yaml"))
    assert (rebuilt.cell_pixels, rebuilt.final_pool, rebuilt.conv3.size) == (2, 3, 10)
    torch.testing.assert_close(rebuilt.readout.sparse_weight(), net.readout.sparse_weight(), rtol=0, atol=0)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"final_pool": 5}, r"final_pool=5: allowed 1, 2, 3$"),
        ({"cell_pixels": 8}, r"cell_pixels=8: allowed 2, 4$"),
        ({"cell_pixels": 4.0}, r"cell_pixels=4\.0: allowed 2, 4$"),  # equal to 4, yet no pooling size
        ({"final_pool": 2.0}, r"final_pool=2\.0: allowed 1, 2, 3$"),
        ({"final_pool": 2}, r"digit 0 term: region=None; allowed \['upper-left', "),
    ],
)
def test_bad_pooling_in_a_learned_file_is_a_one_line_error(change, message, tmp_path):
    recipes = {**learned_recipes(HandNet()), **change}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipes, sort_keys=False, allow_unicode=True))
    with pytest.raises(UserInputError, match=message) as err:
        HandNet(recipes=str(tmp_path / "bad.yaml"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "cell_pixels, final_pool, conv3_says, fc_says",
    [
        (4, 1, "5x5 cells of 4x4 pixels", "each unit's maximum over the image"),
        (2, 2, "10x10 cells of 2x2 pixels", "maxima in 2x2 image regions (upper-left, upper-right, lower-left"),
    ],
)
def test_the_report_page_introductions_describe_the_nets_pooling(cell_pixels, final_pool, conv3_says, fc_says):
    """The HandNet report page's section introductions name its grid, its cell and what a readout
    term reads, for the net it shows: not the default net's 7x7 map and one maximum per unit."""
    net = HandNet(cell_pixels=cell_pixels, final_pool=final_pool)
    text = html.unescape(page([], explain(net), [], "header"))
    intro = dict(re.findall(r"<section id='(\w+)'><h2>.*?</h2><p>(.*?)</p>", text))
    assert conv3_says in intro["conv3"] and f"max-pooled in {cell_pixels}x{cell_pixels} blocks" in intro["conv3"]
    assert fc_says in intro["fc"]
    assert "7x7" not in text and ("region" in intro["fc"]) == (final_pool > 1)


@pytest.mark.parametrize(
    "where, key, message",
    [
        ("lines", "sigma", r"conv1_1: sigma=0\.0: allowed a number > 0$"),
        ("units", "sigma_x", r"conv3_1, burst 1: sigma_x=-1\.0: allowed a number > 0$"),
    ],
)
def test_a_width_of_zero_or_below_in_a_learned_file_is_a_one_line_error(where, key, message, tmp_path):
    recipes = learned_recipes(HandNet(n_bursts=2, extra_detectors=2))
    entry = recipes[where][0] if where == "lines" else recipes[where][0]["bursts"][0]
    entry[key] = 0.0 if key == "sigma" else -1.0
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(recipes, sort_keys=False, allow_unicode=True))
    with pytest.raises(UserInputError, match=message) as err:
        HandNet(recipes=str(tmp_path / "bad.yaml"))
    assert "\n" not in str(err.value)
