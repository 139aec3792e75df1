"""An exact linear-Gaussian Markov chain x -> h_1 -> ... -> h_L -> y for SLL's Theorem 1.

SLL (Yin & Corradi 2025) reads a network as a hierarchical latent-variable model with a
generative chain p(h_l | h_{l-1}), a likelihood p(y | h_L) and a forward (Markov) variational
posterior q(h_l | h_{l-1}). With every conditional linear-Gaussian, every term of the network
ELBO and of each layer-wise ELBO is a closed-form Gaussian expression, so the theorem's
inequality can be checked exactly instead of by sampling.

Notation (our reconstruction; the paper's extracted text lost its formulas):
  * h_0 = x (given); q(h_l) = N(m_l, P_l) is the marginal of layer l under the posterior chain;
  * predictive term  A_l = E_q[log p_l(y | h_l)], with p_l the likelihood layer l is judged by;
  * KL term          K_l = E_{q(h_{l-1})} KL(q(h_l | h_{l-1}) || p(h_l | h_{l-1}));
  * network ELBO     L_net = A_L - sum_l K_l;
  * layer-wise ELBO  L_l = A_l - K_l;
  * Theorem 1 claims mean_l L_l <= L_net under its Assumptions 3 (A_1 <= ... <= A_L) and 4
    (a KL budget). The gap is L_net - mean_l L_l = (1/L) sum_l (A_L - A_l) - (1 - 1/L) sum_l K_l.

Rows are data points: ``x`` is (n, d_0), ``y`` is (n, d_y) and every term is returned per row.
Any leading batch dimensions (independent random instances) broadcast through every function:
``x`` (B, n, d_0) with weights (B, d_out, d_in) gives terms of shape (B, n). Work in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LinearGaussian:
    """The conditional N(out; weight @ inp + bias, covariance), optionally batched over instances.

    ``bias`` broadcasts against (..., n, d_out): (1, d_out) for one shared bias, (n, d_out) for a
    bias per row (exact posteriors depend on each row's label), (B, 1, d_out) when batched.
    """
    weight: Tensor      # (..., d_out, d_in)
    bias: Tensor        # (..., 1 or n, d_out)
    covariance: Tensor  # (..., d_out, d_out), symmetric positive definite

    def mean(self, inp: Tensor) -> Tensor:
        return inp @ self.weight.mT + self.bias

    def propagate(self, mean: Tensor, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """Marginal of out when inp ~ N(mean, covariance): N(W mean + b, W covariance W^T + Sigma)."""
        return self.mean(mean), self.weight @ covariance @ self.weight.mT + self.covariance


Chain = list[LinearGaussian]  # steps h_{l-1} -> h_l, l = 1..L


def _trace(matrix: Tensor) -> Tensor:
    """Trace over the last two dimensions, with a trailing axis so it broadcasts against rows."""
    return matrix.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None]


def gaussian_log_density(value: Tensor, mean: Tensor, covariance: Tensor) -> Tensor:
    """log N(value; mean, covariance) for each row; value and mean are (..., n, d)."""
    d = covariance.shape[-1]
    chol = torch.linalg.cholesky(covariance)
    diff = value - mean
    white = torch.linalg.solve_triangular(chol, diff.mT, upper=False)  # L^-1 (value - mean), (..., d, n)
    log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)[..., None]
    return -0.5 * (white ** 2).sum(-2) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi)


def gaussian_kl(mean_q: Tensor, cov_q: Tensor, mean_p: Tensor, cov_p: Tensor) -> Tensor:
    """KL(N(mean_q, cov_q) || N(mean_p, cov_p)) per row:
    1/2 [tr(cov_p^-1 cov_q) - d + log det cov_p - log det cov_q + (mu_p - mu_q)^T cov_p^-1 (mu_p - mu_q)]."""
    d = cov_p.shape[-1]
    diff = mean_p - mean_q
    mahalanobis = (diff * torch.linalg.solve(cov_p, diff.mT).mT).sum(-1)
    log_dets = (torch.logdet(cov_p) - torch.logdet(cov_q))[..., None]
    return 0.5 * (_trace(torch.linalg.solve(cov_p, cov_q)) - d + log_dets + mahalanobis)


def marginals(chain: Chain, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """(m_l, P_l) for l = 0..L: the Gaussian marginal of h_l given x under ``chain`` (h_0 = x exactly)."""
    mean, cov = x, torch.zeros(x.shape[-1], x.shape[-1], dtype=x.dtype)
    out = [(mean, cov)]
    for step in chain:
        mean, cov = step.propagate(mean, cov)
        out.append((mean, cov))
    return out


def expected_log_likelihood(head: LinearGaussian, y: Tensor, mean: Tensor, covariance: Tensor) -> Tensor:
    """E_{h ~ N(mean, covariance)} log N(y; W h + b, S) = log N(y; W mean + b, S) - 1/2 tr(S^-1 W covariance W^T)."""
    spread = _trace(torch.linalg.solve(head.covariance, head.weight @ covariance @ head.weight.mT))
    return gaussian_log_density(y, head.mean(mean), head.covariance) - 0.5 * spread


def expected_transition_kl(q_step: LinearGaussian, p_step: LinearGaussian, mean: Tensor, covariance: Tensor) -> Tensor:
    """E_{h ~ N(mean, covariance)} KL(q(. | h) || p(. | h)) for linear-Gaussian q, p.

    The mean difference (A - W) h + (a - b) is linear in h, so the expectation adds
    1/2 tr(Sigma_p^-1 (A - W) covariance (A - W)^T) to the KL at h = mean.
    """
    at_mean = gaussian_kl(q_step.mean(mean), q_step.covariance, p_step.mean(mean), p_step.covariance)
    delta = q_step.weight - p_step.weight
    return at_mean + 0.5 * _trace(torch.linalg.solve(p_step.covariance, delta @ covariance @ delta.mT))


def predictive_terms(posterior: Chain, heads: list[LinearGaussian], x: Tensor, y: Tensor) -> Tensor:
    """A_l = E_q[log p_l(y | h_l)] for l = 1..L, as an (..., n, L) tensor; heads[l - 1] reads h_l."""
    layer_marginals = marginals(posterior, x)[1:]
    return torch.stack([expected_log_likelihood(head, y, m, P) for head, (m, P) in zip(heads, layer_marginals)], -1)


def kl_terms(posterior: Chain, prior: Chain, x: Tensor) -> Tensor:
    """K_l = E_{q(h_{l-1})} KL(q(h_l | h_{l-1}) || p(h_l | h_{l-1})) for l = 1..L, as an (..., n, L) tensor."""
    parent_marginals = marginals(posterior, x)[:-1]
    return torch.stack([expected_transition_kl(q, p, m, P) for q, p, (m, P) in zip(posterior, prior, parent_marginals)], -1)


def network_elbo(predictive: Tensor, kls: Tensor) -> Tensor:
    """L_net = A_L - sum_l K_l: the ELBO of log p(y | x) for the whole chain."""
    return predictive[..., -1] - kls.sum(-1)


def layerwise_elbos(predictive: Tensor, kls: Tensor) -> Tensor:
    """L_l = A_l - K_l for l = 1..L: layer l's predictive term minus its own KL."""
    return predictive - kls


def theorem1_gap(predictive: Tensor, kls: Tensor) -> Tensor:
    """L_net - (1/L) sum_l L_l; Theorem 1 claims it is >= 0."""
    return network_elbo(predictive, kls) - layerwise_elbos(predictive, kls).mean(-1)


def monotone_predictive_gain(predictive: Tensor, tolerance: float = 0.0) -> Tensor:
    """Assumption 3 (our reading): A_1 <= A_2 <= ... <= A_L."""
    return (predictive.diff(dim=-1) >= -tolerance).all(-1)


def kl_budget_slack(predictive: Tensor, kls: Tensor) -> Tensor:
    """sum_l (A_L - A_l) - (L - 1) sum_l K_l: Assumption 4 in the form the proof needs holds iff >= 0.

    Algebraically equal to L times ``theorem1_gap``: this budget is the theorem's conclusion.
    """
    depth = predictive.shape[-1]
    return (predictive[..., -1:] - predictive).sum(-1) - (depth - 1) * kls.sum(-1)


def model_marginal_heads(prior: Chain, readout: LinearGaussian) -> list[LinearGaussian]:
    """p(y | h_l) for l = 0..L implied by the generative chain: the likelihood integrated over
    h_{l+1..L}. Entry 0 is p(y | x); entry L is ``readout``.

    Backward recursion: if p(y | h_l) = N(G h_l + g, R) then
    p(y | h_{l-1}) = N(G W_l h_{l-1} + G b_l + g, R + G Sigma_l G^T).
    """
    heads = [readout]
    for step in reversed(prior):
        head = heads[0]
        heads.insert(0, LinearGaussian(head.weight @ step.weight, step.bias @ head.weight.mT + head.bias,
                                       head.covariance + head.weight @ step.covariance @ head.weight.mT))
    return heads


def log_evidence(prior: Chain, readout: LinearGaussian, x: Tensor, y: Tensor) -> Tensor:
    """log p(y | x) = log integral p(y | h_L) prod_l p(h_l | h_{l-1}) dh, exactly."""
    head = model_marginal_heads(prior, readout)[0]
    return gaussian_log_density(y, head.mean(x), head.covariance)


def exact_posterior(prior: Chain, readout: LinearGaussian, y: Tensor) -> Chain:
    """The true posterior p(h_{1:L} | x, y) as a forward Markov chain of p(h_l | h_{l-1}, y).

    p(h_l | h_{l-1}, y) is proportional to N(h_l; W h_{l-1} + b, Sigma) N(y; G h_l + g, R) with
    p(y | h_l) = N(G h_l + g, R) from ``model_marginal_heads``; so
    Lambda = (Sigma^-1 + G^T R^-1 G)^-1, A = Lambda Sigma^-1 W, a = Lambda (Sigma^-1 b + G^T R^-1 (y - g)).
    With this q the network ELBO equals log p(y | x).
    """
    heads = model_marginal_heads(prior, readout)[1:]
    steps = []
    for step, head in zip(prior, heads):
        sigma_inv = torch.linalg.inv(step.covariance)
        r_inv = torch.linalg.inv(head.covariance)
        cov = torch.linalg.inv(sigma_inv + head.weight.mT @ r_inv @ head.weight)
        cov = 0.5 * (cov + cov.mT)
        bias = (step.bias @ sigma_inv.mT + (y - head.bias) @ (head.weight.mT @ r_inv).mT) @ cov.mT
        steps.append(LinearGaussian(cov @ sigma_inv @ step.weight, bias, cov))
    return steps


def sample_chain(chain: Chain, x: Tensor, samples: int, generator: torch.Generator) -> list[Tensor]:
    """Ancestral samples h_0 = x, h_1, ..., h_L, each of shape (samples, ..., n, d_l)."""
    h = x.expand(samples, *x.shape)
    out = [h]
    for step in chain:
        noise = torch.randn(*h.shape[:-1], step.covariance.shape[-1], generator=generator, dtype=x.dtype)
        h = step.mean(h) + noise @ torch.linalg.cholesky(step.covariance).mT
        out.append(h)
    return out


def monte_carlo_network_elbo(prior: Chain, posterior: Chain, readout: LinearGaussian, x: Tensor, y: Tensor,
                             samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Sample estimate of the network ELBO, E_q[log p(y | h_L) + sum_l log p(h_l | h_{l-1}) - log q(h_l | h_{l-1})],
    from densities alone (no closed-form expectation); returns (mean, standard error) per row."""
    h = sample_chain(posterior, x, samples, generator)
    value = gaussian_log_density(y, readout.mean(h[-1]), readout.covariance)
    for l, (q_step, p_step) in enumerate(zip(posterior, prior), start=1):
        value = value + gaussian_log_density(h[l], p_step.mean(h[l - 1]), p_step.covariance)
        value = value - gaussian_log_density(h[l], q_step.mean(h[l - 1]), q_step.covariance)
    return value.mean(0), value.std(0) / math.sqrt(samples)


def random_covariance(d: int, scale: float, generator: torch.Generator, batch: tuple[int, ...] = ()) -> Tensor:
    """Random symmetric positive definite matrices, scale^2 (M M^T / d + I) / 2 with M ~ N(0, 1)."""
    m = torch.randn(*batch, d, d, generator=generator, dtype=torch.float64)
    return scale ** 2 * 0.5 * (m @ m.mT / d + torch.eye(d, dtype=torch.float64))


def random_linear_gaussian(d_out: int, d_in: int, generator: torch.Generator, weight_scale: float = 1.0,
                           noise_scale: float = 1.0, batch: tuple[int, ...] = ()) -> LinearGaussian:
    """N(W h + b, Sigma) with W entries N(0, weight_scale^2 / d_in), b ~ N(0, 1/4), random Sigma."""
    weight = weight_scale * torch.randn(*batch, d_out, d_in, generator=generator, dtype=torch.float64) / math.sqrt(d_in)
    bias = 0.5 * torch.randn(*batch, 1, d_out, generator=generator, dtype=torch.float64)
    return LinearGaussian(weight, bias, random_covariance(d_out, noise_scale, generator, batch))


def random_chain(widths: list[int], generator: torch.Generator, weight_scale: float = 1.0,
                 noise_scale: float = 1.0, batch: tuple[int, ...] = ()) -> Chain:
    """Steps widths[0] -> widths[1] -> ... -> widths[-1], each ``random_linear_gaussian``."""
    return [random_linear_gaussian(d_out, d_in, generator, weight_scale, noise_scale, batch)
            for d_in, d_out in zip(widths[:-1], widths[1:])]


def perturbed(step: LinearGaussian, size: float | Tensor, generator: torch.Generator) -> LinearGaussian:
    """A nearby conditional: weight and bias moved by ``size`` N(0, 1) (weight entries scaled by
    1/sqrt(d_in)), covariance congruent-transformed by (I + size E / sqrt(d_out)), E ~ N(0, 1).
    Size 0 returns the same conditional; ``size`` may be a tensor over the batch dimensions."""
    dtype = step.weight.dtype
    d_out, d_in = step.weight.shape[-2:]
    size = torch.as_tensor(size, dtype=dtype)[..., None, None]
    weight = step.weight + size * torch.randn(step.weight.shape, generator=generator, dtype=dtype) / math.sqrt(d_in)
    bias = step.bias + size * torch.randn(step.bias.shape, generator=generator, dtype=dtype)
    twist = torch.eye(d_out, dtype=dtype) + size * torch.randn(step.covariance.shape, generator=generator,
                                                              dtype=dtype) / math.sqrt(d_out)
    covariance = twist @ step.covariance @ twist.mT
    return LinearGaussian(weight, bias, 0.5 * (covariance + covariance.mT))
