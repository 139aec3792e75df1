"""Measure a training step: its time, its stages' times, and the peak bytes autograd holds in saved tensors.

Saved tensors are what backpropagation keeps from the forward pass (activation memory).
``SavedTensorMeter`` counts them through ``torch.autograd.graph.saved_tensors_hooks``, so
it works on any device, the CPU included; parameters are left out (they are held anyway),
and a storage saved several times is counted once.
"""
from __future__ import annotations

import statistics
import time
import weakref
from contextlib import contextmanager
from dataclasses import replace

import torch

from .config import TrainConfig
from .data import DATASETS
from .methods import METHODS
from .models import BeliefCascade, build_model
from .perf import keep_freed_memory
from .train import autocast_for, make_optimizer, memory_format_for


def synchronized_time(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class StageClock:
    """The ``clock`` a method's step marks its stages with (``sidlib.methods.stages``), timing each.

    ``times[stage]`` is the stage's seconds in the last step, or for an indexed stage the list of
    its seconds by index. The device is synchronised at every boundary, so each stage is timed on
    its own (as the SID paper's appendix B.3 times them), not overlapped with its neighbours.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[str, float | dict[int, float]] = {}

    @contextmanager
    def __call__(self, stage: str, index: int | None = None):
        started = synchronized_time(self.device)
        yield
        elapsed = synchronized_time(self.device) - started
        if index is None:
            self.times[stage] = self.times.get(stage, 0.0) + elapsed
        else:
            self.times.setdefault(stage, {})[index] = elapsed

    def reset(self) -> dict[str, float | list[float]]:
        """The stage times of the step just run (indexed stages as lists), and a clean clock."""
        out = {stage: [t[i] for i in sorted(t)] if isinstance(t, dict) else t for stage, t in self.times.items()}
        self.times = {}
        return out


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
    model = build_model(config.model, info.input_shape, info.num_classes, config.depth, config.head, config.width,
                        config.belief_input)
    METHODS[config.method].prepare(model, config)
    fmt = memory_format_for(model)
    model.to(device=device, memory_format=fmt)
    optimizer = make_optimizer(model, config.lr, config.optimizer, config.weight_decay)
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


def memory_breakdown(config: TrainConfig, batch_size: int, device: torch.device) -> dict[str, int]:
    """Bytes of one training step of ``config.method``, by what holds them: the peak of saved tensors
    (activations), the parameters, their gradients (one per parameter, for every method here), the
    optimiser's state, and buffers (batch-norm statistics, SLL's fixed projections); ``total`` is
    their sum, the memory a step needs besides the input batch and transient workspace. On CUDA,
    ``cuda_peak_allocated`` is what the allocator actually reached during the step."""
    model, optimizer, images, labels = _setup(config, batch_size, device)
    autocast = autocast_for(device, config.precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with SavedTensorMeter(exclude=list(model.parameters())) as meter:
        _train_step(config, model, optimizer, images, labels, autocast)
    nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    state = [v for per_param in optimizer.state.values() for v in per_param.values() if torch.is_tensor(v)]
    out = {"saved": meter.peak, "parameters": nbytes(model.parameters()),
           "gradients": nbytes(p for p in model.parameters() if p.requires_grad), "optimizer": nbytes(state),
           "buffers": nbytes(model.buffers())}
    out["total"] = sum(out.values())
    if device.type == "cuda":
        out["cuda_peak_allocated"] = torch.cuda.max_memory_allocated(device)
    return out


def module_saved_bytes(config: TrainConfig, batch_size: int, device: torch.device) -> int:
    """Saved-tensor bytes of one refinement module's forward pass: the unit 'one module's worth'."""
    model, _, images, _ = _setup(replace(config, depth=1), batch_size, device)
    if not isinstance(model, BeliefCascade):
        raise ValueError(f"{config.model} with a linear head has no refinement modules")
    features = model.extractor(images).detach().requires_grad_()
    belief = model.uniform_belief(features)
    with SavedTensorMeter(exclude=list(model.parameters())) as meter, autocast_for(device, config.precision)():
        output = model.module_input(model.module_logits(0, belief, features).float())
    del output
    return meter.peak


# names bench takes beside the methods': a method with options that change how its step computes
VARIANTS = {"sid-batched": {"method": "sid", "sid_phase2": "batched"}}


def variant_config(base: TrainConfig, name: str, **changes) -> TrainConfig:
    """``base`` for method ``name``, or for one of the ``VARIANTS``."""
    return replace(base, **VARIANTS.get(name, {"method": name}), **changes)


def run(depths, methods=("sid", "bp"), batch_size=128, steps=10, warmup=3, base: TrainConfig | None = None,
        device: torch.device | None = None):
    """Time ``steps`` training steps of each method at each depth, interleaving the methods so the
    ratios compare like with like, and measure each one's peak saved bytes. Returns records."""
    base = base or TrainConfig()
    device = device or base.resolved_device()
    if device.type == "cpu":
        keep_freed_memory()  # as train() does, so the bench times what training sees
    records = []
    for depth in depths:  # None: a model without refinement modules, whose depth means nothing
        configs = {m: variant_config(base, m, depth=base.depth if depth is None else depth) for m in methods}
        setups = {m: _setup(configs[m], batch_size, device) for m in methods}
        autocast = autocast_for(device, base.precision)
        times = {m: [] for m in methods}
        for repeat in range(warmup + steps):
            for m in methods:
                started = synchronized_time(device)
                _train_step(configs[m], *setups[m], autocast)
                if repeat >= warmup:
                    times[m].append(synchronized_time(device) - started)
        for m in methods:
            records.append({"model": base.model, "method": m, "depth": depth,
                            "parameters": sum(p.numel() for p in setups[m][0].parameters()),
                            "step_seconds": statistics.median(times[m]),
                            "peak_saved_bytes": peak_saved_bytes(configs[m], batch_size, device)})
    return records


# ---------------------------------------------------------------- module-parallel SID (sidlib.parallel)

def time_steps_in_process_group(config: TrainConfig, batch_size: int, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` training steps (after ``warmup``) of ``config`` in the process group
    ``torchrun`` started (or in this process alone): every rank runs the step between two barriers, so
    a step lasts as long as its slowest rank. One thread per rank."""
    import torch.distributed as dist

    from . import parallel

    torch.set_num_threads(1)
    device = config.resolved_device()
    parallel.init_from_environment(device)
    if device.type == "cpu":
        keep_freed_memory()
    model, optimizer, images, labels = _setup(config, batch_size, device)  # the same on every rank (seeded)
    autocast = autocast_for(device, config.precision)
    times = []
    for repeat in range(warmup + steps):
        if parallel.active():
            dist.barrier()
        started = synchronized_time(device)
        _train_step(config, model, optimizer, images, labels, autocast)
        if parallel.active():
            dist.barrier()
        if repeat >= warmup:
            times.append(synchronized_time(device) - started)
    if parallel.active():
        parallel.leave()
    return times


def run_ranks(depths, ranks=(1, 2), batch_size=128, steps=10, warmup=3, rounds=3, base: TrainConfig | None = None,
              log=print) -> list[dict]:
    """Steps per second of module-parallel SID at each number of processes in ``ranks`` (one thread each,
    launched by ``torchrun``), beside one-process BP and the speed-up that ``sidlib.analysis.profiling``
    projects from SID's and BP's stage times measured here (one thread). The launches alternate between
    the rank counts over ``rounds`` rounds, so that a slow spell of the machine hits all of them; each
    record's step time is the median over rounds of each launch's median step."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    from .analysis import profiling

    base = base or TrainConfig()
    launches = [("bp", 1)] + [("sid", r) for r in ranks]
    medians = {(depth, method, r): [] for depth in depths for method, r in launches}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(rounds):
            for depth in depths:
                for method, r in launches:
                    config = replace(base, method=method, depth=depth)
                    out = os.path.join(scratch, "times.json")
                    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(r),
                               "--master-port", str(29400 + os.getpid() % 500), "-m", "sidlib.parallel",
                               json.dumps(config.to_dict()), str(batch_size), str(steps), str(warmup), out]
                    done = subprocess.run(command, capture_output=True, text=True,
                                          env={**os.environ, "OMP_NUM_THREADS": "1"})
                    if done.returncode != 0:
                        raise RuntimeError(f"{method} on {r} processes at depth {depth} failed:\n{done.stderr[-2000:]}")
                    with open(out) as f:
                        medians[(depth, method, r)].append(statistics.median(json.load(f)))
                    log(f"round {round_ + 1}/{rounds}: depth {depth}, {method} on {r} process(es): "
                        f"{1000 * medians[(depth, method, r)][-1]:.2f} ms a step")
    torch.set_num_threads(1)
    records = []
    for depth in depths:
        config = replace(base, method="sid", depth=depth)
        model, _, images, labels = _setup(config, batch_size, torch.device("cpu"))
        costs = {m: profiling.measure_costs(m, model, images, labels, config, repeats=steps, warmup=warmup)
                 for m in ("bp", "sid")}
        one = statistics.median(medians[(depth, "sid", 1)]) if 1 in ranks else None
        bp = statistics.median(medians[(depth, "bp", 1)])
        projected_sid = {(acc, r): profiling.projected_times(costs["bp"], costs["sid"], r, acc)[1]
                         for acc in ("modules", "extractor") for r in {1, *ranks}}
        for r in ranks:
            seconds = statistics.median(medians[(depth, "sid", r)])
            records.append({"model": base.model, "depth": depth, "processes": r, "step_seconds": seconds,
                            "steps_per_second": 1 / seconds, "rounds": medians[(depth, "sid", r)],
                            "speedup_over_one_process": None if one is None else one / seconds,
                            "projected_speedup_over_one_process": {acc: projected_sid[(acc, 1)] / projected_sid[(acc, r)]
                                                                   for acc in ("modules", "extractor")},
                            "bp_step_seconds": bp, "speedup_over_bp": bp / seconds,
                            "projected_speedup_over_bp": {acc: profiling.projected_speedup(costs["bp"], costs["sid"], r, acc)
                                                          for acc in ("modules", "extractor")}})
    return records
