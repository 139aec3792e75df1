"""The Bhattacharyya family of divergences between categorical beliefs: SLL's KL surrogate.

SLL (Yin & Corradi 2025; our reconstruction, no code is public) replaces the KL term of each
layer's ELBO-like objective by the Bhattacharyya distance between the layer's categorical
``q_l`` and its parent's detached categorical ``q_{l-1}``. These are the functions that loss
uses, so they work on log-probabilities along the last dimension, as ``sidlib.divergences``
does: every quantity is computed from ``(log p + log q) / 2`` with a log-sum-exp, which stays
exact when probabilities underflow (a softmax entry of 1e-50 is 0 in float32, its log is not).

Conventions (stated because the literature differs by factors of 2):
  * Bhattacharyya coefficient  BC(p, q) = sum_k sqrt(p_k q_k), in [0, 1];
  * Bhattacharyya distance     D_B(p, q) = -log BC(p, q), in [0, inf];
  * squared Hellinger          H^2(p, q) = 1/2 sum_k (sqrt p_k - sqrt q_k)^2 = 1 - BC, in [0, 1];
  * Renyi divergence of order a  D_a(p || q) = log(sum_k p_k^a q_k^(1-a)) / (a - 1), so
    D_{1/2} = 2 D_B and D_1 = KL.
"""
from __future__ import annotations

import torch
from torch import Tensor


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
