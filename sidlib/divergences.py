"""Divergences between beliefs, and the closed-form minimisers of SID's local objective.

Beliefs are categorical distributions over C classes, stored as log-probabilities along the
last dimension (log-space keeps tiny probabilities exact and makes one-hot targets, whose
logs are -inf, usable in the forward direction). The training losses in
``sidlib.methods.sid`` call these same functions, so the mathematics the book checks is the
mathematics that trains.

Direction names follow the authors' code and the paper:
  * ``forward``: KL(target || q), as ``F.kl_div(log q, target)`` in the authors' ``sid.py``;
  * ``reverse``: KL(q || target), as in the paper's theory (Lemma 1, Propositions 1-4).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KL_DIRECTIONS = ("forward", "reverse")


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) for each row, with 0 log 0 = 0.

    Infinite where p puts mass on a class to which q gives none. Differentiable in both
    arguments wherever the value is finite and p has full support.
    """
    p = log_p.exp()
    terms = p * (log_p - log_q)
    # 0 * (-inf - x) is nan in floating point; mathematically the term is 0.
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(-1)


def smoothed_target_log_beliefs(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """log of the target belief p_y = (1 - eps) onehot(y) + eps / C (eps = 0: one-hot, logs -inf)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
    target = F.one_hot(labels, num_classes).to(torch.float32) * (1.0 - smoothing) + smoothing / num_classes
    return target.log()


def sid_objective(log_q: Tensor, log_teacher: Tensor, log_target: Tensor, alpha: float,
                  direction: str) -> Tensor:
    """SID's local objective J_i for each row.

    reverse (paper):   alpha KL(q || p_y) + (1 - alpha) KL(q || teacher)
    forward (code):    alpha KL(p_y || q) + (1 - alpha) KL(teacher || q)

    ``log_teacher`` is the cached belief of the previous module; callers pass it detached
    (stop-gradient), which is what makes the loss local.
    """
    if direction == "reverse":
        return alpha * kl_divergence(log_q, log_target) + (1 - alpha) * kl_divergence(log_q, log_teacher)
    if direction == "forward":
        return alpha * kl_divergence(log_target, log_q) + (1 - alpha) * kl_divergence(log_teacher, log_q)
    raise ValueError(f"unknown KL direction {direction!r}; choose from {KL_DIRECTIONS}")


def geometric_interpolation(log_teacher: Tensor, log_target: Tensor, alpha: float) -> Tensor:
    """Minimiser of the reverse-form objective (Lemma 1): q* proportional to
    teacher^(1 - alpha) * p_y^alpha, returned as log-probabilities."""
    return torch.log_softmax((1 - alpha) * log_teacher + alpha * log_target, dim=-1)


def arithmetic_mixture(log_teacher: Tensor, log_target: Tensor, alpha: float) -> Tensor:
    """Minimiser of the forward-form objective: q* = alpha p_y + (1 - alpha) teacher
    (a cross-entropy against a mixture is minimised by the mixture itself), as log-probabilities."""
    return torch.logaddexp(math.log(1 - alpha) + log_teacher, math.log(alpha) + log_target)


def local_minimiser(log_teacher: Tensor, log_target: Tensor, alpha: float, direction: str) -> Tensor:
    """The exact minimiser of ``sid_objective`` over the simplex, for either direction."""
    if direction == "reverse":
        return geometric_interpolation(log_teacher, log_target, alpha)
    if direction == "forward":
        return arithmetic_mixture(log_teacher, log_target, alpha)
    raise ValueError(f"unknown KL direction {direction!r}; choose from {KL_DIRECTIONS}")
