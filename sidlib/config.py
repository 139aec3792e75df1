"""Every option of a training run, with its checks. The CLI, the notebooks and the tests share it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .data import DATASETS
from .divergences import KL_DIRECTIONS
from .methods import METHODS
from .methods.sid import EXTRACTOR_STRATEGIES
from .models import MODELS

SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    """An option's value cannot work; the message names the option and the fix."""


@dataclass
class TrainConfig:
    method: str = "sid"
    model: str = "simplecnn"
    dataset: str = "fashion-mnist"
    depth: int = 10
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    alpha: float = 0.5
    kl: str = "forward"  # the authors' code; "reverse" is the paper's theory
    label_smoothing: float = 0.0
    extractor: str = "all"
    schedule: str = "constant"
    label_noise: float = 0.0
    train_subset: int | None = None
    data_root: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Raise ConfigError for the first option that cannot work. Returns self."""
        choices = {"method": METHODS, "model": MODELS, "dataset": DATASETS, "kl": KL_DIRECTIONS,
                   "extractor": EXTRACTOR_STRATEGIES, "schedule": SCHEDULES, "device": DEVICES,
                   "precision": PRECISIONS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"unknown --{name} {value!r}; choose one of: {', '.join(allowed)}")
        for name in ("depth", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha must lie strictly between 0 and 1, got {self.alpha}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.label_noise < 1:
            raise ConfigError(f"--label-noise must lie in [0, 1), got {self.label_noise}")
        train_size = DATASETS[self.dataset].train_size
        if self.train_subset is not None and not 1 <= self.train_subset <= train_size:
            raise ConfigError(f"--train-subset must be between 1 and {train_size} "
                              f"(the size of {self.dataset}'s training set), got {self.train_subset}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available here; "
                              "use --device cpu or --device auto")
        return self

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
