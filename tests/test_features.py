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


def test_significant_keeps_digits_relative_to_each_value():
    values = torch.tensor([1.23456e-4, 123456.0, 0.0, -0.987654, 5e-9], dtype=torch.float64)
    rounded = features.significant(values, 4).tolist()
    assert rounded == pytest.approx([1.235e-4, 123500.0, 0.0, -0.9877, 5e-9], rel=1e-12)
    assert rounded[2] == 0.0


def test_feature_snapshot_is_the_extractors_output_on_the_first_test_images():
    data, cfg, model = trained_synthetic_sid(depth=2)
    snapshot = features.feature_snapshot(model, data, cfg, test_samples=30, digits=4)
    x, y = features.snapshot_arrays(snapshot)
    with torch.no_grad():
        expected = model.extractor(data.prepare(data.test_images[:30])).double().numpy()
    assert x.shape == (30, model.feature_dim) and y.tolist() == data.test_labels[:30].tolist()
    assert np.allclose(x, expected, rtol=5e-4, atol=0)  # 4 significant digits, nothing else
    report = features.feature_report(model, data, cfg, test_samples=30, digits=4)
    assert report["features"] == snapshot["features"]
    # separability is measured on the features before rounding
    assert report["separability"] == pytest.approx(features.separability(expected, y))
