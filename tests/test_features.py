"""The extractor's feature snapshot, t-SNE and separability measures against cases with known answers."""
import numpy as np
import pytest
import torch

from helpers import trained_synthetic_sid

from sidlib.analysis import features


def test_separability_is_high_for_separated_classes_and_chance_for_shuffled_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = 8.0 * np.eye(4, 6)
    separated = centres[labels] + rng.normal(size=(200, 6))
    good = features.separability(separated, labels)
    assert good["linear_probe_acc"] > 95 and good["knn_acc"] > 95 and good["silhouette"] > 0.5
    noise = rng.normal(size=(200, 6))
    bad = features.separability(noise, labels)
    assert bad["linear_probe_acc"] < 45 and bad["knn_acc"] < 45 and abs(bad["silhouette"]) < 0.1
    assert features.separability(separated, labels) == good  # no hidden randomness


def test_tsne_keeps_well_separated_clusters_apart():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    points = 20.0 * np.eye(3, 10)[labels] + rng.normal(size=(120, 10))
    embedded = features.tsne_embedding(points, seed=0, perplexity=15)
    assert embedded.shape == (120, 2)
    assert features.separability(embedded, labels)["knn_acc"] == pytest.approx(100.0)


def test_feature_snapshot_is_the_extractors_output_on_the_first_test_images():
    data, cfg, model = trained_synthetic_sid(depth=2)
    snapshot = features.feature_snapshot(model, data, cfg, test_samples=30, decimals=3)
    x, y = features.snapshot_arrays(snapshot)
    with torch.no_grad():
        expected = model.extractor(data.prepare(data.test_images[:30])).double().numpy()
    assert x.shape == (30, model.feature_dim) and y.tolist() == data.test_labels[:30].tolist()
    assert np.allclose(x, expected, atol=5e-4)  # rounded to 3 decimals, nothing else
    report = features.feature_report(model, data, cfg, test_samples=30, decimals=3)
    assert report["features"] == snapshot["features"] and set(report["separability"]) == {"linear_probe_acc", "knn_acc", "silhouette"}
