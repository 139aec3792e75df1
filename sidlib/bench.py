"""Measure a training step: its time, and the peak bytes autograd holds in saved tensors.

Saved tensors are what backpropagation keeps from the forward pass (activation memory).
``SavedTensorMeter`` counts them through ``torch.autograd.graph.saved_tensors_hooks``, so
it works on any device, the CPU included; parameters are left out (they are held anyway),
and a storage saved several times is counted once.
"""
from __future__ import annotations

import statistics
import time
import weakref
from dataclasses import replace

import torch

from .config import TrainConfig
from .data import DATASETS
from .methods import METHODS
from .models import build_model
from .perf import keep_freed_memory
from .train import autocast_for, make_optimizer, memory_format_for


class SavedTensorMeter:
    """Context manager tracking the bytes of autograd's saved tensors alive at each moment."""

    def __init__(self, exclude=()):
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.refs: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.excluded or storage.nbytes() == 0:
            return tensor
        if self.refs.get(key, 0) == 0:
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
        self.refs[key] = self.refs.get(key, 0) + 1
        handle = _Saved(tensor)
        weakref.finalize(handle, self._release, key, storage.nbytes())
        return handle

    def _release(self, key, nbytes):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.current -= nbytes

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Saved) else packed

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def _setup(config: TrainConfig, batch_size: int, device: torch.device):
    info = DATASETS[config.dataset]
    torch.manual_seed(config.seed)
    model = build_model(config.model, info.input_shape, info.num_classes, config.depth)
    fmt = memory_format_for(model)
    model.to(device=device, memory_format=fmt)
    optimizer = make_optimizer(model, config.lr)
    images = torch.randn(batch_size, *info.input_shape, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, info.num_classes, (batch_size,), device=device)
    return model, optimizer, images, labels


def _train_step(config, model, optimizer, images, labels, autocast):
    METHODS[config.method].step(model, images, labels, config, autocast)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_saved_bytes(config: TrainConfig, batch_size: int, device: torch.device) -> int:
    """Peak bytes of saved tensors during one training step of ``config.method``."""
    model, optimizer, images, labels = _setup(config, batch_size, device)
    autocast = autocast_for(device, config.precision)
    with SavedTensorMeter(exclude=list(model.parameters())) as meter:
        _train_step(config, model, optimizer, images, labels, autocast)
    return meter.peak


def module_saved_bytes(config: TrainConfig, batch_size: int, device: torch.device) -> int:
    """Saved-tensor bytes of one refinement module's forward pass: the unit 'one module's worth'."""
    model, _, images, _ = _setup(replace(config, depth=1), batch_size, device)
    features = model.extractor(images).detach().requires_grad_()
    belief = model.uniform_belief(features)
    with SavedTensorMeter(exclude=list(model.parameters())) as meter, autocast_for(device, config.precision)():
        output = torch.softmax(model.blocks[0](belief, features).float(), dim=1)
    del output
    return meter.peak


def run(depths, methods=("sid", "bp"), batch_size=128, steps=10, warmup=3, base: TrainConfig | None = None,
        device: torch.device | None = None):
    """Time ``steps`` training steps of each method at each depth, interleaving the methods so the
    ratios compare like with like, and measure each one's peak saved bytes. Returns records."""
    base = base or TrainConfig()
    device = device or base.resolved_device()
    if device.type == "cpu":
        keep_freed_memory()  # as train() does, so the bench times what training sees
    records = []
    for depth in depths:
        configs = {m: replace(base, method=m, depth=depth) for m in methods}
        setups = {m: _setup(configs[m], batch_size, device) for m in methods}
        autocast = autocast_for(device, base.precision)
        times = {m: [] for m in methods}
        for repeat in range(warmup + steps):
            for m in methods:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                started = time.perf_counter()
                _train_step(configs[m], *setups[m], autocast)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat >= warmup:
                    times[m].append(time.perf_counter() - started)
        for m in methods:
            records.append({"method": m, "depth": depth, "step_seconds": statistics.median(times[m]),
                            "peak_saved_bytes": peak_saved_bytes(configs[m], batch_size, device)})
    return records
