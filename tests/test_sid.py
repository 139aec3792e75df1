"""SID's step: gradient isolation, extractor strategies, and the memory-lean step's exactness."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from helpers import CLASSES, SHAPE, config, grads, no_autocast, tiny_problem
from sidlib import bench
from sidlib.models import build_model
from sidlib.divergences import sid_objective, smoothed_target_log_beliefs
from sidlib.methods import sid


def reference_local_loss(model, images, labels, i, cfg):
    """Module i's local loss written out independently: a detached teacher from a plain forward
    pass, and torch's own kl_div for the forward direction."""
    features = model.extractor(images)
    with torch.no_grad():
        all_logits = model.refine(features)
    teacher = torch.full((len(labels), CLASSES), 1.0 / CLASSES) if i == 0 else torch.softmax(all_logits[i - 1], 1)
    log_q = torch.log_softmax(model.blocks[i](teacher, features), 1)
    target = F.one_hot(labels, CLASSES).float() * (1 - cfg.label_smoothing) + cfg.label_smoothing / CLASSES
    if cfg.kl == "forward":
        return (cfg.alpha * F.kl_div(log_q, target, reduction="batchmean")
                + (1 - cfg.alpha) * F.kl_div(log_q, teacher, reduction="batchmean"))
    q = log_q.exp()
    return (cfg.alpha * (q * (log_q - target.log())).sum(1)
            + (1 - cfg.alpha) * (q * (log_q - teacher.log())).sum(1)).mean()


def one_backward_step(model, images, labels, cfg):
    """The textbook formulation: sum all local losses, one backward through everything."""
    features = model.extractor(images)
    teachers = sid.teacher_logits(model, features.detach())
    log_target = smoothed_target_log_beliefs(labels, CLASSES, cfg.label_smoothing)
    if cfg.extractor == "frozen":
        features = features.detach()
    losses = sid.local_losses(model, features, teachers, log_target, cfg, no_autocast, backward=False)
    torch.stack(losses).sum().backward()


@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_each_module_gets_only_its_own_local_gradient(kl):
    cfg = config(kl=kl, label_smoothing=0.1, alpha=0.3)
    model, images, labels = tiny_problem()
    sid.step(model, images, labels, cfg, no_autocast)
    got = grads(model)
    for i, block in enumerate(model.blocks):
        loss = reference_local_loss(model, images, labels, i, cfg)
        expected = torch.autograd.grad(loss, list(block.parameters()))
        for (name, _), g in zip(block.named_parameters(), expected):
            assert torch.allclose(got[f"blocks.{i}.{name}"], g, atol=1e-6, rtol=1e-4), (i, name)


@pytest.mark.parametrize("strategy", ["all", "final_layer", "frozen"])
def test_extractor_gradient_follows_the_strategy(strategy):
    cfg = config(extractor=strategy, label_smoothing=0.1)
    model, images, labels = tiny_problem()
    sid.step(model, images, labels, cfg, no_autocast)
    got = grads(model)
    extractor = list(model.extractor.parameters())
    names = [f"extractor.{n}" for n, _ in model.extractor.named_parameters()]
    if strategy == "frozen":
        assert all(got[n] is None for n in names)
        return
    contributing = range(model.depth) if strategy == "all" else [model.depth - 1]
    total = sum(reference_local_loss(model, images, labels, i, cfg) for i in contributing)
    expected = torch.autograd.grad(total, extractor)
    for n, g in zip(names, expected):
        assert torch.allclose(got[n], g, atol=1e-6, rtol=1e-4), n
    if strategy == "final_layer":  # and not the sum over all modules
        everything = torch.autograd.grad(sum(reference_local_loss(model, images, labels, i, cfg)
                                             for i in range(model.depth)), extractor)
        assert not torch.allclose(everything[-1], got[names[-1]], atol=1e-6)


@pytest.mark.parametrize("strategy", ["all", "final_layer", "frozen"])
@pytest.mark.parametrize("kl", ["forward", "reverse"])
def test_memory_lean_step_equals_one_backward(strategy, kl):
    cfg = config(extractor=strategy, kl=kl, label_smoothing=0.05)
    model, images, labels = tiny_problem(depth=5)
    sid.step(model, images, labels, cfg, no_autocast)
    lean = grads(model)
    model.zero_grad(set_to_none=True)
    one_backward_step(model, images, labels, cfg)
    reference = grads(model)
    for name, g in reference.items():
        if g is None:
            assert lean[name] is None, name
        else:
            assert torch.allclose(lean[name], g, atol=1e-6, rtol=1e-5), name


def test_step_returns_the_sum_of_local_objectives():
    cfg = config(label_smoothing=0.1)
    model, images, labels = tiny_problem()
    loss = sid.step(model, images, labels, cfg, no_autocast)
    expected = sum(reference_local_loss(model, images, labels, i, cfg) for i in range(model.depth))
    assert torch.isclose(loss, expected.detach(), rtol=1e-5)


def test_sid_objective_is_what_the_step_minimises():
    """Guard against the loss silently using another formula than sidlib.divergences."""
    cfg = config(kl="reverse", label_smoothing=0.1, alpha=0.7)
    log_q = torch.log_softmax(torch.randn(3, CLASSES), 1)
    log_teacher = torch.log_softmax(torch.randn(3, CLASSES), 1)
    log_target = smoothed_target_log_beliefs(torch.tensor([0, 1, 2]), CLASSES, 0.1)
    q = log_q.exp()
    expected = 0.7 * (q * (log_q - log_target)).sum(1) + 0.3 * (q * (log_q - log_teacher)).sum(1)
    assert torch.allclose(sid_objective(log_q, log_teacher, log_target, cfg.alpha, cfg.kl), expected, atol=1e-6)


@pytest.mark.parametrize("belief_input, strategy, kl, per_batch", [
    ("softmax", "all", "forward", 8), ("softmax", "final_layer", "reverse", 2), ("logits", "frozen", "forward", 8),
    ("residual", "all", "reverse", 2), ("residual", "final_layer", "forward", 3), ("softmax", "all", "forward", 1)])
def test_batched_phase2_gives_the_per_module_steps_gradients(belief_input, strategy, kl, per_batch):
    """Batched computations over the stacked module weights (groups of ``per_batch`` modules) = the L
    module steps, in float64 (the teachers pass through float32 in both, as the step casts them)."""
    torch.manual_seed(0)
    model = build_model("simplecnn", SHAPE, CLASSES, 5, belief_input=belief_input).double()
    images, labels = torch.randn(16, *SHAPE, dtype=torch.float64), torch.randint(0, CLASSES, (16,))
    looped = sid.step(model, images, labels, config(extractor=strategy, kl=kl, label_smoothing=0.1), no_autocast)
    per_module = grads(model)
    model.zero_grad(set_to_none=True)
    batched = sid.step(model, images, labels, config(extractor=strategy, kl=kl, label_smoothing=0.1, sid_phase2="batched",
                                                     sid_modules_per_batch=per_batch), no_autocast)
    assert torch.allclose(batched, looped, rtol=1e-6)  # float32 losses, summed in groups
    for name, g in grads(model).items():
        if per_module[name] is None:
            assert g is None, name
        else:
            assert torch.allclose(g, per_module[name], rtol=1e-9, atol=1e-13), name


def test_batched_phase2_memory_stops_growing_at_its_group_size():
    """Up to ``sid_modules_per_batch`` modules the batched step holds each one's activations and weight
    copy at once; beyond it, groups run one after another and the peak stays put."""
    cfg = config(method="sid", sid_phase2="batched", sid_modules_per_batch=4)
    peak = {L: bench.peak_saved_bytes(replace(cfg, depth=L), 8, torch.device("cpu")) for L in (2, 4, 8, 16)}
    assert peak[2] < peak[4] == peak[8] == peak[16]
