"""Measures with traps: signed contributions against inhibitors and constant backgrounds, the
shares' documented sums, burst/stroke statistics on planted reference grids, the verdict rule, and
an untrained net that must never be reported as having learned claims 2-4."""

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from convdissect.analysis.activations import record
from convdissect.analysis.contributions import blank_image, contributions, signed_contributions
from convdissect.analysis.families import line_kernels
from convdissect.analysis.fits import grid_statistics, reference_grids
from convdissect.data.mnist import MNISTDataModule
from convdissect.dissect.claims import STATISTICS, claim_statistics, verdict
from convdissect.dissect.labels import describe
from convdissect.dissect.measure import measure
from convdissect.dissection import untrained_like
from convdissect.models.simple_convnet import SimpleConvNet

COPY, INHIBITED, BACKGROUND = 0, 1, 2  # conv1 channels of the trap net (0-based)


def line(theta_deg, amplitude=1.0):
    return line_kernels(torch.tensor(math.radians(theta_deg)), 0.45, 0.0, amplitude)


def trap_net() -> SimpleConvNet:
    """conv1_1 a horizontal line, conv1_2 a vertical one, conv1_3 fires on the blank background
    (zero weights, bias 1: a constant map). conv2_1 is an exact copy of conv1_1 (a centre pixel),
    with a 3x stronger vertical line on conv1_2 that only inhibits it. conv2_2 also copies conv1_1,
    with a large constant grid on conv1_3 that its bias cancels."""
    torch.manual_seed(0)
    net = SimpleConvNet([4, 4, 4, 4])
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.bias.zero_()
        net.conv1.weight[COPY, 0] = line(0, 2.0)
        net.conv1.weight[INHIBITED, 0] = line(90, 2.0)
        net.conv1.bias[BACKGROUND] = 1.0
        net.conv2.weight.zero_()
        net.conv2.bias.zero_()
        net.conv2.weight[0, COPY, 2, 2] = 1.0
        net.conv2.weight[0, INHIBITED] = -line(90, 3.0).abs()
        net.conv2.weight[1, COPY, 2, 2] = 1.0
        net.conv2.weight[1, BACKGROUND] = 0.3
        net.conv2.bias[1] = -0.3 * 25
    return net.eval()


@pytest.fixture(scope="module")
def images(data_dir):
    return MNISTDataModule(data_dir=data_dir).tensors("val", 300)[0]


@pytest.fixture(scope="module")
def trap(images):
    net = trap_net()
    return net, measure(net, images)


def test_the_trap_fools_the_old_sign_blind_strength(trap, images):
    net, _ = trap
    seen = record(net, images, ["conv2"], what="input")["conv2"]
    norms = contributions(net.conv2, seen).flatten(3).norm(dim=3).mean(dim=0)  # ||a_kj||, the old strength
    assert norms[0].argmax() == INHIBITED and norms[1].argmax() == BACKGROUND


def test_an_inhibitor_with_the_largest_norm_is_not_named_the_driver(trap):
    net, m = trap
    unit = describe(net, m)["units"][4]  # conv2_1
    assert unit["drivers"][0]["input"] == "conv1_1" and unit["drivers"][0]["share"] == pytest.approx(1.0)
    assert [i["input"] for i in unit["inhibitors"]] == ["conv1_2"]
    assert unit["label"].index("conv1_1") < unit["label"].index("inhibited by conv1_2")


def test_a_constant_background_input_is_not_named(trap):
    net, m = trap
    unit = describe(net, m)["units"][5]  # conv2_2
    named = [e["input"] for e in unit["drivers"] + unit["inhibitors"]]
    assert named[0] == "conv1_1" and "conv1_3" not in named and "conv1_3" not in unit["label"]


def test_signed_shares_sum_as_documented(images):
    torch.manual_seed(3)
    net = SimpleConvNet([4, 6, 8, 8]).double().eval()
    x = images[:40].double()
    for layer, pool in (("conv2", 2), ("conv3", 3)):
        found = signed_contributions(net, layer, x)
        # output = baseline + sum_j c_kj: the pooled post-ReLU output, computed here by hand
        pooled = F.max_pool2d(record(net, x, [layer])[layer].relu(), pool).sum(dim=(0, 2, 3)) / len(x)
        torch.testing.assert_close(found.output, pooled)
        torch.testing.assert_close(found.baseline + found.mean.sum(dim=1), found.output)
        # c_kj from the per-input maps a_kj (an independent route: depthwise convs, then the pool winners)
        seen = record(net, x, [layer], what="input")[layer]
        blank_seen = record(net, blank_image(x), [layer], what="input")[layer]
        a = contributions(getattr(net, layer), seen) - contributions(getattr(net, layer), blank_seen)
        y = record(net, x, [layer])[layer]
        _, winners = F.max_pool2d(y.relu(), pool, return_indices=True)
        alive = F.max_pool2d(y.relu(), pool) > 0
        picked = a.flatten(3).gather(3, winners.flatten(2)[:, :, None].expand(-1, -1, a.shape[2], -1))
        by_hand = (picked * alive.flatten(2)[:, :, None]).sum(dim=3).mean(dim=0)
        torch.testing.assert_close(found.mean, by_hand)
        live = found.drive.sum(dim=1) > 0
        torch.testing.assert_close(found.drive.sum(dim=1)[live], torch.ones(int(live.sum()), dtype=torch.float64))
        inhibited = found.inhibition.sum(dim=1) > 0
        torch.testing.assert_close(
            found.inhibition.sum(dim=1)[inhibited], torch.ones(int(inhibited.sum()), dtype=torch.float64)
        )


def test_reference_bursts_and_strokes_are_classified_right():
    stats = {family: grid_statistics(grids) for family, grids in reference_grids(200, seed=1).items()}
    for family in ("single_burst", "double_burst"):
        assert stats[family].burst_like.float().mean() > 0.95, family
        assert stats[family].kurtosis.median() > 5
    for family in ("line", "stroke"):
        assert stats[family].burst_like.float().mean() < 0.02, family
        assert stats[family].neighbour_corr.median() > 0.3
    assert stats["noise"].burst_like.float().mean() < 0.1
    assert abs(float(stats["noise"].neighbour_corr.median())) < 0.1


def test_the_verdict_rule():
    assert verdict([0.5], [0.1], intervals=[(0.3, 0.5)]) == "supported"
    assert verdict([0.5], [0.1], intervals=[(-0.1, 0.9)]) == "not supported"  # the bootstrap interval is wider
    assert verdict([0.5], [0.1], null_spreads=[0.5]) == "not supported"  # the null's own spread is wider
    assert verdict([0.1], [0.5], intervals=[(-0.5, -0.3)]) == "reversed"
    assert verdict([0.1], [0.5], direction=-1, intervals=[(-0.5, -0.3)]) == "supported"
    assert verdict([0.55, 0.6, 0.5], [0.3, 0.3, 0.3]) == "supported"  # d = 0.25 > 2 sd over seeds = 0.1
    assert verdict([0.9, 0.2, 0.4], [0.3, 0.3, 0.3]) == "not supported"  # the seeds spread too much
    assert verdict([float("nan")], [0.1]) == "not measured"


@pytest.mark.slow
def test_twenty_untrained_nets_are_never_reported_as_having_learned(images, data_dir, one_thread):
    """Each untrained net judged against 8 others, as dissect judges a trained one: no statistic
    "learned: supported", and no noise reference beaten ("holds: supported" against noise)."""
    settings = OmegaConf.create(
        {
            "statistics": "all",
            "untrained_seeds": 8,
            "bootstrap": 500,
            "reference_grids": 100,
            "shuffles": 50,
            "ablation_draws": 3,
        }
    )
    template = SimpleConvNet([8, 16, 24, 16])
    nulls = [measure(untrained_like(template, 1000 + i), images, False, programs=False) for i in range(8)]
    learned, beats_noise = [], []
    for seed in range(11, 31):
        claims = claim_statistics(
            measure(untrained_like(template, seed), images, False, programs=False), nulls, settings, seed
        )
        assert {name for name in STATISTICS if not name.startswith("ablation")} == set(claims)
        learned += [(seed, name) for name, c in claims.items() if c["learned"] == "supported"]
        beats_noise += [
            (seed, name)
            for name, c in claims.items()
            if STATISTICS[name].holds_null == "reference" and c["holds"] == "supported"
        ]
    assert learned == [] and beats_noise == []
