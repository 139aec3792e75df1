"""The shared extractor's feature space h = g_phi(x), for SID's claim that local modules train as
discriminative an extractor as one global loss does (its Figure 7: a t-SNE of the features).

A t-SNE picture is read by eye and changes with its seed; the separability numbers beside it do
not: a cross-validated linear probe and k-nearest-neighbour classifier on the features themselves,
and the silhouette of the classes in feature space (scikit-learn throughout).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def significant(values: Tensor, digits: int) -> Tensor:
    """``values`` rounded to ``digits`` significant digits each (zeros stay zero): a fixed number of
    decimals would flatten features that are small everywhere (an untrained extractor's are)."""
    magnitude = torch.where(values == 0, torch.zeros_like(values), values.abs().log10().floor())
    scale = torch.pow(10.0, digits - 1 - magnitude).to(values.dtype)
    return torch.round(values * scale) / scale


@torch.no_grad()
def extractor_features(model, data, test_samples: int = 1000) -> tuple[Tensor, Tensor]:
    """(features, labels) of the first ``test_samples`` test images: the extractor's output in float64."""
    from ..train import memory_format_for

    count = min(test_samples, len(data.test_labels))
    images = data.prepare(data.test_images[:count]).contiguous(memory_format=memory_format_for(model))
    features = torch.cat([model.extractor(images[start:start + 500]).double() for start in range(0, count, 500)])
    return features.cpu(), data.test_labels[:count].cpu()


def snapshot_of(features: Tensor, labels: Tensor, digits: int = 4) -> dict:
    """Features and labels as a run's JSON keeps them, each feature to ``digits`` significant digits
    (a t-SNE does not see a relative difference of 1e-4)."""
    return {"test_samples": len(labels), "labels": labels.tolist(), "features": significant(features, digits).tolist()}


def feature_snapshot(model, data, config, test_samples: int = 1000, digits: int = 4) -> dict:
    """The extractor's features of the first ``test_samples`` test images and their labels, ready for
    a run's JSON (meant as the ``analyse`` of ``sidlib.book.experiments.run_grid``)."""
    return snapshot_of(*extractor_features(model, data, test_samples), digits)


def snapshot_arrays(snapshot: dict) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a :func:`feature_snapshot` as numpy arrays."""
    return np.asarray(snapshot["features"], dtype=np.float64), np.asarray(snapshot["labels"], dtype=np.int64)


def tsne_embedding(features: np.ndarray | Tensor, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """Two-dimensional t-SNE of the rows of ``features`` (van der Maaten and Hinton 2008), PCA-initialised."""
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(np.asarray(features))


def separability(features: np.ndarray | Tensor, labels: np.ndarray | Tensor, folds: int = 5, neighbours: int = 5) -> dict:
    """How well the classes separate in feature space: the ``folds``-fold cross-validated accuracy (%)
    of a linear probe (logistic regression on standardised features) and of a ``neighbours``-nearest-
    neighbour classifier, and the silhouette of the classes (-1 to 1; high when each image lies closer
    to its own class than to the nearest other). The folds are contiguous and stratified, so the
    numbers depend on the data alone."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import silhouette_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    split = StratifiedKFold(n_splits=folds, shuffle=False)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    knn = KNeighborsClassifier(n_neighbors=neighbours)
    return {"linear_probe_acc": 100.0 * float(cross_val_score(probe, x, y, cv=split).mean()),
            "knn_acc": 100.0 * float(cross_val_score(knn, x, y, cv=split).mean()),
            "silhouette": float(silhouette_score(x, y))}


def feature_report(model, data, config, test_samples: int = 1000, digits: int = 4) -> dict:
    """:func:`feature_snapshot` with its :func:`separability` measured once, at training time, on the
    features before rounding, and kept beside them (the probe and the neighbours are the slow part of
    reading a snapshot)."""
    x, y = extractor_features(model, data, test_samples)
    return snapshot_of(x, y, digits) | {"separability": separability(x.numpy(), y.numpy())}
