"""The bases that untangle conv3 (docs/article_method.md): linear maps from conv3's pooled outputs
to new units that each respond to one pattern at one position. analysis/untangle.py fits them and
measures their units (analysis/untangle_measures.py).

conv3's units mix several "pattern at position" detections. Each method here fits a linear map
W, b on conv3's pooled outputs x [N, C3] of training images (units u = W (x - b)), with no
labels and no probes:
- pca: the principal axes (the baseline: it decorrelates, nothing asks for one cell per unit);
- ica: FastICA (scikit-learn), maximally non-Gaussian, i.e. sparse, independent units;
- varimax: the whitened principal components rotated by varimax, which makes each unit's
  loadings sparse (an orthogonal rotation, so still invertible);
- dictionary: a sparse dictionary (scikit-learn's MiniBatchDictionaryLearning) of the whitened
  features, as many atoms as dimensions; the units are the least-squares codes (the lasso codes
  are not linear), invertible when the atoms are.
Dimensions along which the images do not vary (dead channels) are dropped first: a map keeps
everything the readout can use.

And three that are told what to look for (fitted on the probes), the best linear maps on the
measures of analysis/untangle_measures.py:
- probe_optimal: for each (pattern, position) cell, the unit w maximising its top-cell share
  (e_j . w)² / |E w|² (E: the channels' interaction residuals on the probes) is w = (EᵀE)⁺ e_j, a
  generalised Rayleigh quotient (the least-squares fit of cell j's indicator); the cells whose units
  reach the largest shares are taken while their units stay linearly independent;
- probe_ridge: the same with w = (EᵀE + λI)⁻¹ e_j, and λ and the cells chosen on a pseudo-replicate
  made from the fit replicate alone (the means of 2 x 2 blocks of neighbouring positions: strokes
  1 px away diagonally, as the other replicate's), so that neither is chosen for the fit
  replicate's own quirks;
- probe_window: for each pattern and window of positions within one conv3 cell (neighbourhood_share), the
  unit maximising the window's share of its interaction, w Eₛᵀ Eₛ w / w EᵀE w (the top generalised
  eigenvector), cells taken as probe_optimal's: the best map at conv3's resolution.
All three are cross-fitted: fitted on one replicate of the probe sweep and measured on the other
(the strokes a pixel apart diagonally), both ways; their units are the two fits' units together, each
measured out of sample, and their reference is raw conv3 measured on one replicate at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from convdissect.analysis.untangle_measures import interaction_cells
from convdissect.errors import UserInputError

METHODS = ("pca", "ica", "varimax", "dictionary")  # fitted on training images
PROBE_METHODS = ("probe_optimal", "probe_ridge", "probe_window")  # fitted on one probe replicate, cross-fitted
# probe_ridge's λ, in units of the mean eigenvalue of EᵀE
RIDGE_LAMBDAS = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# the probe methods keep a cell's unit when at least this share of its norm is new (outside the span
# of the units already kept), so the map stays well conditioned; then looser, until it is invertible.
NEW_SHARES = (0.3, 0.1, 0.01)
# Directions whose variance is below this share of the largest are dead: dropped before fitting.
DEAD_SHARE = 1e-6
# the dictionary's lasso penalty on the codes of whitened (unit-variance) features
DICTIONARY_ALPHA = 1.0
# Mini-batch dictionary learning stops in a seed-dependent local optimum (on planted units, 2 of 18
# seeds recovered 0.59 and 0.67 of the truth's share): keep the best of this many fits by its objective.
DICTIONARY_RESTARTS = 3


@dataclass
class Basis:
    """New units u = weight @ (x - mean): weight [K, C], mean [C]; `seconds` it took to fit."""

    method: str
    weight: torch.Tensor
    mean: torch.Tensor
    seconds: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., C] -> units [..., K]."""
        return (x - self.mean) @ self.weight.T


def varimax(loadings: np.ndarray, iterations: int = 500, tol: float = 1e-8) -> np.ndarray:
    """The orthogonal rotation R [K, K] maximising the variance of the squared loadings [C, K] @ R
    (Kaiser's varimax, by the SVD iteration)."""
    c, k = loadings.shape
    rotation, objective = np.eye(k), 0.0
    for _ in range(iterations):
        rotated = loadings @ rotation
        u, s, vt = np.linalg.svd(loadings.T @ (rotated**3 - rotated @ np.diag((rotated**2).sum(axis=0)) / c))
        rotation = u @ vt
        if s.sum() < objective * (1 + tol):
            break
        objective = s.sum()
    return rotation


def fit_basis(features: torch.Tensor, method: str, seed: int = 0) -> Basis:
    """A linear map [K, C] of conv3's outputs features [N, C] by `method` (one of METHODS)."""
    if method not in METHODS:
        raise UserInputError(
            f"untangle method {method!r}: allowed {list(METHODS)} (and {list(PROBE_METHODS)} by fit_probe_basis)"
        )
    from sklearn.decomposition import PCA, FastICA  # only this analysis needs them

    start = time.perf_counter()
    x = features.double().cpu().numpy()
    pca = PCA().fit(x)
    alive = int((pca.explained_variance_ > DEAD_SHARE * pca.explained_variance_[0]).sum())
    axes, variances = pca.components_[:alive], pca.explained_variance_[:alive]  # [K, C], [K]
    whiten = axes / np.sqrt(variances)[:, None]  # [K, C]
    if method == "pca":
        weight = axes
    elif method == "varimax":
        rotation = varimax(axes.T * np.sqrt(variances))  # loadings [C, K]
        weight = rotation.T @ whiten  # whitened scores, rotated
    elif method == "dictionary":
        atoms = best_dictionary((x - pca.mean_) @ whiten.T, seed)  # [K, K]: whitened z ≈ codes @ atoms
        weight = np.linalg.pinv(atoms).T @ whiten
    else:
        ica = FastICA(n_components=alive, whiten="unit-variance", random_state=seed, max_iter=2000, tol=1e-4)
        ica.fit(x)
        weight = ica.components_
    return Basis(
        method, torch.from_numpy(weight).float(), torch.from_numpy(pca.mean_).float(), time.perf_counter() - start
    )


def best_dictionary(z: np.ndarray, seed: int) -> np.ndarray:
    """The atoms [K, K] of the sparse dictionary of whitened features z [N, K] with the lowest objective
    (mean 0.5 |z - codes @ atoms|² + alpha |codes|₁) over DICTIONARY_RESTARTS seeded fits."""
    from sklearn.decomposition import MiniBatchDictionaryLearning, sparse_encode

    def fitted(restart: int) -> tuple[float, np.ndarray]:
        atoms = (
            MiniBatchDictionaryLearning(
                n_components=z.shape[1],
                alpha=DICTIONARY_ALPHA,
                max_iter=20,
                batch_size=256,
                random_state=seed + restart,
            )
            .fit(z)
            .components_
        )
        codes = sparse_encode(z, atoms, algorithm="lasso_cd", alpha=DICTIONARY_ALPHA)
        objective = 0.5 * ((z - codes @ atoms) ** 2).sum(1).mean() + DICTIONARY_ALPHA * np.abs(codes).sum(1).mean()
        return objective, atoms

    return min((fitted(restart) for restart in range(DICTIONARY_RESTARTS)), key=lambda fit: fit[0])[1]


def channel_cells(responses: torch.Tensor) -> torch.Tensor:
    """The channels' interaction residuals E [cells, C] of their probe responses [C, P, Q]."""
    return interaction_cells(responses).flatten(1).T


def cell_units(e: torch.Tensor, lam: float) -> torch.Tensor:
    """Each cell's best unit w_j = (EᵀE + λ·mean eigenvalue·I)⁻¹ e_j (pseudo-inverse at λ = 0): [cells, C]."""
    gram = e.T @ e
    if lam == 0:
        return e @ torch.linalg.pinv(gram, rtol=1e-8)
    return e @ torch.linalg.inv(gram + lam * gram.trace() / len(gram) * torch.eye(len(gram), dtype=e.dtype))


def units_share(w: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Top-cell share [K] of units w [K, C] on channel residuals e [cells, C] (residuals are linear)."""
    a2 = (e @ w.T).square()
    return a2.amax(dim=0) / a2.sum(dim=0)


def shifted_shares(responses: torch.Tensor, lam: float) -> torch.Tensor:
    """A pseudo-replicate made from one replicate's responses [C, P, Q] (Q on a square grid) alone:
    the mean of each 2 x 2 block of neighbouring positions, a stroke half a grid step away diagonally
    as the other replicate's is (if smoother). Each cell's unit is fitted on the positions whose
    block lies up and right of them (and on those whose block lies down and left) and scored by its
    top-cell share on the blocks; both ways averaged. [P * Q], NaN for the two corner cells
    that neither way covers."""
    c, p, q = responses.shape
    side = math.isqrt(q)
    grid = responses.double().reshape(c, p, side, side)
    blocks = (grid[:, :, 1:, :-1] + grid[:, :, :-1, :-1] + grid[:, :, 1:, 1:] + grid[:, :, :-1, 1:]) / 4
    e_blocks = channel_cells(blocks.flatten(2))
    total, count = torch.zeros(p, side, side, dtype=grid.dtype), torch.zeros(p, side, side, dtype=grid.dtype)
    for rows, cols in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
        e_fit = channel_cells(grid[:, :, rows, cols].flatten(2))
        total[:, rows, cols] += units_share(cell_units(e_fit, lam), e_blocks).reshape(p, side - 1, side - 1)
        count[:, rows, cols] += 1
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan).flatten()


def independent_cells(w: torch.Tensor, scores: torch.Tensor, rank: int) -> list[int]:
    """The cells, best score first (NaN last), whose units w [cells, C] stay linearly independent, up to rank."""
    kept: list[int] = []
    basis = torch.zeros(0, w.shape[1], dtype=w.dtype)  # orthonormal span of the kept units
    order = scores.nan_to_num(-1.0).argsort(descending=True).tolist()
    for new_share in NEW_SHARES:  # the best cells first; a looser test fills the rank if need be
        for j in order:
            if len(kept) == rank:
                break
            unit = w[j] / w[j].norm()
            new = unit - basis.T @ (basis @ unit)
            if new.norm() >= new_share:
                kept.append(j)
                basis = torch.cat([basis, (new / new.norm())[None]])
    return kept


def window_units(responses: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each pattern and window centre (windows as neighbourhood_share's), the unit [C] maximising
    the window's share of its interaction and that share: ([P * Q, C], [P * Q])."""
    c, p, q = responses.shape
    side, width = math.isqrt(q), 2 * radius + 1
    e = channel_cells(responses)
    values, vectors = torch.linalg.eigh(e.T @ e)
    alive = values > 1e-10 * values.max()
    whiten = vectors[:, alive] / values[alive].sqrt()  # [C, k]: z = e @ whiten has zᵀz = I
    z = e @ whiten
    k = z.shape[1]
    outer = (z[:, :, None] * z[:, None, :]).reshape(p, side, side, k * k).permute(0, 3, 1, 2)
    windows = F.avg_pool2d(outer, width, stride=1, padding=radius) * width**2  # Σ over each window of z zᵀ
    shares, best = torch.linalg.eigh(windows.permute(0, 2, 3, 1).reshape(p * q, k, k))
    return best[:, :, -1] @ whiten.T, shares[:, -1]


def fit_probe_basis(
    responses: torch.Tensor, features: torch.Tensor, method: str = "probe_optimal", radius: int = 1
) -> Basis:
    """A probe method's map [K, C] from the channels' probe responses [C, P, Q] (one replicate);
    features [N, C] (training images) give its centre and its number of units: the rank of both;
    radius: probe_window's window (window_radius of a conv3 cell)."""
    if method not in PROBE_METHODS:
        raise UserInputError(f"probe untangle method {method!r}: allowed {list(PROBE_METHODS)}")
    start = time.perf_counter()
    e = channel_cells(responses)  # [cells, C]
    rank = min(
        int(torch.linalg.matrix_rank(e)), int(torch.linalg.matrix_rank(features.double() - features.double().mean(0)))
    )
    if rank == 0:
        raise UserInputError(f"{method}: conv3's outputs do not vary on the probes or the images: nothing to untangle")
    if method == "probe_optimal":
        w = cell_units(e, 0.0)
        kept = independent_cells(w, (w * e).sum(dim=1), rank)  # e_j (EᵀE)⁺ e_j: each cell's best share
    elif method == "probe_window":
        w, shares = window_units(responses, radius)
        kept = independent_cells(w, shares, rank)
    else:
        best = -1.0
        for lam in RIDGE_LAMBDAS:  # λ and cells by the pseudo-replicate: the fit replicate only
            scores = shifted_shares(responses, lam)
            units = cell_units(e, lam)
            cells = independent_cells(units, scores, rank)
            objective = float(scores[cells].nanmedian())
            if objective > best:
                best, w, kept = objective, units, cells
    weight = w[kept] / w[kept].norm(dim=1, keepdim=True)
    return Basis(method, weight.float(), features.mean(dim=0).float(), time.perf_counter() - start)
