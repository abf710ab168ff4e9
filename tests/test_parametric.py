"""The parametric line/burst families, their fits, and the shared conventions."""

import math

import numpy as np
import pytest
import torch

from convdissect.analysis.families import burst_grids, line_kernels
from convdissect.analysis.fits import find_bursts, fit_lines, peak_energy_share
from convdissect.conventions import (
    clock_from_xy,
    edge_side,
    format_burst,
    parse_clock,
    parse_unit_name,
    stroke_label,
    unit_name,
    xy_from_clock,
)

PLANTED_ANGLES = [0, 20, 45, 90, 110, 135, 179]


def angle_gap(a, b):
    """Distance between two stroke angles in degrees, period 180."""
    gap = abs(a - b) % 180.0
    return min(gap, 180.0 - gap)


def kernel(theta_deg, sigma=0.45, offset=0.0, amplitude=1.0, kind="line"):
    return line_kernels(torch.tensor(math.radians(theta_deg)), sigma, offset, amplitude, kind)


@pytest.mark.parametrize("kind", ["line", "edge"])
def test_kernel_equals_hand_computed_grid(kind):
    theta, sigma, offset, amplitude = math.radians(30), 0.4, 0.2, -1.5
    u = np.tile(np.linspace(-1, 1, 5), (5, 1))
    v = np.tile(np.linspace(1, -1, 5)[:, None], (1, 5))  # row 0 is the top: v = +1
    d = -u * np.sin(theta) + v * np.cos(theta) - offset
    profile = np.exp(-(d**2) / (2 * sigma**2))
    if kind == "edge":
        profile = d * profile
    profile = profile - profile.mean()
    expected = amplitude * profile / np.linalg.norm(profile)
    got = line_kernels(torch.tensor(theta), sigma, offset, amplitude, kind)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_kernel_orientation_on_the_grid():
    horizontal, vertical = kernel(0), kernel(90)
    assert horizontal[2].sum() > 0 and horizontal[2].sum() > horizontal[0].sum()  # bright middle row
    assert vertical[:, 2].sum() > vertical[:, 0].sum()  # bright middle column
    diagonal = kernel(45)  # "/": bright from bottom-left to top-right
    assert diagonal[4, 0] > diagonal[0, 0] and diagonal[0, 4] > diagonal[4, 4]


def test_kernels_batched_zero_mean_with_norm_amplitude():
    theta = torch.rand(3, 4) * math.pi
    grids = line_kernels(theta, 0.5, 0.1, torch.tensor([1.0, -2.0, 0.5, 3.0]), "edge")
    assert grids.shape == (3, 4, 5, 5)
    assert grids.mean(dim=(-2, -1)).abs().max() < 1e-5
    torch.testing.assert_close(grids.flatten(-2).norm(dim=-1), torch.tensor([1.0, 2.0, 0.5, 3.0]).expand(3, 4))


def test_zero_norm_profile_is_guarded():
    # a razor-thin line far off the grid is zero everywhere: no NaN
    assert torch.isfinite(line_kernels(0.0, 0.01, 5.0, 1.0)).all()


@pytest.mark.parametrize("kind", ["line", "edge"])
def test_fit_recovers_planted_angle_and_kind(kind):
    planted = torch.stack([kernel(a, sigma=0.38, offset=0.1, amplitude=2.0, kind=kind) for a in PLANTED_ANGLES])
    fit = fit_lines(planted)
    for angle, fitted in zip(PLANTED_ANGLES, fit.theta_deg.tolist()):
        assert angle_gap(angle, fitted) < 5, (angle, fitted)
        assert 0 <= fitted < 180
    assert fit.kind == [kind] * len(PLANTED_ANGLES)
    assert (fit.r2 > 0.99).all()
    torch.testing.assert_close(fit.amplitude.abs(), torch.full((7,), 2.0), atol=0.05, rtol=0)


def test_fit_dark_line_has_negative_amplitude():
    fit = fit_lines(torch.stack([kernel(90, amplitude=1.0), kernel(90, amplitude=-1.0)]))
    assert fit.amplitude[0] > 0 > fit.amplitude[1]
    assert fit.labels() == ["vertical line", "dark vertical line"]
    assert fit.side == [None, None]


@pytest.mark.parametrize("angle", PLANTED_ANGLES)
def test_opposite_edges_get_opposite_sides(angle):
    grids = torch.stack(
        [kernel(angle, kind="edge"), kernel(angle, amplitude=-1.0, kind="edge"), kernel(angle + 180, kind="edge")]
    )
    fit = fit_lines(grids)
    assert fit.kind == ["edge"] * 3
    assert fit.side[0] != fit.side[1]
    assert fit.side[1] == fit.side[2]  # θ + 180° is the same as flipping the amplitude
    assert fit.side[0] == edge_side(angle, +1.0)


def test_vertical_edge_side_follows_the_design():
    # positive lobe RIGHT of the centre line -> fires on the left boundary of a bright stroke
    right_lobe = torch.zeros(5, 5)
    right_lobe[:, 3:] = 1.0
    right_lobe[:, :2] = -1.0
    fit = fit_lines(right_lobe[None])
    assert fit.kind == ["edge"] and fit.side == ["left"]
    assert fit.labels() == ["left side of a vertical line"]
    below = right_lobe.T  # positive lobe in rows 3-4: below a horizontal centre line
    assert fit_lines(below[None]).labels() == ["upper side of a horizontal line"]


def test_edge_side_words_per_orientation():
    assert {edge_side(0, 1), edge_side(0, -1)} == {"upper", "lower"}
    assert {edge_side(90, 1), edge_side(90, -1)} == {"left", "right"}
    assert {edge_side(45, 1), edge_side(45, -1)} == {"upper-left", "lower-right"}
    assert {edge_side(135, 1), edge_side(135, -1)} == {"upper-right", "lower-left"}
    assert edge_side(0, 1) == "lower"  # positive lobe above (normal points up), dark lobe below


def test_labels():
    assert stroke_label("line", 0, 1) == "horizontal line"
    assert stroke_label("line", 178, 1) == "horizontal line"
    assert stroke_label("line", 20, 1) == "line at 20° (slope 0.36)"
    assert stroke_label("edge", 92, -1) == "left side of a vertical line"
    with pytest.raises(ValueError, match="kind"):
        stroke_label("blob", 0, 1)


def test_r2_high_for_planted_with_noise_low_for_noise():
    gen = torch.Generator().manual_seed(0)
    planted = torch.stack([kernel(a, sigma=0.5, offset=-0.15) for a in PLANTED_ANGLES])
    noisy = planted + 0.03 * torch.randn(planted.shape, generator=gen)
    assert (fit_lines(noisy).r2 > 0.95).all()
    noise = fit_lines(torch.randn(200, 5, 5, generator=gen))
    assert noise.r2.mean() < 0.6


def test_fitted_kernels_reconstruct_the_planted_ones():
    planted = torch.stack([kernel(33, sigma=0.6, offset=0.3, amplitude=-1.2), kernel(120, kind="edge")])
    torch.testing.assert_close(fit_lines(planted).kernels(), planted, atol=0.05, rtol=0)


def test_fit_on_all_conv3_grids_of_a_full_net_gives_noise_its_reference_r2():
    grids = torch.randn(128 * 64, 5, 5, generator=torch.Generator().manual_seed(1))
    fit = fit_lines(grids)
    assert len(fit) == 128 * 64
    # docs/measures.md: Gaussian noise grids fit a line with median R² about 0.32 (before refinement)
    assert 0.25 < float(fit.r2.median()) < 0.45


def test_gradients_reach_every_parameter():
    for kind in ("line", "edge"):
        params = [
            torch.tensor([0.3, 1.2]),
            torch.tensor([0.4, 0.7]),
            torch.tensor([0.1, -0.2]),
            torch.tensor([1.0, -0.5]),
        ]
        params = [p.requires_grad_() for p in params]
        grids = line_kernels(*params, kind=kind)
        (grids * torch.randn(grids.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        assert all(p.grad is not None and (p.grad != 0).all() for p in params), kind
    params = [
        torch.tensor([[0.5, -1.0]]),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[0.8, 1.1]]),
        torch.tensor([[0.9, 0.6]]),
        torch.tensor([[1.0, -0.7]]),
    ]
    params = [p.requires_grad_() for p in params]
    grids = burst_grids(*params)
    assert grids.shape == (1, 5, 5)
    (grids * torch.randn(grids.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    assert all(p.grad is not None and (p.grad != 0).all() for p in params)


def test_burst_grid_geometry():
    grid = burst_grids(torch.tensor([-2.0]), torch.tensor([1.0]), 0.5, 0.5, torch.tensor([-3.0]))
    row, col = divmod(int(grid.abs().argmax()), 5)
    assert (row, col) == (1, 0)  # x = -2 is the left column, y = +1 the row above the centre
    assert grid[row, col] == pytest.approx(-3.0)


def test_find_bursts_recovers_planted_bursts():
    grid = burst_grids(torch.tensor([-2.0, 2.0]), torch.tensor([-2.0, 0.0]), 0.6, 0.6, torch.tensor([1.0, -0.8]))
    bursts = find_bursts(grid)
    assert [str(b) for b in bursts] == ["+[7:30, 2√2]", "-[3:00, 2]"]
    assert (bursts[0].clock, bursts[0].distance) == ("7:30", pytest.approx(2 * math.sqrt(2)))
    assert bursts[1].amplitude == pytest.approx(-0.8, abs=1e-3)
    batched = find_bursts(torch.stack([grid, -grid]), rel_threshold=0.9)
    assert [[str(b) for b in one] for one in batched] == [["+[7:30, 2√2]"], ["-[7:30, 2√2]"]]


def test_peak_energy_share():
    burst = torch.zeros(5, 5)
    burst[1, 3] = -2.0
    shares = peak_energy_share(torch.stack([burst, torch.ones(5, 5)]))
    torch.testing.assert_close(shares, torch.tensor([1.0, 2 / 25]))


# ---------------------------------------------------------------------------- clock notation


@pytest.mark.parametrize("distance", [1.0, math.sqrt(2), 2.0, 2 * math.sqrt(2), 1.7])
def test_clock_round_trips_all_half_hours(distance):
    for half_hours in range(24):
        hour, half = divmod(half_hours, 2)
        clock = f"{hour or 12}:{'30' if half else '00'}"
        x, y = xy_from_clock(clock, distance)
        assert clock_from_xy(x, y) == (clock, pytest.approx(distance))


def test_clock_directions():
    assert xy_from_clock("12:00", 2) == pytest.approx((0, 2))
    assert xy_from_clock("3", 2) == pytest.approx((2, 0))
    assert xy_from_clock("6:00", 1) == pytest.approx((0, -1))
    assert xy_from_clock(9, 1) == pytest.approx((-1, 0))
    assert clock_from_xy(-2, -2)[0] == "7:30"
    assert clock_from_xy(0.0, 0.0) == ("centre", 0.0)
    assert xy_from_clock("centre", 0) == (0.0, 0.0)
    assert parse_clock("7:30") == 7.5 and parse_clock("12") == 0.0


def test_format_burst():
    assert format_burst(1, "7:30", 2 * math.sqrt(2)) == "+[7:30, 2√2]"
    assert format_burst(-1, "1:30", math.sqrt(2)) == "-[1:30, √2]"
    assert format_burst(1, "3:00", 2.0) == "+[3:00, 2]"
    assert format_burst(1, "1:00", math.sqrt(5)) == "+[1:00, 2.2]"
    assert format_burst(-1, "centre", 0.0) == "-[centre]"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("13:00", "13:00.*hour must be 1..12"),
        ("10:15", "10:15.*minutes must be 00 or 30"),
        ("0:30", "hour"),
        ("ten", "'ten'.*expected"),
        (630, "630.*10:30.*quote"),
        (450, "7:30"),
        (7.5, "7.5"),
        (True, "True"),
    ],
)
def test_bad_clock_values_raise_clear_errors(value, message):
    with pytest.raises(ValueError, match=message):
        parse_clock(value)
    with pytest.raises(ValueError):
        xy_from_clock(value, 1.0)


def test_unit_names_are_one_based():
    assert unit_name("conv2", 3) == "conv2_3"
    assert parse_unit_name("conv2_3") == ("conv2", 3)
    assert parse_unit_name(unit_name("fc4", 12)) == ("fc4", 12)
    for bad in ("conv2", "conv2_0", "conv2_x"):
        with pytest.raises(ValueError, match=bad):
            parse_unit_name(bad)
    with pytest.raises(ValueError, match="1-based"):
        unit_name("conv1", 0)
