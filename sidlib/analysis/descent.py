"""Monotone descent of the SID cascade (Proposition 2) and its tolerance to imperfect modules (Proposition 4).

Notation: beliefs are rows of log-probabilities; ``beliefs`` is the list p_0, p_1, ..., p_L of a
cascade; module i's local objective J_i has teacher p_{i-1} (``sidlib.divergences.sid_objective``).
Both KL directions are covered:

    reverse (paper):  D(p) = KL(p || p_y),  step divergence KL(p_i || p_{i-1})
    forward (code):   D(p) = KL(p_y || p),  step divergence KL(p_{i-1} || p_i)

Because the teacher term vanishes at q = p_{i-1}, J_i(p_{i-1}) = alpha D(p_{i-1}), and every
statement below is a rearrangement of J_i(p_i) - J_i(p_{i-1}) = e_i (the "excess" of module i):

    D(p_i) = D(p_{i-1}) - (1 - alpha)/alpha * S_i + e_i / alpha          (exact, per step)
    D(p_L) = D(p_0) - (1 - alpha)/alpha * sum_i S_i + (1/alpha) sum_i e_i  (exact, summed)

Proposition 2 is the case e_i <= 0, Proposition 4 the case e_i <= eps_i. The module also holds
the samplers the notebooks use (points with a prescribed excess, imperfect cascades) and a short
SID training loop that returns the trained network, whose per-module beliefs the notebooks read.
"""
from __future__ import annotations

from dataclasses import replace


import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import Data
from ..divergences import kl_divergence, local_minimiser, sid_objective, smoothed_target_log_beliefs
from ..train import memory_format_for, train_model
from .theory import random_log_beliefs, uniform_log_belief  # noqa: F401 (random_log_beliefs: part of this module's samplers)

# ---------------------------------------------------------------------------------------------
# The quantities of Propositions 2 and 4


def kl_to_target(log_belief: Tensor, log_target: Tensor, direction: str) -> Tensor:
    """D(p): the divergence to the target that the propositions bound, per row.

    reverse: KL(p || p_y);  forward: KL(p_y || p) (with a one-hot p_y this is -log p[y], the cross-entropy).
    """
    if direction == "reverse":
        return kl_divergence(log_belief, log_target)
    if direction == "forward":
        return kl_divergence(log_target, log_belief)
    raise ValueError(f"unknown KL direction {direction!r}")


def step_divergence(log_belief: Tensor, log_teacher: Tensor, direction: str) -> Tensor:
    """S_i: how far module i moved from its teacher, in the KL direction of the teacher term of J_i.

    reverse: KL(p_i || p_{i-1});  forward: KL(p_{i-1} || p_i).
    """
    if direction == "reverse":
        return kl_divergence(log_belief, log_teacher)
    if direction == "forward":
        return kl_divergence(log_teacher, log_belief)
    raise ValueError(f"unknown KL direction {direction!r}")


def descent_coefficient(alpha: float) -> float:
    """(1 - alpha) / alpha: the weight of the step divergence in Propositions 2 and 4."""
    return (1.0 - alpha) / alpha


def local_excess(log_belief: Tensor, log_teacher: Tensor, log_target: Tensor, alpha: float,
                 direction: str) -> Tensor:
    """e_i = J_i(p_i) - J_i(p_{i-1}) per row: Proposition 4's eps_i at its smallest.

    e_i <= 0 is Proposition 2's local-improvement condition.
    """
    return (sid_objective(log_belief, log_teacher, log_target, alpha, direction)
            - sid_objective(log_teacher, log_teacher, log_target, alpha, direction))


def improvement_room(log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str) -> Tensor:
    """J_i(p_{i-1}) - J_i(q*) per row: the most any module can improve on copying its teacher (e_i >= -room)."""
    log_star = local_minimiser(log_teacher, log_target, alpha, direction)
    return (sid_objective(log_teacher, log_teacher, log_target, alpha, direction)
            - sid_objective(log_star, log_teacher, log_target, alpha, direction))


def satisfies_local_improvement(log_belief: Tensor, log_teacher: Tensor, log_target: Tensor, alpha: float,
                                direction: str, tolerance: float = 0.0) -> Tensor:
    """Proposition 2's condition J_i(p_i) <= J_i(p_{i-1}) (+ tolerance for rounding), per row."""
    return local_excess(log_belief, log_teacher, log_target, alpha, direction) <= tolerance


def descent_slack(log_belief: Tensor, log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str,
                  coefficient: float | None = None) -> Tensor:
    """Slack of Proposition 2's one-step inequality, per row (>= 0 where it holds):

        D(p_{i-1}) - coefficient * S_i - D(p_i),   coefficient = (1 - alpha)/alpha unless given.

    With the paper's coefficient the slack equals -e_i / alpha exactly (the module docstring).
    """
    c = descent_coefficient(alpha) if coefficient is None else coefficient
    return (kl_to_target(log_teacher, log_target, direction) - c * step_divergence(log_belief, log_teacher, direction)
            - kl_to_target(log_belief, log_target, direction))


def cascade_excesses(beliefs: list[Tensor], log_target: Tensor, alpha: float, direction: str) -> Tensor:
    """(L, rows): e_i = J_i(p_i) - J_i(p_{i-1}) for every module of a cascade p_0 .. p_L (L may be 0)."""
    return _stack_rows([local_excess(q, teacher, log_target, alpha, direction)
                        for teacher, q in zip(beliefs[:-1], beliefs[1:])], beliefs[0])


def cascade_step_divergences(beliefs: list[Tensor], direction: str) -> Tensor:
    """(L, rows): S_i for every module of a cascade p_0 .. p_L (L may be 0)."""
    return _stack_rows([step_divergence(q, teacher, direction) for teacher, q in zip(beliefs[:-1], beliefs[1:])],
                       beliefs[0])


def _stack_rows(per_module: list[Tensor], like: Tensor) -> Tensor:
    # a cascade of p_0 alone has no modules: an empty (0, rows) tensor, whose sums are 0
    return torch.stack(per_module) if per_module else like.new_zeros((0, like.shape[0]))


def telescoped_bound(beliefs: list[Tensor], log_target: Tensor, alpha: float, direction: str) -> Tensor:
    """Proposition 2, summed: D(p_L) <= D(p_0) - (1 - alpha)/alpha * sum_i S_i. Returns the right side."""
    movement = cascade_step_divergences(beliefs, direction).sum(0)
    return kl_to_target(beliefs[0], log_target, direction) - descent_coefficient(alpha) * movement


def robust_bound(beliefs: list[Tensor], log_target: Tensor, alpha: float, direction: str, budgets: Tensor) -> Tensor:
    """Proposition 4, the paper's eq. (8): the right side of
        D(p_L) <= D(p_0) - (1 - alpha)/alpha * sum_i S_i + (1/alpha) sum_i eps_i,
    given ``budgets`` eps_i of shape (L, rows) with J_i(p_i) <= J_i(p_{i-1}) + eps_i."""
    return telescoped_bound(beliefs, log_target, alpha, direction) + budgets.sum(0) / alpha


def simple_robust_bound(log_initial: Tensor, log_target: Tensor, alpha: float, direction: str,
                        budgets: Tensor) -> Tensor:
    """Proposition 4, eq. (9): D(p_L) <= D(p_0) + (1/alpha) sum_i eps_i (eq. 8 without the movement term)."""
    return kl_to_target(log_initial, log_target, direction) + budgets.sum(0) / alpha


def movement_cap(log_initial: Tensor, log_target: Tensor, alpha: float, direction: str) -> Tensor:
    """A corollary of Proposition 2 (D(p_L) >= 0): under the condition, however deep the cascade,
        sum_i S_i <= alpha / (1 - alpha) * D(p_0)."""
    return kl_to_target(log_initial, log_target, direction) / descent_coefficient(alpha)


# ---------------------------------------------------------------------------------------------
# Samplers: beliefs with a prescribed or random local excess


def mixture(log_a: Tensor, log_b: Tensor, weight: Tensor | float) -> Tensor:
    """log((1 - w) a + w b), per row when ``weight`` has shape (rows, 1); w in [0, 1]."""
    w = torch.as_tensor(weight, dtype=log_a.dtype)
    return torch.logaddexp(torch.log1p(-w) + log_a, torch.log(w) + log_b)  # w = 0 or 1: log 0 = -inf is exact


def geometric_path(log_a: Tensor, log_b: Tensor, fraction: Tensor | float) -> Tensor:
    """The belief proportional to a^(1 - t) b^t, per row when ``fraction`` t has shape (rows, 1); t may leave [0, 1]."""
    t = torch.as_tensor(fraction, dtype=log_a.dtype)
    return torch.log_softmax((1 - t) * log_a + t * log_b, dim=-1)


def partial_step(log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str,
                 fraction: Tensor | float) -> Tensor:
    """A module that goes only part of the way: ``geometric_path`` from the teacher to the minimiser q*.

    For t in [0, 1] it satisfies the local-improvement condition in both directions: J_i along
    the path is convex in t (reverse: J_i(q) = KL(q || q*) + const, which falls monotonically to
    its minimum at t = 1; forward: J_i(q) = KL(q* || q) + const, convex in the logits, which are
    linear in t), so it never exceeds its value J_i(p_{i-1}) at t = 0.
    """
    return geometric_path(log_teacher, local_minimiser(log_teacher, log_target, alpha, direction), fraction)


def partial_cascade(log_target: Tensor, alpha: float, depth: int, direction: str, generator: torch.Generator,
                    log_initial: Tensor | None = None) -> list[Tensor]:
    """p_0 (uniform unless given), ..., p_depth, module i a ``partial_step`` with a random fraction in [0, 1] per row:
    a cascade that satisfies Proposition 2's condition at every step without being ideal."""
    rows = log_target.shape[0]
    belief = uniform_log_belief(*log_target.shape, dtype=log_target.dtype) if log_initial is None else log_initial
    beliefs = [belief]
    for _ in range(depth):
        fraction = torch.rand(rows, 1, generator=generator, dtype=log_target.dtype)
        belief = partial_step(belief, log_target, alpha, direction, fraction)
        beliefs.append(belief)
    return beliefs


def level_point(log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str, log_far: Tensor,
                level: Tensor | float, iterations: int = 60) -> tuple[Tensor, Tensor]:
    """A belief q on the segment from the local minimiser q* to ``log_far`` with J_i(q) = J_i(p_{i-1}) + level.

    J_i is convex in q (both directions) and least at q*, so it only grows along the segment and
    bisection finds the crossing. Returns (log q, reached); where the level lies outside
    [J_i(q*), J_i(far)] the row is not reached and q is the nearer end of the segment.
    """
    objective = lambda log_q: sid_objective(log_q, log_teacher, log_target, alpha, direction)  # noqa: E731
    goal = objective(log_teacher) + torch.as_tensor(level, dtype=log_teacher.dtype)
    log_star = local_minimiser(log_teacher, log_target, alpha, direction)
    low = torch.zeros(log_teacher.shape[0], 1, dtype=log_teacher.dtype)
    high = torch.ones_like(low)
    reached = (objective(log_star) <= goal) & (objective(log_far) >= goal)
    for _ in range(iterations):
        middle = (low + high) / 2
        below = (objective(mixture(log_star, log_far, middle)) <= goal).unsqueeze(1)
        low, high = torch.where(below, middle, low), torch.where(below, high, middle)
    weight = torch.where(reached.unsqueeze(1), low, (objective(log_far) < goal).to(low.dtype).unsqueeze(1))
    return mixture(log_star, log_far, weight), reached


def near_vertex_log_beliefs(rows: int, num_classes: int, generator: torch.Generator, floor: float = 1e-3,
                            avoid: Tensor | None = None, dtype=torch.float64) -> Tensor:
    """Beliefs near a random vertex of the simplex, (1 - floor) onehot(k) + floor / C, with k != ``avoid``
    (per row) when given: e.g. avoid the target's class to get a belief far from the target."""
    if avoid is None:
        classes = torch.randint(0, num_classes, (rows,), generator=generator)
    else:
        classes = (avoid + torch.randint(1, num_classes, (rows,), generator=generator)) % num_classes
    return smoothed_target_log_beliefs(classes, num_classes, floor).to(dtype)


def perturbed_minimiser(log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str, noise: float,
                        generator: torch.Generator) -> Tensor:
    """An imperfect module: the exact minimiser q* with Gaussian noise of scale ``noise`` added to its
    log-probabilities (so its excess e_i may have either sign)."""
    log_star = local_minimiser(log_teacher, log_target, alpha, direction)
    return torch.log_softmax(log_star + noise * torch.randn(log_star.shape, generator=generator,
                                                            dtype=log_star.dtype), dim=1)


def imperfect_cascade(log_target: Tensor, alpha: float, depth: int, direction: str, noise: float,
                      generator: torch.Generator, log_initial: Tensor | None = None) -> list[Tensor]:
    """p_0 (uniform unless given), p_1, ..., p_depth, each module a ``perturbed_minimiser`` of its teacher."""
    belief = uniform_log_belief(*log_target.shape, dtype=log_target.dtype) if log_initial is None else log_initial
    beliefs = [belief]
    for _ in range(depth):
        belief = perturbed_minimiser(belief, log_target, alpha, direction, noise, generator)
        beliefs.append(belief)
    return beliefs


def budget_cascade(log_target: Tensor, alpha: float, direction: str, budgets: Tensor, generator: torch.Generator,
                   log_initial: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
    """A cascade whose module i spends its budget exactly: J_i(p_i) = J_i(p_{i-1}) + eps_i.

    ``budgets`` has shape (L, rows). Each p_i lies on the segment from q*_i towards a random
    near-vertex belief of a class other than the target's top class (``level_point``).
    Returns (beliefs, reached), reached of shape (L, rows).
    """
    rows, num_classes = log_target.shape
    belief = uniform_log_belief(rows, num_classes, dtype=log_target.dtype) if log_initial is None else log_initial
    beliefs, reached = [belief], []
    for budget in budgets:
        far = near_vertex_log_beliefs(rows, num_classes, generator, avoid=log_target.argmax(1), dtype=log_target.dtype)
        belief, ok = level_point(belief, log_target, alpha, direction, far, budget)
        beliefs.append(belief)
        reached.append(ok)
    return beliefs, torch.stack(reached)


# ---------------------------------------------------------------------------------------------
# A trained network's cascade


def train_sid_model(config: TrainConfig, data: Data) -> nn.Module:
    """Train ``config.model`` with SID through the one training loop (``sidlib.train.train_model``)
    and return the network in eval mode, for analyses that need the model itself."""
    model, _ = train_model(replace(config, method="sid"), data=data)
    return model.eval()


@torch.no_grad()
def cascade_log_beliefs(model: nn.Module, images: Tensor, batch_size: int = 500) -> list[Tensor]:
    """log p_0, log p_1, ..., log p_L of a trained cascade on ``images`` (already prepared), in float64.

    p_0 is uniform; p_i = softmax(f_i(p_{i-1}, h)) as the network computes it at inference.
    """
    fmt = memory_format_for(model)
    chunks = []
    for start in range(0, len(images), batch_size):
        features = model.extractor(images[start:start + batch_size].contiguous(memory_format=fmt))
        chunks.append([logits.double() for logits in model.refine(features)])
    beliefs = [torch.log_softmax(torch.cat([chunk[i] for chunk in chunks]), dim=1) for i in range(model.depth)]
    return [uniform_log_belief(len(images), model.num_classes)] + beliefs


def descent_statistics(beliefs: list[Tensor], log_target: Tensor, alpha: float, direction: str,
                       tolerance: float = 1e-12) -> list[dict]:
    """Per module i = 1..L of a cascade: how often Proposition 2's condition and conclusions hold.

    ``condition``: fraction of rows with e_i <= tolerance. ``inequality_fails_*``: fraction of rows
    whose one-step inequality fails (slack < -tolerance), among rows where the condition holds and
    where it fails. ``increase_*``: the same for the weaker conclusion D(p_i) <= D(p_{i-1}) (the KL to
    the target does not grow). ``mean_*``: means over all rows; ``mean_condition`` says whether
    the condition holds for the mean objective (the quantity training lowers).
    """
    rows = []
    for i, (teacher, q) in enumerate(zip(beliefs[:-1], beliefs[1:]), start=1):
        excess = local_excess(q, teacher, log_target, alpha, direction)
        holds = excess <= tolerance
        fails = ~holds
        broken = descent_slack(q, teacher, log_target, alpha, direction) < -tolerance
        grew = kl_to_target(q, log_target, direction) > kl_to_target(teacher, log_target, direction) + tolerance
        frac = lambda mask, within: (mask & within).sum().item() / max(within.sum().item(), 1)  # noqa: E731
        rows.append({
            "module": i,
            "condition": holds.double().mean().item(),
            "inequality_fails_where_condition_holds": frac(broken, holds),
            "inequality_fails_where_condition_fails": frac(broken, fails),
            "increase_where_condition_holds": frac(grew, holds),
            "increase_where_condition_fails": frac(grew, fails),
            "mean_kl_to_target": kl_to_target(q, log_target, direction).mean().item(),
            "mean_excess": excess.mean().item(),
            "mean_condition": bool(excess.mean().item() <= tolerance),
            "rows_condition_holds": int(holds.sum().item()),
            "rows_condition_fails": int(fails.sum().item()),
        })
    return rows


def descent_report(model: nn.Module, data: Data, config: TrainConfig, test_samples: int = 2000) -> dict:
    """Proposition 2 on a trained cascade, per module, ready for a run's JSON: on the first
    ``test_samples`` test images, each module's accuracy and :func:`descent_statistics`, measured in
    the KL direction and against the (smoothed) target the network was trained with. Meant as the
    ``analyse`` of ``sidlib.book.experiments.run_grid``."""
    count = min(test_samples, len(data.test_labels))
    images, labels = data.prepare(data.test_images[:count]), data.test_labels[:count]
    beliefs = cascade_log_beliefs(model, images)
    log_target = smoothed_target_log_beliefs(labels, data.info.num_classes, config.label_smoothing).double()
    stats = descent_statistics(beliefs, log_target, config.alpha, config.kl)
    for row, belief in zip(stats, beliefs[1:]):
        row["accuracy"] = accuracy(belief, labels)
    return {"test_samples": count, "kl": config.kl, "label_smoothing": config.label_smoothing, "modules": stats}


def accuracy(log_belief: Tensor, labels: Tensor) -> float:
    """Percent of rows whose most probable class is the label."""
    return 100.0 * (log_belief.argmax(1) == labels).double().mean().item()

