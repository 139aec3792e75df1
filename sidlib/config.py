"""Every option of a training run, with its checks. The CLI, the notebooks and the tests share it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .data import DATASETS
from .divergences import KL_DIRECTIONS
from .methods import METHODS
from .methods.sid import EXTRACTOR_STRATEGIES, PHASE2_MODES
from .methods.sll import SLLOptions
from .models import BELIEF_INPUTS, CASCADES, HEADS, MODELS, STACKS, build_model, default_head

SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
TEST_EPOCHS = ("all", "reported")  # the test set every epoch; or only at the epochs a run reports (see train.py)
OPTIMIZERS = ("adam", "adamw", "adamax", "sgd")
# The baselines' open choices (each a --<method>-* option; the method's module explains it)
PEPITA_SIGNS = ("minus", "plus")
FF_GOODNESS = ("sum", "mean")
FF_PREDICTIONS = ("goodness", "readout")
FF_NEGATIVES = ("other", "permute")
NOPROP_VARIANTS = ("paper", "authors")
HSIC_OBJECTIVES = ("bottleneck", "labels")  # Ma et al.'s bottleneck; the SID paper's baseline (labels only, unbiased)
LLS_PROJECTIONS = ("periodic", "random")
_SLL = SLLOptions()


class ConfigError(ValueError):
    """An option's value cannot work; the message names the option and the fix."""


@dataclass
class TrainConfig:
    method: str = "sid"
    model: str = "simplecnn"
    head: str | None = None  # None: the model's own (cascade for the SimpleCNN, linear for the rest)
    dataset: str = "fashion-mnist"
    depth: int = 10  # refinement modules of a cascade head, or blocks of a deep-* model
    belief_input: str = "softmax"  # what a cascade's module reads of the one before (sidlib.models.cascade)
    width: int | None = None  # hidden width of an MLP (None: the model's own)
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float | None = None  # None: the optimiser's default (0.01 for AdamW, 0 for the rest)
    alpha: float = 0.5
    kl: str = "forward"  # the authors' code; "reverse" is the paper's theory
    label_smoothing: float = 0.0
    extractor: str = "all"
    sid_phase2: str = "loop"  # SID's local updates one module at a time, or batched (sidlib.methods.sid)
    sid_modules_per_batch: int = 8  # batched phase 2: modules per batched computation (memory flat beyond it)
    schedule: str = "constant"
    label_noise: float = 0.0
    # SLL's open choices (sidlib.methods.sll.SLLOptions), used by --method sll only
    sll_codes: int | None = _SLL.codes
    sll_dropout: float = _SLL.dropout
    sll_temperature: float = _SLL.temperature
    sll_weight: float = _SLL.weight
    sll_first_prior: str = _SLL.first_prior
    sll_code_map: str = _SLL.code_map
    sll_predict: str = _SLL.predict
    sll_unit: int = _SLL.unit
    sll_tokens: str = _SLL.tokens
    sll_projection: str = _SLL.projection
    # The baselines' open choices, used by their --method only (sidlib/methods/<method>.py)
    pepita_sign: str = "minus"
    pepita_feedback_scale: float = 0.05
    ff_threshold: float = 2.0
    ff_goodness: str = "mean"
    ff_predict: str = "goodness"
    ff_negatives: str = "other"
    noprop_variant: str = "paper"
    noprop_eta: float = 0.1
    hsic_objective: str = "bottleneck"
    hsic_beta: float = 500.0
    hsic_sigma: float = 5.0
    lls_projection: str = "periodic"
    train_subset: int | None = None
    test_subset: int | None = None
    val_split: int = 0  # training samples held out for model selection (0: none)
    patience: int | None = None  # stop once validation accuracy has not improved for this many epochs (None: never)
    track_train_acc: bool = False  # also measure accuracy on the training labels as given (noisy ones too), each epoch
    test_epochs: str = "all"  # "reported": test only each new best-validation epoch and the last (needs val_split)
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
                   "precision": PRECISIONS, "optimizer": OPTIMIZERS, "pepita_sign": PEPITA_SIGNS,
                   "ff_goodness": FF_GOODNESS, "ff_predict": FF_PREDICTIONS, "ff_negatives": FF_NEGATIVES,
                   "noprop_variant": NOPROP_VARIANTS, "hsic_objective": HSIC_OBJECTIVES, "lls_projection": LLS_PROJECTIONS,
                   "belief_input": BELIEF_INPUTS, "sid_phase2": PHASE2_MODES, "test_epochs": TEST_EPOCHS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"unknown --{name.replace('_', '-')} {value!r}; choose one of: {', '.join(allowed)}")
        if self.head is not None and self.head not in HEADS:
            raise ConfigError(f"unknown --head {self.head!r}; choose one of: {', '.join(HEADS)}")
        for name in ("depth", "epochs", "batch_size", "sid_modules_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ConfigError(f"--weight-decay must be at least 0, got {self.weight_decay}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"--alpha must lie strictly between 0 and 1, got {self.alpha}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.label_noise < 1:
            raise ConfigError(f"--label-noise must lie in [0, 1), got {self.label_noise}")
        info = DATASETS[self.dataset]
        try:
            SLLOptions.from_config(self).check(info.num_classes)
            METHODS[self.method].check(self)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        for name, size in (("train", info.train_size), ("test", info.test_size)):
            subset = getattr(self, f"{name}_subset")
            if subset is not None and not 1 <= subset <= size:
                raise ConfigError(f"--{name}-subset must be between 1 and {size} "
                                  f"(the size of {self.dataset}'s {name} set), got {subset}")
        if not 0 <= self.val_split < info.train_size:
            raise ConfigError(f"--val-split must be between 0 and {info.train_size - 1} "
                              f"(fewer than {self.dataset}'s {info.train_size} training samples), got {self.val_split}")
        if self.patience is not None:
            if self.patience < 1:
                raise ConfigError(f"--patience must be at least 1, got {self.patience}")
            if not self.val_split:
                raise ConfigError("--patience stops on validation accuracy; add --val-split N to hold out N "
                                  "training samples for it (early stopping never reads the test set)")
        if self.test_epochs == "reported" and not self.val_split:
            raise ConfigError("--test-epochs reported tests the epochs chosen on validation; add --val-split N, "
                              "or use --test-epochs all")
        if self.val_split and self.train_subset is not None and self.val_split + self.train_subset > info.train_size:
            raise ConfigError(f"--val-split {self.val_split} and --train-subset {self.train_subset} together exceed "
                              f"{self.dataset}'s {info.train_size} training samples; make one of them smaller")
        self.check_model(info.input_shape, info.num_classes)
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available here; "
                              "use --device cpu or --device auto")
        return self

    def resolved_head(self) -> str:
        return self.head or default_head(self.model)

    def check_model(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        """Raise ConfigError if the model cannot take this input or the method cannot train it.
        The model is built on the meta device: its shapes are checked, nothing is allocated."""
        head = self.resolved_head()
        try:
            with torch.device("meta"):
                build_model(self.model, input_shape, num_classes, self.depth, self.head, self.width, self.belief_input)
        except ValueError as error:
            raise ConfigError(f"--model {self.model} on {self.dataset}: {error}") from None
        method = METHODS[self.method]
        if head not in method.heads:
            if "cascade" in method.heads:  # a cascade-only method (SID, NoProp) on a linear head
                fix = ("use --model simplecnn, or a backbone such as vgg11 with --head cascade" if self.model in STACKS
                       else "add --head cascade to train refinement modules on this backbone")
            else:  # a method for blocks and a head (SLL, DFA, ...) on a belief cascade
                fix = ("use a model with blocks and a head, e.g. --model mlp-2x800 or sll-cnn-fmnist"
                       if self.model in CASCADES else f"use --head {method.heads[0]}")
            raise ConfigError(f"--method {self.method} cannot train {self.model} with a {head} head; {fix}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
