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


@torch.no_grad()
def feature_snapshot(model, data, config, test_samples: int = 1000, decimals: int = 3) -> dict:
    """The extractor's features of the first ``test_samples`` test images and their labels, ready for
    a run's JSON (meant as the ``analyse`` of ``sidlib.book.experiments.run_grid``), rounded to
    ``decimals`` (a t-SNE and the classifiers below do not see 1e-3 differences)."""
    from ..train import memory_format_for

    count = min(test_samples, len(data.test_labels))
    images = data.prepare(data.test_images[:count]).contiguous(memory_format=memory_format_for(model))
    features = torch.cat([model.extractor(images[start:start + 500]).double() for start in range(0, count, 500)])
    return {"test_samples": count, "labels": data.test_labels[:count].tolist(),
            "features": features.round(decimals=decimals).tolist()}


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


def feature_report(model, data, config, test_samples: int = 1000, decimals: int = 3) -> dict:
    """:func:`feature_snapshot` with its :func:`separability` measured once, at training time, and kept
    beside it (the probe and the neighbours are the slow part of reading a snapshot)."""
    snapshot = feature_snapshot(model, data, config, test_samples, decimals)
    return snapshot | {"separability": separability(*snapshot_arrays(snapshot))}
