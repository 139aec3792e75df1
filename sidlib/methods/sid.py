"""Synergistic Information Distillation (Ye & Tang 2025): one training step.

Phase 1, teacher pass: with gradients off, run the cascade once and cache every module's
input belief p_0 .. p_{L-1} (the teachers). Phase 2, local updates: module i sees its cached
teacher and the shared features, and minimises its own objective
    J_i = alpha D(p_y, q_i) + (1 - alpha) D(sg(p_{i-1}), q_i)        (``sid_objective``)
so no gradient crosses from one module to another. The extractor receives the sum of the
modules' feature gradients (``extractor="all"``), the last module's only (``final_layer``), or
none (``frozen``). One optimiser step then updates everything.

With ``sid_phase2="batched"`` phase 2 is a batched computation over the modules' stacked weights
(``batched_local_losses``): the same gradients, a few batched matrix products in place of 2L small
ones, at the price of keeping a group's activations and a stacked copy of its weights at once; groups
of ``sid_modules_per_batch`` modules run one after another, so memory stays flat beyond that depth.

Memory stays flat in depth: the features are detached once, each module's loss is
backpropagated as soon as it is computed (freeing that module's graph before the next
module runs) while the feature gradients accumulate on the detached copy, and a single
backward through the extractor closes the step. This equals one backward of the summed
losses to float rounding (tests/test_sid.py checks it).

On one device the paper's recomputation of the features in phase 2 is redundant: the
parameters do not change between the phases, so the features are computed once, with their
graph, and the teacher pass reads a detached copy of them.
"""
import torch

from .. import parallel
from ..divergences import sid_objective, smoothed_target_log_beliefs
from .stages import untimed

EXTRACTOR_STRATEGIES = ("all", "final_layer", "frozen")
PHASE2_MODES = ("loop", "batched")  # phase 2 as L module steps, or as one batched computation
HEADS = ("cascade",)  # SID trains a belief cascade: an extractor and refinement modules
DESCRIPTION = "a teacher pass, then every module's local loss against its cached teacher (SID)"


@torch.no_grad()
def teacher_logits(model, features):
    """Phase 1: the logits of p_0 .. p_{L-1} (p_0 uniform: zero logits), without gradients."""
    zeros = features.new_zeros(features.shape[0], model.num_classes)
    return [zeros] + model.refine(features)[:-1]


def check(config):
    """Refuse the objective that is infinite from the first step."""
    if config.kl == "reverse" and config.label_smoothing == 0:
        raise ValueError("--kl reverse with --label-smoothing 0: KL(q || p_y) is infinite for a one-hot target; "
                         "give --label-smoothing > 0 (the paper's theory uses 0.1) or use --kl forward")


def extractor_gets_gradient(strategy, module_index, depth):
    if strategy == "all":
        return True
    if strategy == "final_layer":
        return module_index == depth - 1
    if strategy == "frozen":
        return False
    raise ValueError(f"unknown extractor strategy {strategy!r}; choose from {EXTRACTOR_STRATEGIES}")


def local_losses(model, features, teachers, log_target, config, autocast, backward, clock=untimed, modules=None):
    """Each module's local loss (mean over the batch) from its cached teacher: ``teachers[k]`` is the
    teacher of module ``modules[k]`` (default: every module, in order).

    With ``backward=True`` each loss is backpropagated at once (the memory-lean step);
    ``features`` then must be a detached leaf so their gradient accumulates in ``features.grad``.
    """
    losses = []
    for i, teacher in zip(modules or range(model.depth), teachers):
        with clock("module_forward", i):
            inputs = features if extractor_gets_gradient(config.extractor, i, model.depth) else features.detach()
            teacher = teacher.float()
            with autocast():
                logits = model.module_logits(i, model.module_input(teacher), inputs)
            log_q = torch.log_softmax(logits.float(), dim=1)
            log_teacher = torch.log_softmax(teacher, dim=1)
            loss = sid_objective(log_q, log_teacher, log_target, config.alpha, config.kl).mean()
        if backward:
            with clock("module_backward", i):
                loss.backward()
            loss = loss.detach()
        losses.append(loss)
    return losses


def step(model, images, labels, config, autocast, clock=untimed):
    """Compute the gradients of one minibatch; return the summed local losses (detached).

    Inside a process group (``torchrun``, ``sidlib.parallel``) this rank's modules only: their
    teachers arrive through a pipelined teacher pass, and the feature gradients are summed across
    ranks before the extractor's backward."""
    if parallel.active():
        return module_parallel_step(model, images, labels, config, autocast, clock)
    train_extractor = config.extractor != "frozen"
    with clock("extractor_forward"), autocast(), torch.set_grad_enabled(train_extractor):
        features = model.extractor(images)
    with clock("teacher_pass"), autocast():
        teachers = teacher_logits(model, features.detach())
    log_target = smoothed_target_log_beliefs(labels, model.num_classes, config.label_smoothing)
    detached = features.detach().requires_grad_(train_extractor)
    if config.sid_phase2 == "batched":
        with clock("modules_batched"):
            total = 0
            for start in range(0, model.depth, config.sid_modules_per_batch):
                group = range(start, min(start + config.sid_modules_per_batch, model.depth))
                losses = batched_local_losses(model, detached, teachers[group.start:group.stop], log_target, config,
                                              autocast, modules=group)
                losses.sum().backward()  # frees this group's graph before the next group runs
                total = total + losses.detach().sum()
    else:
        total = torch.stack(local_losses(model, detached, teachers, log_target, config, autocast, backward=True,
                                         clock=clock)).sum()
    with clock("extractor_backward"):
        if train_extractor and detached.grad is not None:
            features.backward(detached.grad)
    return total.detach()


def module_parallel_step(model, images, labels, config, autocast, clock=untimed):
    """``step`` on this rank's contiguous range of modules (``sidlib.parallel``); returns the summed
    local losses of all ranks' modules."""
    modules = parallel.my_modules(model.depth)
    train_extractor = config.extractor != "frozen"
    with clock("extractor_forward"), autocast(), torch.set_grad_enabled(train_extractor):
        features = model.extractor(images)
    with clock("teacher_pass"), autocast():
        teachers = parallel.pipelined_teacher_logits(model, features.detach(), modules)
    log_target = smoothed_target_log_beliefs(labels, model.num_classes, config.label_smoothing)
    detached = features.detach().requires_grad_(train_extractor)
    total = torch.stack(local_losses(model, detached, teachers, log_target, config, autocast, backward=True,
                                     clock=clock, modules=modules)).sum()
    with clock("extractor_backward"):
        if train_extractor:
            features.backward(parallel.sum_feature_gradients(detached.grad, detached))
    return parallel.sum_over_ranks(total)


def stacked_module_parameters(model, modules=None):
    """The weights of ``modules`` (default: all) stacked along a leading module axis: (W_hidden (L, H, C + d),
    b_hidden (L, H), W_out (L, C, H), b_out (L, C)). ``torch.stack`` keeps the graph, so gradients
    of the stacked tensors flow back to every module's own parameters."""
    blocks = [model.blocks[i] for i in (modules or range(model.depth))]
    return (torch.stack([b.hidden.weight for b in blocks]), torch.stack([b.hidden.bias for b in blocks]),
            torch.stack([b.out.weight for b in blocks]), torch.stack([b.out.bias for b in blocks]))


def batched_local_losses(model, features, teachers, log_target, config, autocast, modules=None):
    """The local losses of ``modules`` (default: all; ``teachers[k]`` is module ``modules[k]``'s), mean
    over the batch, shape (len(modules),), as one batched computation: the modules' forwards are a few
    batched matrix products over stacked weights instead of 2 per module (all modules have the same
    shapes). Equal to ``local_losses`` to float rounding; the caller backpropagates their sum.
    Module i's first layer is split into the block that reads its teacher and the block that reads h,
    so h is multiplied by all modules' feature blocks at once and never copied per module. Memory
    grows with the number of modules batched: their hidden activations (n, B, H) are alive at once,
    and so is the stacked copy of their weights that the products save for the backward; ``step``
    therefore batches at most ``config.sid_modules_per_batch`` modules at a time."""
    modules = modules or range(model.depth)
    depth, classes = model.depth, model.num_classes
    teacher_logits_stacked = torch.stack(teachers).float()  # (L, B, C)
    beliefs_in = model.module_input(teacher_logits_stacked)  # what each module reads of its teacher
    w_hidden, b_hidden, w_out, b_out = stacked_module_parameters(model, modules)
    w_belief, w_features = w_hidden[:, :, :classes], w_hidden[:, :, classes:]  # (n, H, C), (n, H, d)
    receives = [extractor_gets_gradient(config.extractor, i, depth) for i in modules]
    with autocast():
        if all(receives):
            from_features = torch.einsum("bd,lhd->lbh", features, w_features)
        else:  # modules whose loss must not reach the extractor read a detached h
            from_features = torch.cat([torch.einsum("bd,lhd->lbh", features if live else features.detach(), w_features[i:i + 1])
                                       for i, live in enumerate(receives)])
        hidden = torch.relu(torch.baddbmm(b_hidden.unsqueeze(1) + from_features, beliefs_in.to(from_features.dtype),
                                          w_belief.transpose(1, 2)))
        logits = torch.baddbmm(b_out.unsqueeze(1), hidden, w_out.transpose(1, 2))
    if model.belief_input == "residual":
        logits = beliefs_in + logits  # added before the float32 cast, as ``module_logits`` then ``local_losses`` do
    log_q = torch.log_softmax(logits.float(), dim=-1)
    log_teacher = torch.log_softmax(teacher_logits_stacked, dim=-1)
    return sid_objective(log_q, log_teacher, log_target, config.alpha, config.kl).mean(dim=1)
