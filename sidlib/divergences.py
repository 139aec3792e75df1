"""Divergences between beliefs: KL with SID's objective and its closed-form minimisers, and the
Bhattacharyya family that SLL uses as its KL surrogate.

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


# ---------------------------------------------------------------- the Bhattacharyya family
#
# SLL (Yin & Corradi 2025; our reconstruction, no code is public) replaces the KL term of each
# layer's ELBO-like objective by the Bhattacharyya distance between the layer's categorical
# ``q_l`` and its parent's detached categorical ``q_{l-1}``. These are the functions that loss
# uses, so they work on log-probabilities along the last dimension, as the KL functions above
# do: every quantity is computed from ``(log p + log q) / 2`` with a log-sum-exp, which stays
# exact when probabilities underflow (a softmax entry of 1e-50 is 0 in float32, its log is not).
#
# Conventions (stated because the literature differs by factors of 2):
#   * Bhattacharyya coefficient  BC(p, q) = sum_k sqrt(p_k q_k), in [0, 1];
#   * Bhattacharyya distance     D_B(p, q) = -log BC(p, q), in [0, inf];
#   * squared Hellinger          H^2(p, q) = 1/2 sum_k (sqrt p_k - sqrt q_k)^2 = 1 - BC, in [0, 1];
#   * Renyi divergence of order a  D_a(p || q) = log(sum_k p_k^a q_k^(1-a)) / (a - 1), so
#     D_{1/2} = 2 D_B and D_1 = KL.


def log_bhattacharyya_coefficient(log_p: Tensor, log_q: Tensor) -> Tensor:
    """log BC(p, q) = logsumexp_k ((log p_k + log q_k) / 2) for each row.

    Classes to which either belief gives zero mass (log = -inf) contribute nothing; the result
    is -inf only when the supports are disjoint.
    """
    return torch.logsumexp(0.5 * (log_p + log_q), dim=-1)


def bhattacharyya_coefficient(log_p: Tensor, log_q: Tensor) -> Tensor:
    """BC(p, q) = sum_k sqrt(p_k q_k) for each row: 1 iff p = q, 0 iff disjoint supports."""
    return log_bhattacharyya_coefficient(log_p, log_q).exp()


def bhattacharyya_distance(log_p: Tensor, log_q: Tensor) -> Tensor:
    """D_B(p, q) = -log sum_k sqrt(p_k q_k) for each row (SLL's surrogate for the layer KL).

    Symmetric in p and q. Its gradient with respect to the logits z of q = softmax(z) is
    (q - r) / 2 with r = sqrt(p q) / BC, so every component is bounded by 1/2 whatever the
    probabilities. Exact up to rounding: may return -1e-16 instead of 0 for p = q.
    """
    return -log_bhattacharyya_coefficient(log_p, log_q)


def squared_hellinger(log_p: Tensor, log_q: Tensor) -> Tensor:
    """H^2(p, q) = 1/2 sum_k (sqrt p_k - sqrt q_k)^2 = 1 - BC(p, q) for each row.

    Computed as -expm1(log BC), which keeps its relative precision when p and q are close
    (1 - BC would cancel catastrophically).
    """
    return -torch.expm1(log_bhattacharyya_coefficient(log_p, log_q))


def renyi_divergence(log_p: Tensor, log_q: Tensor, order: float) -> Tensor:
    """D_a(p || q) = log(sum_k p_k^a q_k^(1 - a)) / (a - 1) for each row, a > 0, a != 1.

    Order 1/2 gives 2 D_B; the limit a -> 1 is KL(p || q) (``sidlib.divergences.kl_divergence``).
    """
    if order <= 0 or order == 1:
        raise ValueError(f"Renyi order must be positive and different from 1, got {order}")
    terms = order * log_p + (1 - order) * log_q
    # a zero of p contributes nothing (for a < 1 a zero of q does the same; for a > 1 it makes the sum infinite)
    terms = torch.where(torch.isneginf(log_p), torch.full_like(terms, -torch.inf), terms)
    return torch.logsumexp(terms, dim=-1) / (order - 1)


def chi_square_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """Pearson chi^2(q || p) = sum_k (q_k - p_k)^2 / p_k for each row (p must have full support).

    Near p = q both KL and D_B are quadratic in q - p with this as their common form:
    KL(p || q) = chi^2 / 2 + O(|q - p|^3) and D_B(p, q) = chi^2 / 8 + O(|q - p|^3).
    """
    p, q = log_p.exp(), log_q.exp()
    return ((q - p) ** 2 / p).sum(-1)


def naive_bhattacharyya_distance(p: Tensor, q: Tensor) -> Tensor:
    """-log sum_k sqrt(p_k q_k) computed from probabilities, the textbook way.

    Kept only as a foil: when p_k q_k underflows to 0 the value is still right but the
    gradient of sqrt at 0 is infinite, and autograd returns inf or nan. Train with
    ``bhattacharyya_distance`` (log-space) instead.
    """
    return -torch.log(torch.sqrt(p * q).sum(-1))
