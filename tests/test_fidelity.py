"""Labels that execute: a label's program run as a unit, scored against the real unit, checked against
hand-written references (a loop over the mean-ablated inputs; planted units whose program is known)."""

import math

import pytest
import torch
import torch.nn.functional as F

from convdissect.analysis.families import burst_grids
from convdissect.analysis.fidelity import centred_r, label_fidelity, prefix_fidelity, record_layer
from convdissect.analysis.unit_programs import connected_bursts
from convdissect.conventions import xy_from_clock
from convdissect.dissect.programs import label_net, layer_programs
from convdissect.models.simple_convnet import SimpleConvNet


def images(n: int, seed: int) -> torch.Tensor:
    """Stroke-like random images: blurred sparse noise, normalised like MNIST."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 1, 28, 28, generator=g) < 0.08).float()
    x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, 1).clamp_max(1.0)
    return (x - 0.1307) / 0.3081


def conv2_inputs(net: SimpleConvNet, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.max_pool2d(F.relu(net.conv1(images)), 2).double()


def r_on(net: SimpleConvNet, k: int, seen: torch.Tensor, ablated: torch.Tensor, kept: list[int]) -> float:
    """conv2 unit k run on `ablated` inputs with the inputs `kept` put back from `seen`; relu, max-pool 2,
    then Pearson r with the real unit, each cell's mean over the images removed."""
    ablated = ablated.clone()
    ablated[:, kept] = seen[:, kept]
    with torch.no_grad():
        w, b = net.conv2.weight[k : k + 1].double(), net.conv2.bias[k : k + 1].double()
        simulated = F.max_pool2d(F.relu(F.conv2d(ablated, w, b, padding=2)), 2)[:, 0].flatten(1)
        real = F.max_pool2d(F.relu(F.conv2d(seen, w, b, padding=2)), 2)[:, 0].flatten(1)
    s, r = simulated - simulated.mean(dim=0), real - real.mean(dim=0)
    return float((s * r).sum() / math.sqrt(float((s * s).sum() * (r * r).sum())))


def by_hand(net: SimpleConvNet, fit: torch.Tensor, scored: torch.Tensor, k: int, kept: list[int]) -> float:
    """Every input not kept replaced by its mean map over the fit images."""
    seen = conv2_inputs(net, scored)
    return r_on(net, k, seen, conv2_inputs(net, fit).mean(dim=0).expand_as(seen), kept)


def input_masks(kept_sets: list[list[int]]) -> torch.Tensor:
    masks = torch.zeros(len(kept_sets), 6, 5, 5)
    for m, kept in enumerate(kept_sets):
        masks[m, kept] = 1.0
    return masks


def test_fidelity_agrees_with_a_hand_written_loop():
    torch.manual_seed(0)
    net = SimpleConvNet([6, 5, 4, 4]).eval()
    fit, scored = images(60, 1), images(80, 2)
    _, rec = record_layer(net, "conv2", fit, scored)
    kept_sets = [[0], [2, 4], [0, 1, 3, 5]]
    masks = input_masks(kept_sets)
    for k in range(5):
        ours = label_fidelity(rec, k, masks)
        for m, kept in enumerate(kept_sets):
            assert float(ours[m]) == pytest.approx(by_hand(net, fit, scored, k, kept), abs=1e-4)


def resampled_by_hand(net: SimpleConvNet, scored: torch.Tensor, k: int, kept: list[int]) -> float:
    """Composite inputs: every input not kept from the image's partner (a seeded shuffle, each image
    read by the one before it)."""
    seen = conv2_inputs(net, scored)
    order = torch.randperm(len(seen), generator=torch.Generator().manual_seed(0)).tolist()
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    return r_on(net, k, seen, torch.stack([seen[partner[n]] for n in range(len(seen))]), kept)


def test_resample_ablation_agrees_with_composite_inputs_built_by_hand():
    torch.manual_seed(0)
    net = SimpleConvNet([6, 5, 4, 4]).eval()
    fit, scored = images(60, 1), images(80, 2)
    _, resampled = record_layer(net, "conv2", fit, scored, ablation="resample")
    _, averaged = record_layer(net, "conv2", fit, scored)
    kept_sets = [[0], [2, 4], [0, 1, 3, 5], list(range(6))]
    masks = input_masks(kept_sets)
    for k in range(5):
        ours = label_fidelity(resampled, k, masks)
        for m, kept in enumerate(kept_sets):
            assert float(ours[m]) == pytest.approx(resampled_by_hand(net, scored, k, kept), abs=1e-4)
        assert float(ours[-1]) == pytest.approx(1.0, abs=1e-5)  # the whole program is the unit either way
        assert not torch.allclose(ours[:-1], label_fidelity(averaged, k, masks)[:-1])  # another reference


def test_the_whole_program_is_the_unit_and_the_empty_label_scores_zero():
    torch.manual_seed(1)
    net = SimpleConvNet([6, 5, 4, 4]).eval()
    _, rec = record_layer(net, "conv3", images(60, 3), images(60, 4))
    everything = torch.ones(1, 5, 5, 5)
    nothing = torch.zeros(1, 5, 5, 5)
    varies = rec.real.std(dim=0).flatten(1).amax(dim=1) > 0
    assert varies.sum() >= 2
    for k in range(4):
        if not varies[k]:  # a unit that never varies has nothing to reproduce
            assert label_fidelity(rec, k, everything).isnan().all()
            continue
        assert float(label_fidelity(rec, k, everything)[0]) == pytest.approx(1.0, abs=1e-5)
        assert float(label_fidelity(rec, k, nothing)[0]) == 0.0
    # growing a label term by term ends at the whole unit
    k = int(varies.nonzero()[0])
    curve = prefix_fidelity(rec, k, torch.eye(5)[:, :, None, None].expand(5, 5, 5, 5).clone())
    assert float(curve[-1]) == pytest.approx(1.0, abs=1e-5)


def test_centred_r_gives_no_credit_for_the_mean_spatial_pattern():
    g = torch.Generator().manual_seed(0)
    pattern = torch.arange(9.0).view(3, 3)
    real = pattern + 0.1 * torch.randn(200, 3, 3, generator=g)
    same_mean_only = pattern.expand(200, 1, 3, 3).clone() + 0.1 * torch.randn(200, 1, 3, 3, generator=g)
    assert abs(float(centred_r(same_mean_only, real)[0])) < 0.2  # raw r would be ~0.99
    assert float(centred_r(real[:, None], real)[0]) == pytest.approx(1.0)


def test_connected_bursts_split_a_grid_by_sign_and_contact():
    grid = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, -1.0], [2.0, 0.0, -1.0]])
    bursts = connected_bursts(grid)
    assert sorted(int(b.sum()) for b in bursts) == [1, 2, 2]
    assert torch.stack(bursts).sum(dim=0).bool().equal(grid != 0)


def planted_excitatory_and_inhibitory() -> SimpleConvNet:
    """conv3_1: +1 at 12 o'clock and -3 at 6 o'clock on conv2_1, which copies conv1_1 (a blob detector):
    the unit fires through the weak excitatory burst; the strong inhibitory one only lowers it."""
    torch.manual_seed(0)
    net = SimpleConvNet([2, 2, 2, 2]).eval()
    with torch.no_grad():
        net.conv1.weight.zero_()
        net.conv1.weight[0, 0, 2, 2] = 1.0
        net.conv1.bias.zero_()
        net.conv2.weight.zero_()
        net.conv2.weight[0, 0, 2, 2] = 1.0
        net.conv2.bias.zero_()
        (x1, y1), (x2, y2) = xy_from_clock("12:00", 2.0), xy_from_clock("6:00", 2.0)
        net.conv3.weight.zero_()
        net.conv3.weight[0, 0] = burst_grids(
            torch.tensor([x1, x2]), torch.tensor([y1, y2]), 0.4, 0.4, torch.tensor([1.0, -3.0])
        )
        net.conv3.bias.zero_()
    return net


def test_an_excitatory_burst_three_times_weaker_is_named_first():
    net = planted_excitatory_and_inhibitory()
    fit, scored = images(300, 5), images(300, 6)
    programs = layer_programs(net, "conv3", fit, scored)
    first = programs.units[0].terms[0]
    weight = net.conv3.weight.detach()[0, first.input]
    assert first.input == 0 and float(weight[first.cells].sum()) > 0  # the + burst, though |−3| > |+1|
    assert first.cells[0, 2]  # at 12 o'clock: the top row's centre


def test_a_grid_with_one_weight_on_every_cell_is_read_anywhere():
    from convdissect.dissect.labels import describe
    from convdissect.dissect.measure import measure

    torch.manual_seed(4)
    net = SimpleConvNet([2, 2, 2, 2]).eval()
    with torch.no_grad():
        net.conv3.weight[0] = 0.0
        net.conv3.weight[0, 0] = 0.3  # the same weight on all 25 cells: a stroke anywhere
        net.conv3.bias[0] = 0.0
    units = {u["name"]: u for u in describe(net, measure(net, images(200, 11), scored_images=images(200, 12)))["units"]}
    burst = units["conv3_1"]["bursts"][0]
    assert burst["anywhere"] and burst["cells"] == 25 and burst["notation"] == "+[anywhere]"
    assert " anywhere" in units["conv3_1"]["label"] and "o'clock" not in units["conv3_1"]["label"]


def test_the_label_net_with_every_term_is_the_net():
    torch.manual_seed(2)
    net = SimpleConvNet([4, 5, 6, 4]).eval()
    fit, scored = images(60, 7), images(60, 8)
    programs = {layer: layer_programs(net, layer, fit, scored) for layer in ("conv2", "conv3")}
    full = label_net(net, programs, terms=10_000)
    with torch.no_grad():
        assert torch.allclose(full(scored), net(scored), atol=1e-4)
        empty = label_net(net, programs, terms=0)(scored)
    assert empty.std(dim=0).max() < 1e-4  # every input at its mean map: one output for every image


def test_dead_constant_and_blob_units_are_named_as_such():
    from convdissect.dissect.labels import describe
    from convdissect.dissect.measure import measure

    torch.manual_seed(3)
    net = SimpleConvNet([4, 4, 4, 4]).eval()
    a = torch.arange(5.0) - 2
    r2 = a[:, None] ** 2 + a[None] ** 2
    with torch.no_grad():
        net.conv1.weight[0] = 0.0  # dead: all-zero kernel, no bias
        net.conv1.bias[0] = 0.0
        net.conv1.weight[1, 0] = torch.exp(-r2 / 2) - 0.3 * torch.exp(-r2 / 8)  # centre-surround blob
        net.conv2.weight[0] = 0.0  # constant: outputs its bias, 1.0, on every image
        net.conv2.bias[0] = 1.0
        net.conv3.weight[0] = 0.0  # silent: never fires
        net.conv3.bias[0] = -1.0
    units = {u["name"]: u for u in describe(net, measure(net, images(200, 9), scored_images=images(200, 10)))["units"]}
    assert units["conv1_1"]["label"] == "silent on the images" and units["conv1_1"]["fidelity"] is None
    assert units["conv1_2"]["label"].startswith("unoriented (blob)") and units["conv1_2"]["oriented"] is False
    assert units["conv2_1"]["label"] == "constant on the images" and units["conv2_1"]["activity"] == "constant"
    assert units["conv3_1"]["label"] == "silent on the images" and units["conv3_1"]["activity"] == "silent"
    assert all(u["oriented"] for name, u in units.items() if name in ("conv1_3", "conv1_4"))  # random init: oriented


def test_an_fc4_unit_planted_as_a_digit_template_prefers_that_digit():
    from convdissect.dissect.labels import describe
    from convdissect.dissect.measure import measure

    torch.manual_seed(4)
    net = SimpleConvNet([4, 4, 6, 4]).eval()
    x = images(300, 11)
    digits = torch.arange(300) % 10
    planted = 7
    with torch.no_grad():
        features = net.features(x)
        template = features[digits == planted].mean(dim=0) - features.mean(dim=0)
        net.fc4.weight[0] = template / template.norm()
        net.fc4.bias[0] = -float(net.fc4.weight[0] @ features.mean(dim=0))  # fires above the average image
        # the reference: mean ReLU'd output per digit by a plain loop, and (max - mean rest) / (max + mean rest)
        outputs = net.fc4(features)[:, 0].relu()
        per_digit = torch.stack([outputs[digits == d].mean() for d in range(10)])
    best = int(per_digit.argmax())
    rest = (per_digit.sum() - per_digit[best]) / 9
    units = {
        u["name"]: u for u in describe(net, measure(net, x, scored_images=images(100, 12), digits=digits))["units"]
    }
    fc4_1 = units["fc4_1"]
    assert best == planted and fc4_1["preferred_digits"][0] == planted
    assert fc4_1["class_selectivity"] == pytest.approx(
        float((per_digit[best] - rest) / (per_digit[best] + rest)), abs=1e-3
    )
    assert f"prefers digits {planted}" in fc4_1["label"]
