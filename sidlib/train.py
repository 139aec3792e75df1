"""The one training loop every method uses.

Adam, a constant or cosine learning rate (annealed per step), evaluation after each epoch,
a checkpoint written atomically after each epoch, exact resume, and a stop on a non-finite
loss that keeps the last good checkpoint. A method supplies its ``step`` and, if it needs them,
``prepare`` and ``predict`` (see ``sidlib.methods``). On the CPU, seeded runs are bitwise reproducible.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm  # plain: no widget machinery in notebooks, where bars are off by default

from . import data as datasets
from . import parallel
from .config import ConfigError, TrainConfig
from .io import save_torch
from .methods import METHODS
from .models import build_model
from .perf import keep_freed_memory

CHECKPOINT_NAME = "checkpoint.pt"
EVAL_BATCH = 1000
FINITE_CHECK_EVERY = 25  # steps; reading the loss forces a device sync, so not every step
# Options that may change between a run and its resumption; the rest define the run.
RESUMABLE_CHANGES = ("epochs", "data_root", "device", "test_epochs")  # none changes the training


class NonFiniteLoss(RuntimeError):
    """Training produced a nan or infinite loss; the message says where and what was kept."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(), "platform": platform.platform(), "processor": cpu_model(),
           "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if parallel.active():  # module-parallel SID: how many processes shared the modules
        env["processes"] = torch.distributed.get_world_size()
    return env


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the autocast context a method wraps its forward passes in."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def memory_format_for(model) -> torch.memory_format:
    # Channels-last convolutions are markedly faster on CPUs (oneDNN) and on tensor-core GPUs.
    return torch.channels_last if len(model.input_shape) == 3 else torch.contiguous_format


def learning_rate_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based)."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def make_optimizer(model, lr: float, name: str = "adam", weight_decay: float | None = None) -> torch.optim.Optimizer:
    """Adam (SID's and SLL's CNNs), AdamW (SLL's ViTs), Adamax (SLL's MLPs) or SGD with momentum 0.9
    (PEPITA's), each with PyTorch's defaults besides the learning rate and, when given, the weight
    decay (``None``: PyTorch's default, 0.01 for AdamW and 0 for the rest)."""
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    if name == "adamax":  # no fused kernel exists for Adamax
        return torch.optim.Adamax(model.parameters(), lr=lr, **decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, **decay)
    # The fused kernel updates all parameters in one pass: about 2 ms less per step on 2 CPU cores.
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    return optimizer(model.parameters(), lr=lr, fused=True, **decay)


@torch.no_grad()
def evaluate(model, data: datasets.Data, autocast=contextlib.nullcontext, predict=None, split: str = "test") -> float:
    """Accuracy in percent on ``split`` ("test", "val" or "train"), of ``predict(model, images) -> logits``
    (default: ``model(images)``)."""
    predict = predict or (lambda net, images: net(images))
    split_images, split_labels = data.split(split)
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=split_labels.device)
    fmt = memory_format_for(model)
    for start in range(0, len(split_labels), EVAL_BATCH):
        images = data.prepare(split_images[start:start + EVAL_BATCH]).contiguous(memory_format=fmt)
        with autocast():
            logits = predict(model, images)
        correct += (logits.argmax(1) == split_labels[start:start + EVAL_BATCH]).sum()
    model.train()
    return 100.0 * correct.item() / len(split_labels)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(shuffle: torch.Generator, augment: torch.Generator) -> dict:
    state = {"shuffle": shuffle.get_state(), "augment": augment.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _load_rng_state(state: dict, shuffle: torch.Generator, augment: torch.Generator) -> None:
    shuffle.set_state(state["shuffle"])
    augment.set_state(state["augment"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(checkpoint_dir: Path, config: TrainConfig) -> dict:
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(f"--resume found no checkpoint at {path}; drop --resume to start afresh, "
                          f"or point --checkpoint-dir at a run's checkpoint folder")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved, asked = checkpoint["config"], config.to_dict()
    defaults = TrainConfig().to_dict()  # a checkpoint older than an option was made with its default
    for key, value in asked.items():
        if key not in RESUMABLE_CHANGES and saved.get(key, defaults[key]) != value:
            raise ConfigError(f"--resume: the checkpoint was made with {key}={saved.get(key)!r} but this run "
                              f"asks {key}={value!r}; use the same options, or a new --checkpoint-dir")
    return checkpoint


def train(config: TrainConfig, checkpoint_dir: Path | None = None, resume: bool = False,
          progress: bool = False, on_epoch_end: Callable[[dict], None] | None = None,
          data: datasets.Data | None = None) -> dict:
    """Train as ``config`` says and return the results (config, history, final accuracy, timings).

    ``on_epoch_end`` is called with each epoch's record after its checkpoint is written.
    ``data`` may be passed to reuse a loaded dataset (it must match the config).
    """
    return train_model(config, checkpoint_dir, resume, progress, on_epoch_end, data)[1]


def train_model(config: TrainConfig, checkpoint_dir: Path | None = None, resume: bool = False,
                progress: bool = False, on_epoch_end: Callable[[dict], None] | None = None,
                data: datasets.Data | None = None) -> tuple[torch.nn.Module, dict]:
    """``train``, also returning the trained network (for analyses that need the model itself)."""
    config.validate()
    device = config.resolved_device()
    if parallel.init_from_environment(device):  # launched by torchrun: module-parallel SID (sidlib.parallel)
        world = torch.distributed.get_world_size()
        if config.method != "sid":
            raise ConfigError(f"{world} processes: only SID trains module-parallel; run --method {config.method} "
                              f"in one process (python -m sidlib train, without torchrun)")
        if config.sid_phase2 != "loop":
            raise ConfigError(f"{world} processes: module-parallel SID runs each rank's modules one after another; "
                              f"drop --sid-phase2 {config.sid_phase2}")
        if config.depth < world:
            raise ConfigError(f"{world} processes for {config.depth} modules: every rank needs a module; "
                              f"use at most {config.depth} processes (--nproc-per-node) or a larger --depth")
    checkpoint = load_checkpoint(checkpoint_dir, config) if resume else None
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
        keep_freed_memory()
    if data is None:
        data = datasets.load(config.dataset, config.data_root, device, config.train_subset,
                             config.label_noise, noise_seed=config.seed, test_subset=config.test_subset,
                             val_split=config.val_split)
    elif config.val_split and data.val_labels is None:
        raise ValueError("config.val_split asks for validation, but the data passed were loaded without it")

    torch.manual_seed(config.seed)
    model = build_model(config.model, data.info.input_shape, data.info.num_classes, config.depth, config.head, config.width,
                        config.belief_input)
    method = METHODS[config.method]
    method.prepare(model, config)  # before the optimiser, so what it attaches is trained and saved
    fmt = memory_format_for(model)
    model.to(device=device, memory_format=fmt)
    optimizer = make_optimizer(model, config.lr, config.optimizer, config.weight_decay)
    steps_per_epoch = math.ceil(len(data.train_labels) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: learning_rate_factor(config.schedule, s, total_steps))
    shuffle = torch.Generator().manual_seed(config.seed)
    augment = torch.Generator(device=device).manual_seed(config.seed + 1)
    history, start_epoch, train_seconds = [], 0, 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _load_rng_state(checkpoint["rng"], shuffle, augment)
        history, start_epoch = checkpoint["history"], checkpoint["epoch"]
        train_seconds = sum(record["epoch_seconds"] for record in history)

    autocast = autocast_for(device, config.precision)
    model.train()
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if config.patience is not None and history and epochs_without_improvement(history) >= config.patience:
            break  # early stopping (checked here, so that a resumed run that had stopped stays stopped)
        order = torch.randperm(len(data.train_labels), generator=shuffle).to(device)
        loss_sum = torch.zeros((), device=device)
        _sync(device)
        started = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress or parallel.rank() > 0,
                   leave=False, file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            images = data.prepare(data.train_images[batch], augment).contiguous(memory_format=fmt)
            loss = method.step(model, images, data.train_labels[batch], config, autocast)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss
            if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == steps_per_epoch:
                value = loss_sum.item() / (step + 1)  # non-finite if any step's loss was
                if not math.isfinite(value):
                    kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {checkpoint_dir}"
                            if checkpoint_dir is not None and epoch > 1 else "no checkpoint was written")
                    raise NonFiniteLoss(f"the loss became {value} in epoch {epoch} (by step {step + 1}); "
                                        f"{kept}; try a smaller --lr")
                bar.set_postfix(loss=f"{value:.4f}")
        _sync(device)
        epoch_seconds = time.perf_counter() - started
        train_seconds += epoch_seconds
        started = time.perf_counter()
        if parallel.active():  # every rank gets the whole network and optimiser state, to evaluate and save
            parallel.share_modules(model, optimizer)
        record = {"epoch": epoch, "train_loss": loss_sum.item() / steps_per_epoch}
        if config.val_split:  # every epoch's, so that the epoch can be chosen on it rather than on the test set
            record["val_acc"] = evaluate(model, data, autocast, method.predict, split="val")
        tested = config.test_epochs == "all" or reported_epoch(history, record, config)
        record["test_acc"] = evaluate(model, data, autocast, method.predict) if tested else None
        if config.track_train_acc:  # how far the network fits the labels it was given (memorisation of noise)
            record["train_acc"] = evaluate(model, data, autocast, method.predict, split="train")
        record |= {"epoch_seconds": epoch_seconds, "eval_seconds": time.perf_counter() - started,
                   "lr": optimizer.param_groups[0]["lr"]}
        history.append(record)
        if checkpoint_dir is not None and parallel.rank() == 0:
            Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
            save_torch(Path(checkpoint_dir) / CHECKPOINT_NAME, {
                "config": config.to_dict(), "epoch": epoch, "history": history, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": _rng_state(shuffle, augment)})
        if on_epoch_end is not None:
            on_epoch_end(record)

    return model, {"config": config.to_dict(), "history": history,
            "final_test_acc": history[-1]["test_acc"] if history else None,
            **(validation_summary(history) if config.val_split and history else {}),
            "train_seconds": train_seconds, "environment": environment(device)}


def reported_epoch(history: list[dict], record: dict, config: TrainConfig) -> bool:
    """Whether a run reports ``record``'s epoch (coming after ``history``): a new best validation
    accuracy, which early stopping may keep, or the last epoch, by the cap or by the patience. Only
    these need the test set, so ``test_epochs="reported"`` skips it elsewhere; the training itself,
    which never reads the test set, is the same either way."""
    after = history + [record]
    return (best_validation_epoch(after) is record or record["epoch"] == config.epochs
            or (config.patience is not None and epochs_without_improvement(after) >= config.patience))


def best_validation_epoch(history: list[dict]) -> dict:
    """The first epoch of highest validation accuracy: the checkpoint early stopping keeps."""
    return max(history, key=lambda record: (record["val_acc"], -record["epoch"]))


def epochs_without_improvement(history: list[dict]) -> int:
    """Epochs trained since the first epoch of best validation accuracy (0 when the last epoch is it)."""
    return history[-1]["epoch"] - best_validation_epoch(history)["epoch"]


def validation_summary(history: list[dict]) -> dict:
    """What model selection on the validation split reports: the best-validation epoch, its test
    accuracy (what the early-stopped network scores), and the last epoch's validation accuracy. The
    network the loop returns and checkpoints is the last epoch's, not the best one's."""
    best = best_validation_epoch(history)
    return {"final_val_acc": history[-1]["val_acc"], "best_val_epoch": best["epoch"], "best_val_acc": best["val_acc"],
            "best_val_test_acc": best["test_acc"], "epochs_trained": history[-1]["epoch"]}
