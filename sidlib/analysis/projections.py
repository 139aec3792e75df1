"""Random projections (SLL's fixed heads): Johnson-Lindenstrauss distortion and Gaussian mutual information.

SLL (Yin & Corradi 2025) maps each layer's activations h (d dims) to k dims with a fixed random
matrix R and invokes the Johnson-Lindenstrauss (JL) lemma for why divergences computed on R h
are meaningful, and an information argument for why little is lost. This module holds what the
book needs to test both:

  * Gaussian projections R with N(0, 1/k) entries, for which E ||R u||^2 = ||u||^2 and
    ||R u||^2 / ||u||^2 is exactly chi^2_k / k for every fixed u != 0;
  * the distortion of a point set, max over pairs of | ||R(x_i - x_j)||^2 / ||x_i - x_j||^2 - 1 |;
  * the Dasgupta-Gupta form of the JL dimension, k >= 4 ln N / (eps^2 / 2 - eps^3 / 3);
  * closed-form mutual information of linear-Gaussian channels (log-determinants), because the
    mutual information between a continuous X and a noiseless projection of it is infinite.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_projection(k: int, d: int, generator: torch.Generator, batch: tuple[int, ...] = (),
                        dtype=torch.float64) -> Tensor:
    """R of shape (*batch, k, d) with i.i.d. N(0, 1/k) entries, so that E ||R u||^2 = ||u||^2."""
    return torch.randn(*batch, k, d, generator=generator, dtype=dtype) / math.sqrt(k)


def pairwise_squared_distances(points: Tensor) -> Tensor:
    """||x_i - x_j||^2 for all pairs i < j of the rows of ``points`` (..., N, d): shape (..., N (N - 1) / 2).

    Uses ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j (memory N^2, not N^2 d); use float64 so that the
    cancellation stays negligible unless points nearly coincide.
    """
    n = points.shape[-2]
    norms = (points ** 2).sum(-1)
    squared = norms.unsqueeze(-1) + norms.unsqueeze(-2) - 2 * points @ points.mT
    i, j = torch.triu_indices(n, n, offset=1)
    return squared[..., i, j]


def distortions(points: Tensor, projection: Tensor) -> Tensor:
    """||R(x_i - x_j)||^2 / ||x_i - x_j||^2 - 1 for every pair i < j; ``projection`` may be batched (..., k, d)."""
    projected = points @ projection.mT
    return pairwise_squared_distances(projected) / pairwise_squared_distances(points) - 1


def max_distortion(points: Tensor, projection: Tensor) -> Tensor:
    """The smallest eps with (1 - eps) ||u||^2 <= ||R u||^2 <= (1 + eps) ||u||^2 for every pairwise difference u."""
    return distortions(points, projection).abs().amax(-1)


def jl_dimension(num_points: int, eps: float) -> int:
    """Dasgupta-Gupta JL dimension: k = ceil(4 ln N / (eps^2 / 2 - eps^3 / 3)), for 0 < eps < 1.

    With a random projection to k dims, the probability that all N(N-1)/2 pairwise squared
    distances are preserved within (1 +- eps) is at least 1/N by their union bound (in practice
    it is far larger).
    """
    if not 0 < eps < 1:
        raise ValueError(f"JL needs 0 < eps < 1, got {eps}")
    return math.ceil(4 * math.log(num_points) / (eps ** 2 / 2 - eps ** 3 / 3))


def jl_epsilon(num_points: int, k: int) -> float:
    """The smallest eps in (0, 1) that ``jl_dimension`` certifies for k dims, or inf if none.

    eps^2 / 2 - eps^3 / 3 increases on (0, 1) up to 1/6, so no eps < 1 is certified unless
    k >= 24 ln N.
    """
    target = 4 * math.log(num_points) / k
    if target >= 1 / 6:
        return math.inf
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mid ** 2 / 2 - mid ** 3 / 3 < target else (lo, mid)
    return hi


def single_pair_failure_probability(k: int, eps: float) -> float:
    """P(| chi^2_k / k - 1 | > eps): the exact probability that a Gaussian projection distorts one
    fixed squared distance by more than eps (the regularised incomplete gamma function)."""
    half = torch.tensor(k / 2, dtype=torch.float64)
    below = torch.special.gammainc(half, torch.tensor(k * (1 - eps) / 2, dtype=torch.float64))
    above = torch.special.gammaincc(half, torch.tensor(k * (1 + eps) / 2, dtype=torch.float64))
    return float(below + above)


def union_bound_dimension(num_points: int, eps: float, failure: float) -> int:
    """The smallest k whose exact single-pair tail, times the N(N-1)/2 pairs, is at most ``failure``:
    a union bound like Dasgupta-Gupta's but without loosening the chi^2 tail."""
    pairs = num_points * (num_points - 1) / 2
    lo, hi = 1, max(2, jl_dimension(num_points, eps) * 4)
    while lo < hi:  # the tail decreases with k
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pairs * single_pair_failure_probability(mid, eps) <= failure else (mid + 1, hi)
    return lo


def gaussian_channel_information(signal_covariance: Tensor, channel: Tensor, noise_covariance: Tensor) -> Tensor:
    """I(X; C X + Z) in nats for X ~ N(0, S), Z ~ N(0, N) independent:
    1/2 log det(C S C^T + N) - 1/2 log det(N). Batched over leading dimensions."""
    output = channel @ signal_covariance @ channel.mT + noise_covariance
    return 0.5 * (torch.logdet(output) - torch.logdet(noise_covariance))


def monte_carlo_gaussian_information(signal_covariance: Tensor, channel: Tensor, noise_covariance: Tensor,
                                     samples: int, generator: torch.Generator) -> tuple[float, float]:
    """Sample estimate of I(X; C X + Z) = E[log p(y | x) - log p(y)] from the two densities; (mean, standard error)."""
    d, k = signal_covariance.shape[-1], noise_covariance.shape[-1]
    eigenvalues, eigenvectors = torch.linalg.eigh(signal_covariance)  # a square root that allows low rank
    root = eigenvectors * eigenvalues.clamp(min=0).sqrt()
    x = torch.randn(samples, d, generator=generator, dtype=torch.float64) @ root.mT
    z = torch.randn(samples, k, generator=generator, dtype=torch.float64) @ torch.linalg.cholesky(noise_covariance).mT
    y = x @ channel.mT + z
    marginal = torch.distributions.MultivariateNormal(torch.zeros(k, dtype=torch.float64),
                                                      channel @ signal_covariance @ channel.mT + noise_covariance)
    conditional = torch.distributions.MultivariateNormal(x @ channel.mT, noise_covariance)
    values = conditional.log_prob(y) - marginal.log_prob(y)
    return values.mean().item(), values.std().item() / math.sqrt(samples)
