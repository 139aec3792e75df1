"""Datasets as tensors on the device, with batched normalisation and augmentation.

Every dataset is held whole on the device (uint8 pixels for images, float for MNIST-1D);
a batch is gathered by index, converted to float, augmented and normalised in a few batched
tensor operations, as in airbench, instead of a per-sample PIL pipeline.

Where the files come from:
  * ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100``: torchvision, under the data root
    (``--data-root``, else ``$SIDLIB_DATA``, else ``data/``), downloaded when the network allows.
    Offline, Fashion-MNIST is taken from Debian's package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``) and decompressed where torchvision looks for it.
  * ``mnist1d``: generated offline by the ``mnist1d`` package (its default arguments and seed:
    5,000 signals, 4,000 for training). ``mnist1d-large``: the same generator and seed asked for
    20,000 signals (16,000 for training, 4,000 for testing), for experiments on larger training sets.
    Both are generated once (seconds) and kept under the data root (``mnist1d/<name>-<mnist1d version>.pt``).
  * ``synthetic``: a small generated image task for tests; needs no files.
Set ``SIDLIB_OFFLINE=1`` to forbid download attempts.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SUBSET_SEED = 0  # the stratified subset is the same for every run seed and method
VALIDATION_SEED = 1  # so is the validation split, drawn apart from the subset's permutation


class DataUnavailable(Exception):
    """The dataset's files are not on this machine and could not be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    input_shape: tuple[int, ...]
    num_classes: int
    train_size: int
    test_size: int
    augment: bool  # random crop (padding 4) and horizontal flip, the paper's CIFAR protocol


DATASETS = {
    "fashion-mnist": DatasetInfo((1, 28, 28), 10, 60000, 10000, False),
    "mnist": DatasetInfo((1, 28, 28), 10, 60000, 10000, False),
    "cifar10": DatasetInfo((3, 32, 32), 10, 50000, 10000, True),
    "cifar100": DatasetInfo((3, 32, 32), 100, 50000, 10000, True),
    "mnist1d": DatasetInfo((1, 40), 10, 4000, 1000, False),
    "mnist1d-large": DatasetInfo((1, 40), 10, 16000, 4000, False),
    "synthetic": DatasetInfo((1, 12, 12), 10, 2000, 500, False),
}


def default_data_root() -> Path:
    return Path(os.environ.get("SIDLIB_DATA", "data"))


@dataclass
class Data:
    """A dataset on one device. Images are kept raw (uint8 or float); ``batch`` prepares them."""
    name: str
    info: DatasetInfo
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    mean: Tensor  # per channel, of the (scaled) training images
    std: Tensor
    val_images: Tensor | None = None  # held out of the training set (``val_split``), for model selection
    val_labels: Tensor | None = None

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """The images and labels of ``"test"``, ``"val"`` or ``"train"`` (the training labels as
        given, noisy where there is label noise)."""
        if name not in ("test", "val", "train"):
            raise ValueError(f"unknown split {name!r}; choose 'test', 'val' or 'train'")
        if name == "val" and self.val_labels is None:
            raise ValueError("this dataset was loaded without a validation split (val_split=0)")
        return {"val": (self.val_images, self.val_labels), "test": (self.test_images, self.test_labels),
                "train": (self.train_images, self.train_labels)}[name]

    def prepare(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Raw images -> float, augmented when ``generator`` is given and the dataset asks for it, normalised."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        if generator is not None and self.info.augment:
            x = random_crop_flip(x, padding=4, generator=generator)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)


def random_crop_flip(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Per-sample random crop from a zero-padded image, then a horizontal flip with probability 1/2,
    done for the whole batch at once with one gather."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    device = images.device
    dy = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=device, generator=generator)
    flip = torch.rand(n, device=device, generator=generator) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)
    cols = torch.arange(w, device=device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    index_n = torch.arange(n, device=device)[:, None, None, None]
    index_c = torch.arange(c, device=device)[None, :, None, None]
    return padded[index_n, index_c, rows[:, None, :, None], cols[:, None, None, :]]


def stratified_subset(labels: Tensor, size: int, num_classes: int, seed: int = SUBSET_SEED) -> Tensor:
    """Indices of ``size`` samples whose class proportions follow the full set's (largest remainder),
    chosen by a seeded permutation; sorted so the subset keeps the dataset's order."""
    if not 1 <= size <= len(labels):
        raise ValueError(f"subset size must be in [1, {len(labels)}], got {size}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    counts = torch.bincount(labels, minlength=num_classes).double()
    quota = counts * size / len(labels)
    take = quota.floor().long()
    remainder_rank = torch.argsort(quota - take, descending=True, stable=True)
    take[remainder_rank[: size - int(take.sum())]] += 1
    shuffled_labels = labels[order]
    chosen = [order[shuffled_labels == k][: int(take[k])] for k in range(num_classes)]
    return torch.cat(chosen).sort().values


def add_label_noise(labels: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """Symmetric label noise: round(rate * N) samples, chosen by ``seed``, get a label drawn uniformly
    from the other C - 1 classes. Returns a new tensor."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise must be in [0, 1), got {rate}")
    generator = torch.Generator().manual_seed(seed)
    count = round(rate * len(labels))
    noisy = labels.clone()
    chosen = torch.randperm(len(labels), generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    return noisy


# ---------------------------------------------------------------------------------------------
# Loading raw tensors


def _offline() -> bool:
    return os.environ.get("SIDLIB_OFFLINE", "") not in ("", "0")


def _prepare_debian_fashion_mnist(root: Path) -> bool:
    """Decompress Debian's Fashion-MNIST files into torchvision's raw folder. True if it did."""
    sources = sorted(DEBIAN_FASHION_MNIST.glob("*-ubyte.gz"))
    if len(sources) < 4:
        return False
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for source in sources:
        target = raw / source.name[: -len(".gz")]
        if target.exists():
            continue
        partial = target.with_suffix(".partial")
        with gzip.open(source, "rb") as fin, open(partial, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(partial, target)  # atomic: torchvision never sees half a file
    return True


def _torchvision(name: str, root: Path):
    import torchvision.datasets as tvd

    cls = {"fashion-mnist": tvd.FashionMNIST, "mnist": tvd.MNIST,
           "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]

    def load(download: bool):
        # torchvision prints its download progress on stdout; keep our stdout for results.
        with contextlib.redirect_stdout(io.StringIO()):
            return cls(str(root), train=True, download=download), cls(str(root), train=False, download=download)

    try:
        return load(download=False)
    except RuntimeError:
        pass
    if name == "fashion-mnist" and _prepare_debian_fashion_mnist(root):
        return load(download=False)
    if not _offline():
        try:
            return load(download=True)
        except Exception:  # any network or checksum failure means: not available here
            pass
    where = f"{root}" + (f" and {DEBIAN_FASHION_MNIST}" if name == "fashion-mnist" else "")
    hint = ("install Debian's dataset-fashion-mnist, or " if name == "fashion-mnist" else "")
    raise DataUnavailable(
        f"dataset {name!r} is not available: looked in {where} and could not download it; "
        f"{hint}run once with network access, or put torchvision's files under --data-root")


def _as_tensors(split) -> tuple[Tensor, Tensor]:
    images = torch.as_tensor(split.data)
    if images.dim() == 3:  # (N, H, W) greyscale
        images = images.unsqueeze(1)
    else:  # (N, H, W, C) colour
        images = images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(split.targets, dtype=torch.long)


MNIST1D_LARGE_SAMPLES = 20000  # mnist1d-large: the generator's only changed argument (train split 0.8, seed 42)


def _mnist1d(num_samples: int | None = None, cache: Path | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MNIST-1D from the ``mnist1d`` generator with its default arguments, or ``num_samples`` signals;
    never downloaded. ``cache``: a file that keeps the generated tensors (written atomically)."""
    if cache is not None and cache.is_file():
        return tuple(torch.load(cache, weights_only=True))
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    if num_samples is not None:
        args.num_samples = num_samples
    d = make_dataset(args)  # seeded by the package (args.seed)
    to = lambda a: torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # noqa: E731
    tensors = to(d["x"]), torch.as_tensor(d["y"]), to(d["x_test"]), torch.as_tensor(d["y_test"])
    if cache is not None:
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(list(tensors), partial)
            os.replace(partial, cache)  # whole or absent, even with several workers generating at once
        except OSError:  # a read-only data root: generate again next time
            partial.unlink(missing_ok=True)
    return tensors


def _mnist1d_version() -> str:
    """The generator's version, in the cache's name: another release may generate other signals."""
    from importlib.metadata import version

    return version("mnist1d")


def _synthetic(info: DatasetInfo) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Ten noisy class templates: learnable in a few epochs, cheap, the same on every machine."""
    generator = torch.Generator().manual_seed(1234)
    templates = torch.rand((info.num_classes, *info.input_shape), generator=generator)
    total = info.train_size + info.test_size
    labels = torch.arange(total) % info.num_classes
    labels = labels[torch.randperm(total, generator=generator)]
    noise = torch.rand((total, *info.input_shape), generator=generator)
    images = (255 * (0.6 * templates[labels] + 0.4 * noise)).to(torch.uint8)
    n = info.train_size
    return images[:n], labels[:n], images[n:], labels[n:]


def load_raw(name: str, root: Path | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_images, train_labels, test_images, test_labels) on the CPU, raw."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if name in ("mnist1d", "mnist1d-large"):  # generated once (seconds), then read from the data root
        samples = MNIST1D_LARGE_SAMPLES if name == "mnist1d-large" else None
        root = Path(root) if root is not None else default_data_root()
        return _mnist1d(samples, cache=root / "mnist1d" / f"{name}-{_mnist1d_version()}.pt")
    if name == "synthetic":
        return _synthetic(DATASETS[name])
    train, test = _torchvision(name, Path(root) if root is not None else default_data_root())
    return (*_as_tensors(train), *_as_tensors(test))


def load(name: str, root: Path | None = None, device: str | torch.device = "cpu",
         train_subset: int | None = None, label_noise: float = 0.0, noise_seed: int = 0,
         test_subset: int | None = None, val_split: int = 0) -> Data:
    """Load a dataset onto ``device``, optionally a stratified training subset with label noise
    and a stratified test subset (for quick checks of large models).

    ``val_split`` > 0 holds that many training samples out (stratified, the same for every run
    seed) before the training subset is drawn from the rest, so that model selection never sees
    the test set. Label noise, where asked for, reaches the held-out labels too: a validation set
    carved out of noisy training data is noisy."""
    info = DATASETS[name] if name in DATASETS else None
    train_x, train_y, test_x, test_y = load_raw(name, root)
    val_x = val_y = None
    if val_split:
        held = torch.zeros(len(train_y), dtype=torch.bool)
        held[stratified_subset(train_y, val_split, info.num_classes, seed=VALIDATION_SEED)] = True
        val_x, val_y, train_x, train_y = train_x[held], train_y[held], train_x[~held], train_y[~held]
    if train_subset is not None:
        keep = stratified_subset(train_y, train_subset, info.num_classes)
        train_x, train_y = train_x[keep], train_y[keep]
    if test_subset is not None:
        keep = stratified_subset(test_y, test_subset, info.num_classes)
        test_x, test_y = test_x[keep], test_y[keep]
    if label_noise > 0:
        train_y = add_label_noise(train_y, label_noise, info.num_classes, noise_seed)
        if val_y is not None:
            val_y = add_label_noise(val_y, label_noise, info.num_classes, noise_seed)
    # Normalisation statistics from the training images actually used, per channel.
    scaled = train_x.float() / (255.0 if train_x.dtype == torch.uint8 else 1.0)
    dims = [0] + list(range(2, scaled.dim()))
    mean, std = scaled.mean(dim=dims), scaled.std(dim=dims)
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Data(name, info, move(train_x), move(train_y), move(test_x), move(test_y), move(mean), move(std),
                move(val_x), move(val_y))
