"""dissect.py end to end, checkpoint loading and its errors, and the measurement library."""

import json

import pytest
import torch

from convdissect import tables
from convdissect.analysis.activations import channel_responses, record, top_k
from convdissect.analysis.contributions import inner_contributions, signed_contributions
from convdissect.analysis.selectivity import class_means, omega_squared, selectivity_index, tuning_peaks
from convdissect.analysis.superstimuli import channel_objective, superstimuli
from convdissect.cli import run_dissect
from convdissect.data.mnist import MNISTDataModule
from convdissect.dissection import dissect
from convdissect.errors import UserInputError
from convdissect.models.checkpoint import load_any_net, load_net
from convdissect.models.simple_convnet import SimpleConvNet
from tests.helpers import CHECKOUT, FAST_NULLS, compose_cfg, run_python

DISSECT_FAST = ["n_images=200", "superstimulus.steps=8", *FAST_NULLS]


@pytest.fixture(scope="module")
def trained(tiny_run):
    """A tiny real training run: its Lightning checkpoint and plain state_dict."""
    return tiny_run[0]


@pytest.fixture(scope="module")
def images(data_dir):
    return MNISTDataModule(data_dir=data_dir).tensors("val", 300)


def run_cli(*args):
    return run_python("dissect.py", *args, timeout=300)


@pytest.mark.slow
def test_cli_on_a_lightning_checkpoint(trained, data_dir, tmp_path):
    # no report: two thirds of the dissection's time, and test_report.py checks it
    proc = run_cli(
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path}",
        *DISSECT_FAST,
        "report.enabled=false",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert labels["net"] == "simple_convnet" and labels["widths"] == [4, 8, 8, 8]
    assert [u["name"] for u in labels["units"]] == [
        f"{layer}_{i}" for layer, n in (("conv1", 4), ("conv2", 8), ("conv3", 8), ("fc4", 8)) for i in range(1, n + 1)
    ]
    conv1, conv2, conv3 = labels["units"][0], labels["units"][4], labels["units"][12]
    assert {"orientation_deg", "kind", "side", "fit_r2", "secondary_orientation_deg"} <= set(conv1)
    assert {"drivers", "inhibitors", "copies_input"} <= set(conv2)
    assert all(d["input"].startswith("conv1_") and 0 < d["share"] <= 1 for d in conv2["drivers"] + conv2["inhibitors"])
    assert {"bursts", "drivers", "inhibitors", "position_index", "pattern_index", "interaction_index"} <= set(conv3)
    claims = json.loads((tmp_path / "claims.json").read_text())
    assert {"conv2_top_share", "ablation_top1", "conv3_interaction_omega2"} <= set(claims)
    statistics = {
        name: c for name, c in claims.items() if name not in ("fidelity", "label_net", "class_selectivity", "settings")
    }
    assert all(c["holds"] in ("supported", "not supported", "reversed") for c in statistics.values())
    assert set(claims["fidelity"]) == {"conv1", "conv2", "conv3", "fc4"}
    assert {"median", "shuffled", "untrained", "median_terms_for_r90", "curve"} <= set(claims["fidelity"]["conv2"])
    assert 0 <= claims["label_net"]["printed"]["agreement"] <= 1
    table = tables.render(["fidelity", str(tmp_path)])
    assert (
        f"| conv2 | {claims['fidelity']['conv2']['median']:.2f} | {claims['fidelity']['conv2']['shuffled']:.2f} |"
        in table
    )
    # the label net on the HandNet frontier: with every term it reads every parameter but conv1's,
    # whose labels are 5 numbers per line/edge term, 1 for the brightness, and a bias
    plot = tmp_path / "frontier.png"
    frontier = tables.render(
        [
            "frontier",
            "--stored",
            str(CHECKOUT / "docs/results/frontier.json"),
            "--label-net",
            str(tmp_path),
            "--plot",
            str(plot),
        ]
    )
    net = load_net(trained / "model_state.pt")
    every_parameter = sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in net.conv1.parameters())
    labels = json.loads((tmp_path / "labels.json").read_text())
    conv1 = [u["terms"] for u in labels["units"] if u["layer"] == "conv1"]
    conv1_numbers = sum(sum((5, 1, 5)[:terms]) + 1 for terms in conv1)
    assert claims["label_net"]["all"]["numbers"] == every_parameter + conv1_numbers
    assert (
        f"| all | {100 * claims['label_net']['all']['accuracy']:.2f} | {every_parameter + conv1_numbers} |" in frontier
    )
    assert plot.stat().st_size > 10_000
    assert claims["class_selectivity"]["fc4"]["median"] >= 0
    # each unit's superstimulus next to the best dissection image on the same objective, here
    # conv1's by hand: the mean over positions of its leaky-ReLU'd map, the largest over the images
    dissected, _ = MNISTDataModule(data_dir=data_dir).tensors("val", 200)
    with torch.no_grad():
        best = torch.nn.functional.leaky_relu(net.conv1(dissected), 0.01).mean(dim=(2, 3)).amax(dim=0)
    conv1_units = [u for u in labels["units"] if u["layer"] == "conv1"]
    assert [u["best_image_objective"] for u in conv1_units] == pytest.approx(best.tolist(), abs=1e-3)
    assert all("superstimulus_objective" in u for u in labels["units"] if u["layer"] in ("conv2", "conv3"))
    assert all(u["label"].endswith(")") and "fidelity" in u for u in labels["units"] if u["activity"] == "varies")
    assert all(b["input"].startswith("conv2_") for u in labels["units"][12:20] for b in u["bursts"])
    stimuli = torch.load(tmp_path / "superstimuli.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in stimuli.items()} == {
        "conv1": (4, 1, 28, 28),
        "conv2": (8, 1, 28, 28),
        "conv3": (8, 1, 28, 28),
        "fc5": (10, 1, 28, 28),
    }
    assert stimuli["conv1"].min() >= 0 and stimuli["conv1"].max() <= 1


@pytest.mark.slow
def test_plain_state_dict_without_conv2_is_the_no_conv2_variant(tmp_path):
    torch.manual_seed(0)
    torch.save(SimpleConvNet([4, 6, 8], conv2=False).state_dict(), tmp_path / "no_conv2.pt")
    cfg = compose_cfg(
        "dissect",
        [
            f"ckpt_path={tmp_path / 'no_conv2.pt'}",
            "superstimulus.enabled=false",
            "report.enabled=false",  # the no_conv2 variant's report: test_report.py
            "n_images=100",
            *FAST_NULLS,
        ],
        tmp_path,
    )
    labels = dissect(cfg)
    assert labels == json.loads((tmp_path / "labels.json").read_text())
    assert labels["widths"] == [4, 6, 8]
    assert [u["layer"] for u in labels["units"]] == ["conv1"] * 4 + ["conv3"] * 6 + ["fc4"] * 8
    assert all(b["input"].startswith("conv1_") for u in labels["units"][4:10] for b in u["bursts"])
    assert any(u["bursts"] for u in labels["units"][4:10])
    assert all(d["input"].startswith("conv3_") for u in labels["units"][10:] for d in u["drivers"])


@pytest.mark.slow
def test_lightning_checkpoint_and_state_dict_give_the_same_net(trained):
    from_ckpt = load_net(trained / "checkpoints" / "last.ckpt")
    from_pt = load_net(trained / "model_state.pt")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert from_ckpt.widths == [4, 8, 8, 8] and not from_ckpt.training
        torch.testing.assert_close(from_ckpt(x), from_pt(x))  # last.ckpt is the last epoch's weights


class RunsCode:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"conv1.weight": RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserInputError, match=r"evil\.pt: refused.*weights_only=True"):
        load_net(tmp_path / "evil.pt")
    with pytest.raises(UserInputError, match=r"^ckpt_path=.*refused"):  # dissect.py's whole path
        run_dissect(compose_cfg("dissect", [f"ckpt_path={tmp_path / 'evil.pt'}"], tmp_path / "run"))
    assert not marker.exists()


def wrong_shapes(path):
    state = SimpleConvNet([4, 8, 8, 8]).state_dict()
    state["conv2.weight"] = torch.zeros(8, 5, 5, 5)  # 5 in channels, conv1 has 4
    torch.save(state, path)


def handnet_like(path):
    torch.save(
        {"conv1.theta": torch.zeros(4), "conv3.mean_x": torch.zeros(8, 4, 2), "readout.weight": torch.zeros(10, 8)},
        path,
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, r"missing\.pt: no such file"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), r"not a readable PyTorch file"),
        (lambda p: torch.save(torch.zeros(3), p), r"holds a Tensor, expected a state_dict"),
        (wrong_shapes, r"wrongly shaped.*conv2\.weight \(8, 5, 5, 5\) \(expected \(8, 4, 5, 5\)\)"),
        (handnet_like, r"a HandNet state_dict without its net spec.*pass the run's Lightning checkpoint"),
    ],
)
def test_bad_checkpoints_are_clear_errors(tmp_path, make, message):
    path = tmp_path / "missing.pt"
    if make:
        make(path)
    with pytest.raises(UserInputError, match=message) as err:
        load_any_net(path)  # dissect.py's loader: a SimpleConvNet or a HandNet
    assert "\n" not in str(err.value)


def test_ckpt_path_is_required(tmp_path):
    with pytest.raises(UserInputError, match="ckpt_path is not set"):
        dissect(compose_cfg("dissect", [], tmp_path))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n_images=0", "n_images=0: must be"),
        ("split=holdout", "split='holdout'"),
        ("superstimulus.layers=[conv9]", r"superstimulus\.layers: \['conv9'\] unknown"),
        ("data.val_size=0", r"data\.val_size=0"),
        (
            "claims.statistics=[conv2_dominance]",
            r"claims\.statistics: \['conv2_dominance'\] unknown; allowed 'all' or a list of",
        ),
        ("claims.untrained_seeds=1", r"claims\.untrained_seeds=1: must be an integer in 2\.\.20"),
        ("claims.bootstrap=10", r"claims\.bootstrap=10: must be an integer in 100\.\.100000"),
        ("claims.ablation_images=0", r"claims\.ablation_images=0: must be a positive integer"),
    ],
)
def test_bad_dissect_settings_are_clear_errors(tmp_path, override, message):
    torch.save(SimpleConvNet([4, 8, 8, 8]).state_dict(), tmp_path / "net.pt")
    cfg = compose_cfg("dissect", [f"ckpt_path={tmp_path / 'net.pt'}", "n_images=50", override], tmp_path)
    with pytest.raises(UserInputError, match=message):
        dissect(cfg)


# ---------------------------------------------------------------------------- the library


def test_hooks_record_inputs_and_outputs():
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8]).eval()
    x = torch.randn(5, 1, 28, 28)
    seen = record(net, x, ["conv2", "fc5"], what="input", batch_size=2)
    out = record(net, x, ["conv1", "fc5"], batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(out["conv1"], net.conv1(x))
        torch.testing.assert_close(seen["conv2"], torch.nn.functional.max_pool2d(net.conv1(x).relu(), 2))
        torch.testing.assert_close(net.fc5(seen["fc5"]), out["fc5"])
    assert not net.conv1._forward_hooks  # hooks removed afterwards


def test_top_k_are_the_strongest_inputs(images):
    net = SimpleConvNet([4, 8, 8, 8]).eval()
    x, _ = images
    indices, values = top_k(net, x, "conv3", k=20)
    resp = channel_responses(net, x, ["conv3"])["conv3"]
    assert indices.shape == (8, 20)
    for c in range(8):
        torch.testing.assert_close(values[c], resp[:, c].sort(descending=True).values[:20])
        torch.testing.assert_close(resp[indices[c], c], values[c])


def test_signed_contributions_find_the_one_input_that_drives_a_channel(images):
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8]).eval()
    with torch.no_grad():
        net.conv2.weight[5] *= 0.01
        net.conv2.weight[5, 2] = net.conv2.weight[5, 2].abs() * 300.0  # conv2_6 is driven by conv1_3
    found = signed_contributions(net, "conv2", images[0])
    assert found.drivers(5)[0][0] == 2 and found.drivers(5)[0][1] > 0.9
    x = images[0][0]
    dissected = inner_contributions(net, "conv2_6", x)
    assert dissected.order[0] == 2 and dissected.a.shape == (4, 14, 14) and dissected.w.shape == (4, 5, 5)


def test_class_means_and_selectivity_index():
    net = SimpleConvNet([4, 8, 8, 8]).eval()
    x, labels = torch.randn(40, 1, 28, 28), torch.arange(40) % 10
    means = class_means(net, x, labels, ["conv1", "fc5"])
    resp = channel_responses(net, x, ["conv1"])["conv1"].relu()
    torch.testing.assert_close(means["conv1"][3], resp[labels == 3].mean(dim=0))
    assert means["fc5"].shape == (10, 10)
    only_one = torch.zeros(10, 3)
    only_one[4, 0] = 2.0
    only_one[:, 1] = 1.0
    only_one[0, 2], only_one[1:, 2] = 3.0, 1.0
    torch.testing.assert_close(selectivity_index(only_one), torch.tensor([1.0, 0.0, 0.5]))


def test_omega_squared_position_pattern_and_interaction_shares():
    position = torch.arange(6.0)[None].expand(4, 6)  # R depends on the position q only
    pattern = torch.arange(4.0)[:, None].expand(4, 6)
    interaction = (torch.arange(4.0)[:, None] - 1.5) * (torch.arange(6.0)[None] - 2.5)  # no main effects
    r = torch.stack([position, pattern, position + pattern, interaction, torch.ones(4, 6)])
    shares = omega_squared(torch.stack([r, r], dim=-1))  # two identical replicates: no error variance
    # additive: var(q) = 35/12 over 0..5, var(p) = 15/12 over 0..3, so the shares are 0.7 and 0.3
    assert shares.position[:4].tolist() == pytest.approx([1.0, 0.0, 0.7, 0.0], abs=1e-6)
    assert shares.pattern[:4].tolist() == pytest.approx([0.0, 1.0, 0.3, 0.0], abs=1e-6)
    assert shares.interaction[:4].tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0], abs=1e-6)
    assert shares.position[4].isnan() and shares.pattern[4].isnan()  # a constant response has no variance to share


def test_omega_squared_is_unbiased_where_eta_squared_was_not():
    # no effect at all, 4 patterns x 100 positions: eta² of position would be 99/399 = 0.248 on average
    noise = torch.randn(4000, 4, 100, 2, generator=torch.Generator().manual_seed(0))
    shares = omega_squared(noise)
    for share in (shares.position, shares.pattern, shares.interaction):
        assert abs(float(share.mean())) < 0.005
    without_replicates = omega_squared(noise[..., 0])
    assert abs(float(without_replicates.position.mean())) < 0.005 and without_replicates.interaction.isnan().all()


def test_tuning_peaks_find_a_real_second_peak_only():
    angles = torch.arange(0.0, 180.0, 5.0)
    rad = torch.deg2rad(angles)
    one = torch.cos(rad - 0.5).square()  # one peak near 29°
    two = torch.exp(-torch.sin(rad - 0.5).square() / 0.1) + 0.5 * torch.exp(-torch.sin(rad - 2.0).square() / 0.1)
    assert tuning_peaks(one, angles) == [30.0]
    peaks = tuning_peaks(two, angles)
    assert len(peaks) == 2 and peaks[0] == 30.0 and abs(peaks[1] - 115.0) <= 5


def test_superstimuli_batched_equal_one_by_one(one_thread):
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8])
    batched = superstimuli(net, "conv2", channels=[3, 5], steps=16, param="pixel", transforms=[], seed=7)
    single = superstimuli(net, "conv2", channels=[3], steps=16, param="pixel", transforms=[], seed=7)
    torch.testing.assert_close(batched.images[0], single.images[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batched.images[0], batched.images[1])


@pytest.mark.parametrize("layer", ["conv2", "fc5"])
def test_each_superstimulus_drives_its_own_channel(layer, one_thread):
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8])
    result = superstimuli(net, layer, steps=64)
    assert result.images.shape[0] == getattr(net, layer).weight.shape[0]
    assert result.images.min() >= 0 and result.images.max() <= 1 and net.training  # its mode restored
    outputs = record(net, (result.images - 0.1307) / 0.3081, [layer])[layer]
    n = len(result.images)
    scores = torch.stack([channel_objective(outputs, torch.full((n,), c)) for c in range(n)], dim=1)  # [image, channel]
    torch.testing.assert_close(scores.diagonal(), result.activation)
    others = (scores.sum(dim=0) - scores.diagonal()) / (n - 1)
    assert (scores.diagonal() > others).all()  # channel c: its own image beats the others on average
    assert (scores.argmax(dim=0) == torch.arange(n)).float().mean() >= 0.6


def test_bad_superstimulus_settings_are_clear_errors():
    net = SimpleConvNet([4, 8, 8, 8])
    with pytest.raises(UserInputError, match="param='wavelet'"):
        superstimuli(net, "conv1", param="wavelet")
    with pytest.raises(UserInputError, match="layer='conv9'"):
        superstimuli(net, "conv9")
    with pytest.raises(UserInputError, match=r"0\.\.3 allowed"):
        superstimuli(net, "conv1", channels=[4])
