"""What the fc layers do to the classes (docs/measures.md): activations of the raw input,
conv3, fc4 and fc5 on MNIST images, their 2D PCA and t-SNE projections, and a separation score
per layer (silhouette of the classes and the cross-validated accuracy of a k-nearest-neighbour vote).

t-SNE is quadratic in the number of points, so it runs on a seeded subsample; PCA and the
scores use the same subsample, so every number of a layer describes the same points.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from convdissect.analysis.activations import record

# The representations the article projects, in the order of the net.
STAGES = ("input", "conv3", "fc4", "fc5")
KNN_NEIGHBOURS = 10
TSNE_DIMS = 50


def stage_activations(net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{stage: [N, D]} on CPU: the input pixels, conv3's pooled output (what fc4 reads), fc4's
    activated output (what fc5 reads) and fc5's logits."""
    seen = record(net, images, ["fc4", "fc5"], what="input")
    logits = record(net, images, ["fc5"])["fc5"]
    return {"input": images.flatten(1).cpu(), "conv3": seen["fc4"].cpu(), "fc4": seen["fc5"].cpu(), "fc5": logits.cpu()}


def subsample(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a seeded random subsample of min(size, n) out of n."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[: min(size, n)].sort().values


@dataclass
class Projection:
    stage: str
    pca: torch.Tensor  # [M, 2]
    tsne: torch.Tensor  # [M, 2]
    explained: tuple[float, float]  # PCA's explained variance ratio of the two axes
    silhouette: float  # of the classes in the full activation space, -1..1
    knn_accuracy: float  # 5-fold cross-validated k-NN vote in the full activation space, 0..1


def separation(x: torch.Tensor, labels: torch.Tensor, k: int = KNN_NEIGHBOURS) -> tuple[float, float]:
    """(silhouette, 5-fold cross-validated kNN accuracy) of the classes in x [M, D]; NaN where
    there are too few points of a class to score."""
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    x, y = x.double().numpy(), labels.numpy()
    silhouette = float(silhouette_score(x, y)) if 1 < len(set(y.tolist())) < len(y) else float("nan")
    folds = min(5, int(torch.bincount(labels).max()))
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y) - 1))
    accuracy = float(cross_val_score(knn, x, y, cv=folds).mean()) if folds >= 2 else float("nan")
    return silhouette, accuracy


def project(x: torch.Tensor, labels: torch.Tensor, stage: str, seed: int = 0, perplexity: float = 30.0) -> Projection:
    """2D PCA and t-SNE of x [M, D] and its separation scores."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = x.double().numpy()
    pca = PCA(n_components=2, random_state=seed).fit(x)
    # t-SNE of the first TSNE_DIMS principal components, the usual speed-up for wide inputs (784 pixels)
    reduced = PCA(n_components=TSNE_DIMS, random_state=seed).fit_transform(x) if min(x.shape) > TSNE_DIMS else x
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed)
    silhouette, accuracy = separation(torch.from_numpy(x), labels)
    return Projection(
        stage,
        torch.from_numpy(pca.transform(x)).float(),
        torch.from_numpy(tsne.fit_transform(reduced)).float(),
        tuple(float(v) for v in pca.explained_variance_ratio_),
        silhouette,
        accuracy,
    )


def projections(
    activations: dict[str, torch.Tensor], labels: torch.Tensor, seed: int = 0, progress: bool = False
) -> list[Projection]:
    """One Projection per stage of `activations` (all on the same points), with a progress bar."""
    return [
        project(x, labels, stage, seed)
        for stage, x in tqdm(activations.items(), desc="projections", disable=not progress, leave=False)
    ]
