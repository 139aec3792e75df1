"""Proposition 3 of the SID paper, measured: the cost of each stage of one training step, and the
paper's projection of those costs onto P devices (its appendix B.3).

With F_i, B_i the forward and backward time of refinement module i, Proposition 3 states

    T_BP  = sum_i (F_i + B_i)                                   (everything in sequence)
    T_SID = sum_i F_i + max_i B_i                               (one device per module)

and the profiling model of appendix B.3 spreads the L modules evenly over P devices, ignores
communication, and replaces max_i B_i by the busiest device's share of the backward work:

    T_SID(P) = T_teacher + max_d sum_{i on device d} B_i,        speedup = T_BP / T_SID(P).

Proposition 3 leaves out the shared extractor g_phi, which every module reads and which is
trained by ordinary backpropagation in both methods. ``projected_times`` computes the times as
the paper's proposition does (modules only), with the extractor's forward and backward added to
both methods (in sequence: its backward needs the feature gradients of every module), and as
the appendix's formula reads (see ``ACCOUNTINGS``).

The stages are timed on one device, each on its own, as the paper's appendix B.3 describes, and
they are the training steps themselves: ``measure_costs`` runs ``sidlib.methods.bp.step`` (which
cuts BP at module boundaries) and ``sidlib.methods.sid.step`` with a ``sidlib.bench.StageClock``
that times the stages each step marks, repeats them and summarises.
"""
from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..bench import SavedTensorMeter, StageClock
from ..methods import METHODS
from ..models import BeliefCascade


@dataclass
class StepCosts:
    """The cost of each stage of one training step: seconds summarised over repeats when measured
    (``measure_costs``), or any other unit of cost (the projection only adds and compares).

    BP:  ``module_forward[i]`` is F_i (module i and its softmax, or the loss for the last module),
         ``module_backward[i]`` is B_i (the backward through those same operations).
    SID: ``teacher_pass`` is the gradient-free cascade over the modules (about sum_i F_i;
         ``sidlib.methods.sid.teacher_logits`` runs all L and drops p_L);
         ``module_forward[i]`` / ``module_backward[i]`` are module i's local loss, forward with
         gradients and its backward, each timed in isolation.
    Both: ``extractor_forward`` (SID: the feature recompute with gradients) and ``extractor_backward``.
    """
    method: str
    extractor_forward: float
    extractor_backward: float
    module_forward: list[float]
    module_backward: list[float]
    teacher_pass: float = 0.0
    samples: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def depth(self) -> int:
        return len(self.module_forward)


# ---------------------------------------------------------------- the projection model (pure formulas)

def even_partition(num_modules: int, devices: int) -> list[list[int]]:
    """Modules 0..L-1 cut into ``min(devices, L)`` contiguous groups whose sizes differ by at most one
    (the larger groups first): the paper's "modules evenly distributed"."""
    if num_modules < 1 or devices < 1:
        raise ValueError(f"need at least one module and one device, got {num_modules} and {devices}")
    groups = min(devices, num_modules)
    size, extra = divmod(num_modules, groups)
    bounds = [0]
    for g in range(groups):
        bounds.append(bounds[-1] + size + (1 if g < extra else 0))
    return [list(range(bounds[g], bounds[g + 1])) for g in range(groups)]


def busiest_device_time(work: list[float], devices: int) -> float:
    """max over devices d of sum_{i on d} work_i, with the modules spread by ``even_partition``."""
    return max(sum(work[i] for i in group) for group in even_partition(len(work), devices))


def bp_time(forward: list[float], backward: list[float]) -> float:
    """T_BP = sum_i (F_i + B_i): the forward and backward chains run strictly in sequence."""
    if len(forward) != len(backward):
        raise ValueError("one forward and one backward cost per module")
    return sum(forward) + sum(backward)


def sid_time(teacher_pass: float, parallel_work: list[float], devices: int) -> float:
    """T_SID(P) = T_teacher + max_d sum_{i on d} W_i: the teacher pass in sequence, then every
    device runs its modules' local work while the others run theirs (communication ignored)."""
    return teacher_pass + busiest_device_time(parallel_work, devices)


ACCOUNTINGS = ("modules", "extractor", "appendix")


def projected_times(bp: StepCosts, sid: StepCosts, devices: int, accounting: str = "modules",
                    local_forward_in_parallel: bool = True) -> tuple[float, float]:
    """(T_BP, T_SID) projected onto ``devices`` devices from measured costs, W_i module i's local work.

    ``modules`` (the paper's Proposition 3 and Figure 3; the extractor left out):
        T_BP = sum_i (F_i + B_i),                T_SID = T_teacher + max_d sum_{i on d} W_i.
    ``extractor`` (ours: the shared extractor's forward and backward added to both; neither method
    can spread them, and SID's extractor backward waits for every module's feature gradient):
        T_BP = E_F + sum_i (F_i + B_i) + E_B,    T_SID = E_F + T_teacher + max_d sum_{i on d} W_i + E_B.
    ``appendix`` (the formula of the paper's appendix B.3 as its text reads: BP's whole forward and
    backward, SID's feature recompute, teacher pass and parallel phase, and no extractor backward):
        T_BP = E_F + sum_i (F_i + B_i) + E_B,    T_SID = E_F + T_teacher + max_d sum_{i on d} W_i.

    W_i = local forward with gradients + backward (phase 2 of the paper's Algorithm 2 runs both,
    the teacher pass keeping no graph); ``local_forward_in_parallel=False`` gives W_i = B_i alone,
    the paper's "backward in isolation".
    """
    if bp.depth != sid.depth:
        raise ValueError(f"BP measured at depth {bp.depth}, SID at depth {sid.depth}")
    if accounting not in ACCOUNTINGS:
        raise ValueError(f"unknown accounting {accounting!r}; choose from {ACCOUNTINGS}")
    work = [f + b for f, b in zip(sid.module_forward, sid.module_backward)] if local_forward_in_parallel \
        else list(sid.module_backward)
    t_bp = bp_time(bp.module_forward, bp.module_backward)
    t_sid = sid_time(sid.teacher_pass, work, devices)
    if accounting in ("extractor", "appendix"):
        t_bp += bp.extractor_forward + bp.extractor_backward
        t_sid += sid.extractor_forward
    if accounting == "extractor":
        t_sid += sid.extractor_backward
    return t_bp, t_sid


def projected_speedup(bp: StepCosts, sid: StepCosts, devices: int, accounting: str = "modules",
                      local_forward_in_parallel: bool = True) -> float:
    """T_BP / T_SID(P), the speedup of the paper's appendix B.3, under ``accounting``."""
    t_bp, t_sid = projected_times(bp, sid, devices, accounting, local_forward_in_parallel)
    return t_bp / t_sid


# ---------------------------------------------------------------- measuring the stages

SUMMARIES = {"min": min, "median": statistics.median}


def _summarise(samples: dict[str, list], summary: str) -> dict[str, float | list[float]]:
    reduce = SUMMARIES[summary]
    out = {}
    for name, values in samples.items():
        if values and isinstance(values[0], list):
            out[name] = [reduce(column) for column in zip(*values)]
        else:
            out[name] = reduce(values)
    return out


def measure_costs(method: str, model, images: Tensor, labels: Tensor, config, repeats: int = 5, warmup: int = 1,
                  summary: str = "min") -> StepCosts:
    """Stage times of ``repeats`` training steps of ``method`` ("bp" or "sid") after ``warmup`` untimed
    ones, each stage summarised over the repeats by ``summary``. The default, the minimum, estimates
    the cost of the computation itself: on a shared machine interruptions only ever add time.

    The steps are the methods' own (``sidlib.methods.bp.cascade_step``, ``sidlib.methods.sid.step``),
    run with a ``StageClock`` that times the stages they mark; ``config`` supplies their options
    (alpha, KL direction, label smoothing, extractor strategy). Gradients are cleared between
    steps; parameters are not updated (timing only). ``model`` must be a belief cascade."""
    if summary not in SUMMARIES:
        raise ValueError(f"unknown summary {summary!r}; choose from {tuple(SUMMARIES)}")
    if method not in ("bp", "sid"):
        raise ValueError(f"unknown method {method!r}; choose 'bp' or 'sid'")
    if not isinstance(model, BeliefCascade):
        raise ValueError("Proposition 3's stages are those of a belief cascade; build the model with head='cascade'")
    clock = StageClock(images.device)
    step = METHODS[method].step
    samples: dict[str, list] = {}
    for repeat in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        step(model, images, labels, config, nullcontext, clock)
        stages = clock.reset()
        if repeat >= warmup:
            for name, value in stages.items():
                samples.setdefault(name, []).append(value)
    model.zero_grad(set_to_none=True)
    return StepCosts(method=method, samples=samples, **_summarise(samples, summary))


def check_costs(costs: StepCosts) -> None:
    """Raise if a measured time is not a positive finite number (a broken timer, not noise)."""
    values = [costs.extractor_forward, costs.extractor_backward, *costs.module_forward, *costs.module_backward]
    if costs.method == "sid":
        values.append(costs.teacher_pass)
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"{costs.method}: non-positive or non-finite stage times {bad}")


# ---------------------------------------------------------------- memory

def extractor_saved_bytes(model, images: Tensor) -> int:
    """Bytes autograd saves for the backward of the shared extractor alone (parameters left out)."""
    with SavedTensorMeter(exclude=list(model.parameters())) as meter:
        features = model.extractor(images)
    del features
    return meter.peak


# ---------------------------------------------------------------- arithmetic (a noise-free cross-check)

def multiply_adds(module: torch.nn.Module, *inputs: Tensor) -> int:
    """Multiply-adds per sample of one forward pass through the convolutions and linear layers of
    ``module`` (the bulk of the arithmetic; activations, pooling and softmax are left out):
    a convolution costs (output elements) x (input channels / groups) x (kernel size), a linear
    layer (output elements) x (input features)."""
    total = 0

    def count(layer, args, output):
        nonlocal total
        per_sample = output[0].numel()
        if isinstance(layer, torch.nn.modules.conv._ConvNd):
            total += per_sample * (layer.in_channels // layer.groups) * math.prod(layer.kernel_size)
        else:
            total += per_sample * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules()
             if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return total
