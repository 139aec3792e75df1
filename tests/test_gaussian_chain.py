"""The linear-Gaussian chain of SLL's Theorem 1: closed forms against sampling and brute force."""
import math

import numpy as np
import torch

from sidlib.analysis.gaussian_chain import (LinearGaussian, exact_posterior, gaussian_kl, gaussian_log_density, kl_budget_slack,
                                   kl_terms, layerwise_elbos, log_evidence, marginals, model_marginal_heads,
                                   monotone_predictive_gain, monte_carlo_network_elbo, network_elbo, perturbed,
                                   predictive_terms, random_chain, random_covariance, random_linear_gaussian,
                                   sample_chain, theorem1_gap)


def instance(seed, depth=3, width=3, label_dim=2, rows=5, batch=()):
    g = torch.Generator().manual_seed(seed)
    prior = random_chain([width] * (depth + 1), g, batch=batch)
    readout = random_linear_gaussian(label_dim, width, g, batch=batch)
    x = torch.randn(*batch, rows, width, generator=g, dtype=torch.float64)
    y = torch.randn(*batch, rows, label_dim, generator=g, dtype=torch.float64)
    posterior = [perturbed(step, 0.3, g) for step in prior]
    return prior, readout, posterior, x, y, g


def numpy_log_density(v, m, c):
    d = len(v)
    diff = v - m
    return -0.5 * diff @ np.linalg.solve(c, diff) - 0.5 * np.linalg.slogdet(c)[1] - 0.5 * d * math.log(2 * math.pi)


def test_log_density_and_kl_match_numpy():
    g = torch.Generator().manual_seed(0)
    cov_p, cov_q = random_covariance(3, 1.2, g), random_covariance(3, 0.7, g)
    v, m_p, m_q = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    ours = gaussian_log_density(v, m_p, cov_p).numpy()
    ref = [numpy_log_density(v[i].numpy(), m_p[i].numpy(), cov_p.numpy()) for i in range(4)]
    assert np.allclose(ours, ref, rtol=1e-12)
    # KL by its definition, E_q[log q - log p], with a large sample
    samples = m_q[0] + torch.randn(200_000, 3, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_q).T
    mc = (gaussian_log_density(samples, m_q[0], cov_q) - gaussian_log_density(samples, m_p[0], cov_p)).mean()
    exact = gaussian_kl(m_q[:1], cov_q, m_p[:1], cov_p)[0]
    assert abs(mc - exact) < 0.02 * exact + 0.01
    assert gaussian_kl(m_p, cov_p, m_p, cov_p).abs().max() < 1e-12


def test_closed_form_terms_match_sampling():
    prior, readout, posterior, x, y, g = instance(1)
    heads = [random_linear_gaussian(2, 3, g) for _ in range(2)] + [readout]
    predictive, kls = predictive_terms(posterior, heads, x, y), kl_terms(posterior, prior, x)
    h = sample_chain(posterior, x, 40_000, g)
    for l in range(1, 4):
        a = gaussian_log_density(y, heads[l - 1].mean(h[l]), heads[l - 1].covariance)
        k = (gaussian_log_density(h[l], posterior[l - 1].mean(h[l - 1]), posterior[l - 1].covariance)
             - gaussian_log_density(h[l], prior[l - 1].mean(h[l - 1]), prior[l - 1].covariance))
        for mc, exact in ((a, predictive[:, l - 1]), (k, kls[:, l - 1])):
            z = (mc.mean(0) - exact) / (mc.std(0) / math.sqrt(mc.shape[0]))
            assert z.abs().max() < 5
    mean, se = monte_carlo_network_elbo(prior, posterior, readout, x, y, 40_000, g)
    assert ((mean - network_elbo(predictive, kls)) / se).abs().max() < 5


def test_evidence_matches_sampled_marginal_and_exact_posterior_is_tight():
    prior, readout, posterior, x, y, g = instance(2)
    head = model_marginal_heads(prior, readout)[0]
    # y | x sampled through the chain has the mean and covariance of p(y | x)
    h = sample_chain(prior, x[:1], 200_000, g)[-1][:, 0]
    ys = readout.mean(h) + torch.randn(200_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(readout.covariance).T
    assert torch.allclose(ys.mean(0), head.mean(x[:1])[0], atol=0.03)
    assert torch.allclose(torch.cov(ys.T), head.covariance, atol=0.05 * head.covariance.abs().max())
    evidence = log_evidence(prior, readout, x, y)
    star = exact_posterior(prior, readout, y)
    heads = model_marginal_heads(prior, readout)[1:]
    tight = network_elbo(predictive_terms(star, heads, x, y), kl_terms(star, prior, x))
    assert (tight - evidence).abs().max() < 1e-10
    loose = network_elbo(predictive_terms(posterior, heads, x, y), kl_terms(posterior, prior, x))
    assert (loose < evidence).all()


def trapezoid(values, grid):
    # numpy >= 2 calls it trapezoid, numpy 1.26 (the lowest supported) only trapz
    return torch.trapezoid(torch.from_numpy(values), torch.from_numpy(grid)).item()


def test_evidence_against_quadrature_in_one_dimension():
    w1, b1, s1 = 0.8, 0.3, 0.5   # h ~ N(w1 x + b1, s1)
    w2, b2, s2 = -1.5, 0.1, 0.2  # y ~ N(w2 h + b2, s2)
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)
    prior = [LinearGaussian(t(w1), t(b1), t(s1))]
    readout = LinearGaussian(t(w2), t(b2), t(s2))
    x, y = t(0.7), t(-0.4)
    grid = np.linspace(-10, 10, 200_001)
    density = (np.exp(-(grid - w1 * 0.7 - b1) ** 2 / (2 * s1)) / np.sqrt(2 * np.pi * s1)
               * np.exp(-(-0.4 - w2 * grid - b2) ** 2 / (2 * s2)) / np.sqrt(2 * np.pi * s2))
    assert math.isclose(log_evidence(prior, readout, x, y).item(), math.log(trapezoid(density, grid)), rel_tol=1e-9)


def test_gap_identity_and_budget():
    prior, readout, posterior, x, y, g = instance(3)
    heads = [random_linear_gaussian(2, 3, g) for _ in range(2)] + [readout]
    a, k = predictive_terms(posterior, heads, x, y), kl_terms(posterior, prior, x)
    gap = network_elbo(a, k) - layerwise_elbos(a, k).mean(-1)
    assert torch.allclose(theorem1_gap(a, k), gap)
    assert torch.allclose(kl_budget_slack(a, k), 3 * gap)
    assert monotone_predictive_gain(torch.tensor([[1.0, 2.0, 2.0]])).item()
    assert not monotone_predictive_gain(torch.tensor([[1.0, 3.0, 2.0]])).item()


def test_model_marginal_heads_reverse_the_theorem():
    """With p(y | h_l) from the generative chain, A_l >= A_{l+1} - K_{l+1} and the gap is at most
    -(1/L) sum_j (L - j) K_j <= 0, for every posterior."""
    prior, readout, posterior, x, y, g = instance(4, depth=4, batch=(50,))
    heads = model_marginal_heads(prior, readout)
    a = predictive_terms(posterior, heads[1:], x, y)
    k = kl_terms(posterior, prior, x)
    a0 = log_evidence(prior, readout, x, y).unsqueeze(-1)
    steps = torch.cat([a0, a], -1).diff(dim=-1)
    assert (steps <= k + 1e-10).all()
    depth = 4
    bound = -((depth - torch.arange(1, depth + 1, dtype=torch.float64)) * k).sum(-1) / depth
    assert (theorem1_gap(a, k) <= bound + 1e-10).all()


def test_batched_equals_unbatched():
    prior, readout, posterior, x, y, g = instance(5, batch=(4,))
    a = predictive_terms(posterior, [readout] * 3, x, y)
    k = kl_terms(posterior, prior, x)
    pick = lambda step, i: LinearGaussian(step.weight[i], step.bias[i], step.covariance[i])
    for i in range(4):
        a_i = predictive_terms([pick(s, i) for s in posterior], [pick(readout, i)] * 3, x[i], y[i])
        k_i = kl_terms([pick(s, i) for s in posterior], [pick(s, i) for s in prior], x[i])
        assert torch.allclose(a[i], a_i) and torch.allclose(k[i], k_i)
    assert len(marginals(prior, x)) == 4
