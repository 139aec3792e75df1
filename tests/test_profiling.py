"""Proposition 3's projection model against hand computations, and the stage timing of the real
training steps (which must not change what they compute)."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from helpers import config, grads, no_autocast, tiny_problem
from sidlib import bench
from sidlib.analysis import profiling
from sidlib.methods import METHODS, bp
from sidlib.models import build_model


def costs(method, forward, backward, extractor=(0.0, 0.0), teacher=0.0):
    return profiling.StepCosts(method=method, extractor_forward=extractor[0], extractor_backward=extractor[1],
                               module_forward=list(forward), module_backward=list(backward), teacher_pass=teacher)


def test_even_partition_is_contiguous_balanced_and_complete():
    for modules in range(1, 12):
        for devices in range(1, 14):
            groups = profiling.even_partition(modules, devices)
            assert [i for g in groups for i in g] == list(range(modules))
            assert len(groups) == min(modules, devices)
            sizes = [len(g) for g in groups]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    assert profiling.even_partition(5, 2) == [[0, 1, 2], [3, 4]]
    with pytest.raises(ValueError):
        profiling.even_partition(0, 2)


def test_busiest_device_by_hand():
    work = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert profiling.busiest_device_time(work, 1) == 15.0
    assert profiling.busiest_device_time(work, 2) == 9.0    # [1, 2, 3] | [4, 5]
    assert profiling.busiest_device_time(work, 3) == 7.0    # [1, 2] | [3, 4] | [5]
    assert profiling.busiest_device_time(work, 5) == 5.0    # one module each: max_i
    assert profiling.busiest_device_time(work, 50) == 5.0   # idle devices change nothing


def test_projection_formulas_by_hand():
    bp_costs = costs("bp", [1, 1, 1, 1], [2, 2, 2, 2], extractor=(10, 20))
    sid_costs = costs("sid", [0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4], extractor=(11, 21), teacher=3)
    # modules only: T_BP = 4 * (1 + 2) = 12; W = [1.5, 2.5, 3.5, 4.5]; P = 2 -> [1.5 + 2.5, 3.5 + 4.5] -> 8
    assert profiling.projected_times(bp_costs, sid_costs, 2, "modules") == (12, 3 + 8)
    assert profiling.projected_times(bp_costs, sid_costs, 4, "modules") == (12, 3 + 4.5)
    assert profiling.projected_times(bp_costs, sid_costs, 4, "modules", local_forward_in_parallel=False) == (12, 3 + 4)
    assert profiling.projected_times(bp_costs, sid_costs, 1, "modules") == (12, 3 + 12)
    # with the extractor: both add forward and backward
    assert profiling.projected_times(bp_costs, sid_costs, 4, "extractor") == (12 + 30, 3 + 4.5 + 32)
    # the appendix as written: no extractor backward for SID
    assert profiling.projected_times(bp_costs, sid_costs, 4, "appendix") == (12 + 30, 3 + 4.5 + 11)
    assert profiling.projected_speedup(bp_costs, sid_costs, 4, "modules") == pytest.approx(12 / 7.5)
    with pytest.raises(ValueError):
        profiling.projected_times(bp_costs, costs("sid", [1], [1]), 2)
    with pytest.raises(ValueError):
        profiling.projected_times(bp_costs, sid_costs, 2, "everything")


def test_proposition_3_limit_one_device_per_module():
    # P >= L: T_SID = sum_i F_i + max_i B_i exactly, as Proposition 3 states.
    forward, backward = [0.3, 0.1, 0.2], [0.5, 0.9, 0.4]
    sid_costs = costs("sid", [0.0] * 3, backward, teacher=sum(forward))
    bp_costs = costs("bp", forward, backward)
    t_bp, t_sid = profiling.projected_times(bp_costs, sid_costs, 3, "modules")
    assert t_bp == pytest.approx(sum(forward) + sum(backward))
    assert t_sid == pytest.approx(sum(forward) + max(backward))


def test_bp_on_a_cascade_cut_at_module_boundaries_is_plain_backprop_bit_for_bit():
    model, images, labels = tiny_problem(depth=4)
    loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    loss.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    staged = bp.step(model, images, labels, config(method="bp", label_smoothing=0.1), no_autocast)
    assert torch.equal(staged, loss.detach())
    for name, g in grads(model).items():
        assert torch.equal(g, expected[name]), name


@pytest.mark.parametrize("method,kl,smoothing", [("bp", "forward", 0.1), ("sid", "forward", 0.0), ("sid", "reverse", 0.1)])
def test_timing_the_stages_changes_no_gradient(method, kl, smoothing):
    model, images, labels = tiny_problem(depth=3)
    cfg = config(method=method, kl=kl, label_smoothing=smoothing, alpha=0.3)
    step = METHODS[method].step
    step(model, images, labels, cfg, no_autocast)
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    clock = bench.StageClock(torch.device("cpu"))
    step(model, images, labels, cfg, no_autocast, clock)
    for name, g in grads(model).items():
        assert torch.equal(g, expected[name]), name
    times = clock.reset()
    stages = {"extractor_forward", "module_forward", "module_backward", "extractor_backward"}
    assert set(times) == (stages | {"teacher_pass"} if method == "sid" else stages)
    assert len(times["module_forward"]) == len(times["module_backward"]) == 3
    assert clock.times == {}


def test_measured_costs_are_positive_and_shaped():
    model, images, labels = tiny_problem(depth=3, batch=8)
    cfg = config(label_smoothing=0.1)
    for method in ("bp", "sid"):
        c = profiling.measure_costs(method, model, images, labels, cfg, repeats=2, warmup=0)
        profiling.check_costs(c)
        assert c.depth == 3 and len(c.module_backward) == 3 and len(c.samples["module_forward"]) == 2
        assert all(math.isfinite(v) for v in c.module_forward)
        assert c.extractor_forward == min(c.samples["extractor_forward"])
        assert (c.teacher_pass > 0) == (method == "sid")
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        profiling.check_costs(costs("bp", [1e-3, 0.0], [1e-3, 1e-3], extractor=(1.0, 1.0)))
    with pytest.raises(ValueError):
        profiling.measure_costs("sll", model, images, labels, cfg)
    with pytest.raises(ValueError, match="cascade"):
        profiling.measure_costs("bp", build_model("mlp-2x800", (1, 12, 12), 10), images, labels, cfg)


def test_memory_model_of_proposition_3_on_the_simplecnn():
    # BP keeps one more module's activations per module; SID keeps the extractor and one module.
    cfg = config(label_smoothing=0.1)
    cpu = torch.device("cpu")
    module = bench.module_saved_bytes(cfg, 16, cpu)
    peak = {(m, d): bench.peak_saved_bytes(replace(cfg, method=m, depth=d), 16, cpu) for m in ("bp", "sid") for d in (2, 3, 6)}
    assert peak[("bp", 3)] - peak[("bp", 2)] == module
    assert peak[("bp", 6)] - peak[("bp", 2)] == 4 * module
    assert peak[("sid", 2)] == peak[("sid", 3)] == peak[("sid", 6)]
    model, images, _ = tiny_problem(depth=2, batch=16)
    extractor = profiling.extractor_saved_bytes(model, images)
    assert extractor < peak[("sid", 2)] < extractor + 2 * module


def test_multiply_adds_by_hand():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(8, 4, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2, 5))
    x = torch.randn(7, 3, 8, 8)  # the batch size must not matter
    expected = 8 * 8 * 8 * 3 * 9 + 4 * 2 * 2 * 4 * 9 + 5 * 16
    assert profiling.multiply_adds(net, x) == expected
    model, images, _ = tiny_problem(depth=2, shape=(1, 28, 28))
    features = model.extractor(images)
    module = profiling.multiply_adds(model.blocks[0], model.uniform_belief(features), features)
    assert module == (10 + 128) * 256 + 256 * 10
    extractor = profiling.multiply_adds(model.extractor, images)
    assert extractor == 28 * 28 * 32 * 9 + 28 * 28 * 64 * 32 * 9 + 14 * 14 * 128 * 64 * 9 + 14 * 14 * 128 * 128 * 9 + 128 * 128
