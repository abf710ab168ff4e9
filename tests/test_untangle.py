"""Untangling conv3: on a planted mixture (known one-cell units mixed by a random invertible
matrix) the methods recover concentrated units; on a real net the invertible maps keep the readout."""

import numpy as np
import pytest
import torch

from convdissect.data.mnist import MNISTDataModule
from convdissect.dissect.untangle import (
    PROBE_METHOD,
    fit_basis,
    fit_probe_basis,
    interaction_cells,
    position_maps_figure,
    top_cell_share,
    unit_label,
    untangle,
    varimax,
)
from convdissect.errors import UserInputError
from convdissect.models.simple_convnet import SimpleConvNet

P, Q, R, K = 4, 25, 2, 8


def planted(seed: int = 0, n: int = 3000):
    """K units, unit k firing on its own (pattern, position) cell only; channels = A @ units with
    A random and invertible. Training 'images': sparse independent unit activities, mixed the same way."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(P * Q, generator=g)[:K]
    units = torch.zeros(K, P * Q, R)
    units[torch.arange(K), cells] = 1.0
    units = (units + 0.02 * torch.randn(K, P * Q, R, generator=g)).reshape(K, P, Q, R)
    mixing = torch.randn(K, K, generator=g)
    assert torch.linalg.cond(mixing) < 1e3
    activity = -torch.rand(n, K, generator=g).log() * (torch.rand(n, K, generator=g) < 0.3)  # sparse, non-Gaussian
    channels_probes = torch.einsum("ck,kpqr->cpqr", mixing, units)
    features = activity @ mixing.T + 1.0
    return units, channels_probes, features


def test_a_one_cell_unit_has_the_largest_share_and_a_spread_one_a_small_share():
    one = torch.zeros(1, P, Q)
    one[0, 2, 7] = 1.0
    share = top_cell_share(one)
    assert share.item() == pytest.approx((1 - 1 / P) * (1 - 1 / Q), rel=1e-5)
    additive = torch.rand(1, P, 1) + torch.rand(1, 1, Q)  # pattern and position, no interaction
    assert top_cell_share(additive).isnan().all()
    e = interaction_cells(torch.randn(3, P, Q))
    torch.testing.assert_close(e.sum(dim=1), torch.zeros(3, Q, dtype=e.dtype), atol=1e-9, rtol=0)


@pytest.mark.parametrize("method", ["ica", PROBE_METHOD])
def test_planted_units_are_recovered_from_their_mixture(method):
    units, channel_probes, features = planted()
    truth = top_cell_share(units).median()
    mixed = top_cell_share(channel_probes).median()
    assert mixed < 0.5 * truth  # the mixture really is tangled
    if method == PROBE_METHOD:
        basis = fit_probe_basis(channel_probes[..., 0], features)
        recovered = basis(channel_probes.permute(1, 2, 3, 0))[:, :, 1:]  # measured on the other replicate
    else:
        basis = fit_basis(features, method)
        recovered = basis(channel_probes.permute(1, 2, 3, 0))
    assert basis.weight.shape == (K, K)
    share = top_cell_share(recovered.permute(3, 0, 1, 2))
    assert share.median() > 0.9 * truth, (share, truth)
    # each planted cell is some recovered unit's top cell
    top = interaction_cells(recovered.permute(3, 0, 1, 2)).abs().flatten(1).argmax(dim=1)
    planted_cells = interaction_cells(units).abs().flatten(1).argmax(dim=1)
    assert set(top.tolist()) == set(planted_cells.tolist())


def test_pca_does_not_untangle_the_planted_mixture():
    units, channel_probes, features = planted()
    recovered = fit_basis(features, "pca")(channel_probes.permute(1, 2, 3, 0)).permute(3, 0, 1, 2)
    assert top_cell_share(recovered).median() < 0.5 * top_cell_share(units).median()


def test_varimax_is_an_orthogonal_rotation_that_sparsifies_the_loadings():
    g = np.random.default_rng(0)
    sparse = np.where(g.random((12, 4)) < 0.3, g.normal(size=(12, 4)), 0.0)
    q, _ = np.linalg.qr(g.normal(size=(4, 4)))
    rotation = varimax(sparse @ q)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(4), atol=1e-8)

    def criterion(loadings):
        return ((loadings**2).var(axis=0)).sum()

    assert criterion(sparse @ q @ rotation) >= criterion(sparse) - 1e-6  # at least as sparse as the truth


def test_unknown_method_is_a_one_line_error():
    with pytest.raises(UserInputError, match="allowed") as err:
        fit_basis(torch.randn(50, 4), "nmf")
    assert "\n" not in str(err.value)


def test_on_a_real_net_invertible_maps_keep_the_readout(data_dir, one_thread):
    torch.manual_seed(0)
    net = SimpleConvNet([4, 8, 8, 8])
    data = MNISTDataModule(data_dir=data_dir)
    train_images, train_labels = data.tensors("train", 600)
    test_images, test_labels = data.tensors("test", 300)
    result = untangle(net, (train_images, train_labels), (test_images, test_labels))
    by_name = {u.name: u for u in result.units}
    assert list(by_name) == ["conv3 (raw)", "fc4", "pca", "ica", "varimax", PROBE_METHOD]
    raw = by_name["conv3 (raw)"].readout_accuracy
    assert raw > 0.2  # far above chance (0.1) even untrained
    for name in ("pca", "ica", "varimax"):
        assert abs(by_name[name].readout_accuracy - raw) <= 0.005, (name, by_name[name].readout_accuracy, raw)
    label = unit_label(result.sweep, by_name["ica"].responses[0])
    assert " line " in f" {label} " or "line at" in label, label
    fig = position_maps_figure(result, "ica", n_units=3)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 6 and all("top-cell share" in t for t in titles)
