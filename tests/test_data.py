"""Data: label noise, stratified subsets, batched augmentation, normalisation, offline loading."""
import gzip
from collections import Counter

import pytest
import torch

from sidlib import data as datasets


def test_label_noise_rate_and_determinism():
    labels = torch.arange(10000) % 10
    noisy = datasets.add_label_noise(labels, 0.3, 10, seed=5)
    changed = noisy != labels
    assert changed.sum().item() == 3000  # exactly round(r N) labels move, each to another class
    assert torch.equal(noisy, datasets.add_label_noise(labels, 0.3, 10, seed=5))
    assert not torch.equal(noisy, datasets.add_label_noise(labels, 0.3, 10, seed=6))
    # the new label is uniform over the other nine classes
    shifts = Counter(((noisy[changed] - labels[changed]) % 10).tolist())
    assert set(shifts) == set(range(1, 10))
    assert max(shifts.values()) - min(shifts.values()) < 120
    assert torch.equal(datasets.add_label_noise(labels, 0.0, 10, seed=5), labels)
    with pytest.raises(ValueError):
        datasets.add_label_noise(labels, 1.0, 10, seed=0)


def test_stratified_subset():
    labels = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    labels = labels[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    keep = datasets.stratified_subset(labels, 101, 3)
    assert len(keep) == len(set(keep.tolist())) == 101
    counts = torch.bincount(labels[keep], minlength=3).tolist()
    assert counts in ([61, 30, 10], [60, 31, 10], [60, 30, 11])
    assert torch.equal(keep, datasets.stratified_subset(labels, 101, 3))
    assert torch.equal(keep, keep.sort().values)
    with pytest.raises(ValueError):
        datasets.stratified_subset(labels, 1001, 3)


def test_random_crop_flip_against_a_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 8, 8, generator=g)
    out = datasets.random_crop_flip(images, padding=2, generator=torch.Generator().manual_seed(1))
    # replay the same random draws, one sample at a time
    g2 = torch.Generator().manual_seed(1)
    dy = torch.randint(0, 5, (16,), generator=g2)
    dx = torch.randint(0, 5, (16,), generator=g2)
    flip = torch.rand(16, generator=g2) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for n in range(16):
        crop = padded[n, :, dy[n]:dy[n] + 8, dx[n]:dx[n] + 8]
        expected = crop.flip(-1) if flip[n] else crop
        assert torch.equal(out[n], expected)
    assert flip.any() and not flip.all() and (dx != 2).any()


def test_normalisation_uses_training_statistics():
    d = datasets.load("synthetic")
    x = d.prepare(d.train_images)
    assert x.dtype == torch.float32 and x.shape == (2000, 1, 12, 12)
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3


def test_augmentation_only_for_datasets_that_ask_for_it():
    d = datasets.load("synthetic")
    g = torch.Generator().manual_seed(0)
    assert torch.equal(d.prepare(d.train_images[:8], g), d.prepare(d.train_images[:8]))
    assert datasets.DATASETS["cifar10"].augment and not datasets.DATASETS["fashion-mnist"].augment


def test_subset_and_noise_through_load():
    d = datasets.load("synthetic", train_subset=100, label_noise=0.2, noise_seed=3)
    assert len(d.train_labels) == len(d.train_images) == 100
    assert torch.bincount(d.train_labels, minlength=10).sum() == 100


def test_mnist1d_is_generated_offline(tmp_path):
    d = datasets.load("mnist1d", root=tmp_path)  # an empty data root: generated here, not read from a cache
    assert d.train_images.shape == (4000, 1, 40) and d.test_images.shape == (1000, 1, 40)
    assert d.train_labels.max() == 9


def test_mnist1d_is_kept_after_generating_it_and_read_back_the_same(tmp_path):
    cache = tmp_path / "mnist1d" / "small.pt"
    made = datasets._mnist1d(1000, cache=cache)  # the generator's argument, as mnist1d-large sets it
    assert made[0].shape == (800, 1, 40) and made[2].shape == (200, 1, 40)  # its 0.8 train split
    assert cache.is_file() and [p.name for p in cache.parent.iterdir()] == ["small.pt"]  # no partial file left
    for kept, fresh in zip(datasets._mnist1d(1000, cache=cache), made):
        assert torch.equal(kept, fresh)
    assert datasets.DATASETS["mnist1d-large"].train_size == 0.8 * datasets.MNIST1D_LARGE_SAMPLES


def test_unavailable_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDLIB_OFFLINE", "1")
    with pytest.raises(datasets.DataUnavailable, match=str(tmp_path)):
        datasets.load("cifar10", root=tmp_path)
    assert not any(tmp_path.iterdir()) or all(p.is_dir() for p in tmp_path.rglob("*"))


def fake_idx(path, kind, n):
    """Write a tiny gzipped IDX file like Debian's: 'images' (n, 28, 28) or 'labels' (n,)."""
    import struct
    if kind == "images":
        header = struct.pack(">IIII", 2051, n, 28, 28)
        body = bytes((i * 7) % 256 for i in range(n * 784))
    else:
        header = struct.pack(">II", 2049, n)
        body = bytes(i % 10 for i in range(n))
    with gzip.open(path, "wb") as f:
        f.write(header + body)


def test_fashion_mnist_prepared_from_debian_files(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    for split, n in (("train", 20), ("t10k", 10)):
        fake_idx(debian / f"{split}-images-idx3-ubyte.gz", "images", n)
        fake_idx(debian / f"{split}-labels-idx1-ubyte.gz", "labels", n)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setenv("SIDLIB_OFFLINE", "1")
    d = datasets.load("fashion-mnist", root=tmp_path / "root")
    assert d.train_images.shape == (20, 1, 28, 28) and d.test_images.shape == (10, 1, 28, 28)
    assert d.train_labels.tolist() == [i % 10 for i in range(20)]
    assert not list((tmp_path / "root").rglob("*.partial"))


@pytest.mark.skipif(not datasets.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    d = datasets.load("fashion-mnist", root=tmp_path)
    assert d.train_images.shape == (60000, 1, 28, 28) and d.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.train_labels).tolist() == [6000] * 10
    assert 0.28 < d.mean.item() < 0.29 and 0.35 < d.std.item() < 0.36


def test_validation_split_is_held_out_stratified_and_the_same_for_every_seed():
    full = datasets.load("synthetic")
    d = datasets.load("synthetic", val_split=200, train_subset=500)
    assert d.val_images.shape == (200, 1, 12, 12) and len(d.train_labels) == 500
    quota = torch.bincount(full.train_labels, minlength=10) * 200 / 2000  # the full set's class proportions
    assert (torch.bincount(d.val_labels, minlength=10) - quota).abs().max() < 1
    # no validation image is a training image: the two are drawn from disjoint rows of the full set
    rows = {tuple(x.flatten().tolist()): i for i, x in enumerate(full.train_images)}
    val_rows = {rows[tuple(x.flatten().tolist())] for x in d.val_images}
    train_rows = {rows[tuple(x.flatten().tolist())] for x in d.train_images}
    assert len(val_rows) == 200 and not val_rows & train_rows
    again = datasets.load("synthetic", val_split=200, train_subset=500, label_noise=0.0, noise_seed=7)
    assert torch.equal(again.val_images, d.val_images) and torch.equal(again.train_images, d.train_images)
    images, labels = d.split("val")
    assert images is d.val_images and labels is d.val_labels and d.split("test")[1] is d.test_labels
    with pytest.raises(ValueError, match="val_split"):
        full.split("val")
    assert d.split("train")[1] is d.train_labels  # the labels as given (noisy where there is noise)
    with pytest.raises(ValueError, match="unknown split"):
        d.split("validation")  # not silently the test set


def test_label_noise_reaches_the_validation_labels_too():
    clean = datasets.load("synthetic", val_split=500)
    noisy = datasets.load("synthetic", val_split=500, label_noise=0.2, noise_seed=3)
    assert torch.equal(clean.val_images, noisy.val_images)
    assert (clean.val_labels != noisy.val_labels).sum() == 100  # round(0.2 * 500), each moved to another class
    assert torch.equal(clean.test_labels, noisy.test_labels)


def test_stratified_subset_gives_the_leftover_samples_to_the_largest_remainders():
    # quotas 60.6, 30.3, 10.1: the floors leave one sample, which goes to the largest remainder (0.6)
    labels = torch.cat([torch.zeros(600), torch.ones(300), torch.full((100,), 2)]).long()
    assert torch.bincount(labels[datasets.stratified_subset(labels, 101, 3)], minlength=3).tolist() == [61, 30, 10]
    # quotas 4.05, 3.15, 1.8: the floors leave one, for the remainder 0.8 of the smallest class
    labels = torch.cat([torch.zeros(450), torch.ones(350), torch.full((200,), 2)]).long()
    assert torch.bincount(labels[datasets.stratified_subset(labels, 9, 3)], minlength=3).tolist() == [4, 3, 2]
