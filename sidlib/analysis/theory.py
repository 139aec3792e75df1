"""Idealised SID cascades and numerical tools for checking the papers' propositions.

Everything here works on beliefs as log-probabilities (rows of a tensor), in float64 by
preference, and reuses ``sidlib.divergences``: the objective and minimisers that train the
networks are the ones the theory notebooks check.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..divergences import local_minimiser, sid_objective


def uniform_log_belief(rows: int, num_classes: int, dtype=torch.float64) -> Tensor:
    """log p_0: the uniform belief every SID cascade starts from."""
    return torch.full((rows, num_classes), -math.log(num_classes), dtype=dtype)


def random_log_beliefs(rows: int, num_classes: int, generator: torch.Generator, concentration: float = 2.0,
                       dtype=torch.float64) -> Tensor:
    """Random full-support beliefs: softmax of Gaussian logits with a random scale in [0, concentration]."""
    scale = concentration * torch.rand(rows, 1, generator=generator, dtype=dtype)
    return torch.log_softmax(scale * torch.randn(rows, num_classes, generator=generator, dtype=dtype), dim=1)


def minimise_numerically(objective, shape: tuple[int, int], dtype=torch.float64, max_iter: int = 500) -> Tensor:
    """Minimise ``objective(log_q)`` (a per-row tensor) over the simplex by L-BFGS on softmax logits.

    Knows nothing of any closed form, so it is an independent check of one. Returns log q.
    """
    logits = torch.zeros(shape, dtype=dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([logits], lr=1, max_iter=max_iter, tolerance_grad=1e-14,
                                  tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = objective(torch.log_softmax(logits, dim=-1)).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    return torch.log_softmax(logits.detach(), dim=-1)


def numerical_local_minimiser(log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str) -> Tensor:
    """The minimiser of SID's local objective found by numerical optimisation."""
    return minimise_numerically(lambda log_q: sid_objective(log_q, log_teacher, log_target, alpha, direction),
                                tuple(log_teacher.shape), dtype=log_teacher.dtype)


def ideal_cascade(log_target: Tensor, alpha: float, depth: int, direction: str,
                  log_initial: Tensor | None = None) -> list[Tensor]:
    """p_0, p_1, ..., p_depth when every module outputs the exact minimiser of its local objective."""
    log_belief = uniform_log_belief(*log_target.shape, dtype=log_target.dtype) if log_initial is None else log_initial
    beliefs = [log_belief]
    for _ in range(depth):
        log_belief = local_minimiser(log_belief, log_target, alpha, direction)
        beliefs.append(log_belief)
    return beliefs


def convergence_factor(alpha: float) -> float:
    """Proposition 1's geometric rate: each ideal module shrinks the distance to the target by 1 - alpha."""
    return 1.0 - alpha


def cascade_closed_form(log_target: Tensor, alpha: float, step: int, direction: str,
                        log_initial: Tensor | None = None) -> Tensor:
    """Proposition 1: p_i in closed form, with w = (1 - alpha)^i the weight left on p_0.

    reverse (geometric):  p_i proportional to p_0^w * p_y^(1 - w)
    forward (arithmetic): p_i = w p_0 + (1 - w) p_y
    """
    log_initial = uniform_log_belief(*log_target.shape, dtype=log_target.dtype) if log_initial is None else log_initial
    w = convergence_factor(alpha) ** step
    if direction == "reverse":
        return torch.log_softmax(w * log_initial + (1 - w) * log_target, dim=-1)
    if direction == "forward":
        w = torch.tensor(w, dtype=log_target.dtype)
        return torch.logaddexp(w.log() + log_initial, (1 - w).log() + log_target)  # log 0 = -inf is exact
    raise ValueError(f"unknown KL direction {direction!r}")


def distance_to_target(log_belief: Tensor, log_target: Tensor, direction: str) -> Tensor:
    """The distance Proposition 1 contracts, per row.

    forward: the L1 distance |p - p_y|_1 (the cascade moves p along the segment to p_y);
    reverse: the Euclidean distance between centred log-probabilities (the cascade moves
    log p along the segment to log p_y, up to normalisation).
    """
    if direction == "forward":
        return (log_belief.exp() - log_target.exp()).abs().sum(-1)
    if direction == "reverse":
        centred = lambda v: v - v.mean(-1, keepdim=True)  # noqa: E731
        return (centred(log_belief) - centred(log_target)).norm(dim=-1)
    raise ValueError(f"unknown KL direction {direction!r}")
