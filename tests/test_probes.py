"""Synthetic stroke probes: geometry, normalisation, and agreement with the line family."""

import math

import pytest
import torch
import torch.nn.functional as F

from convdissect.analysis.families import line_kernels
from convdissect.analysis.fits import fit_lines
from convdissect.conventions import edge_side
from convdissect.data.mnist import MNIST_MEAN, MNIST_STD
from convdissect.data.probes import pixel_xy, stroke_images, sweep_positions


def kernel(theta_deg, amplitude=1.0, kind="line", sigma=0.45):
    return line_kernels(torch.tensor(math.radians(theta_deg)), sigma, 0.0, amplitude, kind)


def max_response(images, grid):
    """Strongest valid-convolution response of one 5x5 kernel over the image positions."""
    return F.conv2d(images, grid[None, None]).amax(dim=(-3, -2, -1))


def test_shapes_and_normalisation():
    raw = stroke_images([0, 45, 90], raw=True)
    assert raw.shape == (3, 1, 28, 28)
    assert raw.min() == 0 and raw.max() == 1
    torch.testing.assert_close(stroke_images([0, 45, 90]), (raw - MNIST_MEAN) / MNIST_STD)


def test_stroke_geometry():
    horizontal, vertical = stroke_images([0, 90], thickness=2.0, raw=True)[:, 0]
    assert horizontal[13:15].min() > 0.999 and horizontal[:12].max() < 1e-6 and horizontal[16:].max() < 1e-6
    assert vertical[:, 13:15].min() > 0.999 and vertical[:, :12].max() < 1e-6
    diagonal = stroke_images(45, raw=True)[0, 0]  # "/": through the bottom-left and top-right corners
    assert diagonal[27, 0] == 1 and diagonal[0, 27] == 1 and diagonal[0, 0] == 0
    shifted = stroke_images(0, offset=5.0, raw=True)[0, 0]  # offset moves along the normal: up for 0°
    assert shifted[8:10].min() > 0.999 and shifted[13:15].max() < 1e-6


def test_segment_centred_on_its_position():
    centre = (-6.0, 4.0)
    image = stroke_images(30, length=8.0, center=centre, raw=True)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    mass = image.sum()
    centroid = pixel_xy(float((rows * image).sum() / mass), float((cols * image).sum() / mass))
    assert centroid == pytest.approx(centre, abs=0.1)
    assert image.sum() == pytest.approx(8.0 * 2.0, rel=0.15)  # length x thickness


def test_edge_probe_is_bright_on_the_normal_side():
    up = stroke_images(0, kind="edge", thickness=math.inf, raw=True)[0, 0]  # normal of 0° points up
    assert up[:13].min() > 0.999 and up[15:].max() < 1e-6
    bar = stroke_images(90, kind="edge", thickness=4.0, raw=True)[0, 0]  # normal of 90° points left
    assert bar[:, 10:14].min() > 0.999 and bar[:, :9].max() < 1e-6 and bar[:, 14:].max() < 1e-6


def test_sweep_positions():
    images, positions = sweep_positions(60, step=3.0, margin=4.0)
    assert images.shape == (len(positions), 1, 28, 28) and positions.shape[1] == 2
    assert positions.abs().max() <= 13.5 - 4.0
    assert torch.allclose(positions[1] - positions[0], torch.tensor([3.0, 0.0]))
    assert positions[0, 1] > 0  # row-major from the top-left
    torch.testing.assert_close(images[7:8], stroke_images(60, center=positions[7], length=7.0))


@pytest.mark.parametrize("angle", [0, 20, 45, 90, 110, 135])
def test_line_probe_drives_its_own_angle_hardest(angle):
    probe = stroke_images(angle)
    own = max_response(probe, kernel(angle))
    for away in (45, 90):
        assert own > max_response(probe, kernel(angle + away)) + 0.5, away


@pytest.mark.parametrize("angle", [0, 20, 45, 90, 110, 135])
def test_fit_of_a_probe_crop_finds_the_probe_angle(angle):
    crop = stroke_images(angle, raw=True)[0, 0, 12:17, 12:17]
    fit = fit_lines(crop[None])
    gap = abs(fit.theta_deg.item() - angle) % 180
    assert min(gap, 180 - gap) < 5 and fit.kind == ["line"] and fit.amplitude.item() > 0


def test_left_side_edge_probe_drives_the_left_side_kernel():
    # the left side of a vertical stroke: bright to the right of the boundary (normal of 270° points right)
    assert edge_side(270, +1) == "left"
    probe = stroke_images(270, kind="edge", thickness=math.inf, center=pixel_xy(14, 14))
    left_kernel = kernel(90, amplitude=-1.0, kind="edge")  # positive lobe right of the centre line
    assert edge_side(90, -1) == "left"
    right_kernel = kernel(90, amplitude=1.0, kind="edge")
    assert max_response(probe, left_kernel) > max_response(probe, right_kernel) + 1.0
    # and the fitted side of the kernel that fires agrees
    assert fit_lines(left_kernel[None]).labels() == ["left side of a vertical line"]
