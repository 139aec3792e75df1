"""Random projections, JL dimensions and Gaussian mutual information, against independent computations."""
import math

import numpy as np
import pytest
import torch

from sidlib.analysis.projections import (distortions, gaussian_channel_information, gaussian_projection, jl_dimension,
                                jl_epsilon, max_distortion, monte_carlo_gaussian_information,
                                pairwise_squared_distances, single_pair_failure_probability, union_bound_dimension)


def test_pairwise_distances_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    brute = [((x[i] - x[j]) ** 2).sum().item() for i in range(7) for j in range(i + 1, 7)]
    assert np.allclose(pairwise_squared_distances(x).numpy(), brute, rtol=1e-12)


def test_squared_norm_ratio_is_chi_square_over_k():
    g = torch.Generator().manual_seed(1)
    k, d = 6, 40
    u = torch.randn(d, generator=g, dtype=torch.float64)
    r = gaussian_projection(k, d, g, batch=(40_000,))
    ratio = ((r @ u) ** 2).sum(-1) / (u ** 2).sum()
    assert abs(ratio.mean().item() - 1) < 0.02           # mean of chi2_k / k is 1
    assert abs(ratio.var().item() - 2 / k) < 0.03         # variance 2 / k
    eps = 0.5
    empirical = ((ratio - 1).abs() > eps).double().mean().item()
    assert abs(empirical - single_pair_failure_probability(k, eps)) < 0.01


def test_identity_projection_has_no_distortion_and_max_is_max():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64)
    assert max_distortion(x, torch.eye(4, dtype=torch.float64)).item() < 1e-12
    r = gaussian_projection(3, 4, g)
    assert max_distortion(x, r).item() == distortions(x, r).abs().max().item()


def test_jl_dimension_formula_and_inverse():
    n, eps = 100, 0.3
    k = jl_dimension(n, eps)
    assert k == math.ceil(4 * math.log(n) / (eps ** 2 / 2 - eps ** 3 / 3))
    assert jl_epsilon(n, k) <= eps < jl_epsilon(n, k - 1)
    assert jl_epsilon(128, 10) == math.inf  # k = C = 10 certifies nothing for a batch of 128
    with pytest.raises(ValueError):
        jl_dimension(10, 1.5)
    # The exact-tail union bound needs no more dimensions than Dasgupta-Gupta's loosened one.
    assert union_bound_dimension(n, eps, 1 - 1 / n) <= k


def test_channel_information_against_eigenvalues_and_sampling():
    g = torch.Generator().manual_seed(3)
    d = 5
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    s = m @ m.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    sigma2 = 0.3
    eye = torch.eye(d, dtype=torch.float64)
    direct = gaussian_channel_information(s, eye, sigma2 * eye).item()
    assert math.isclose(direct, 0.5 * torch.log1p(torch.linalg.eigvalsh(s) / sigma2).sum().item(), rel_tol=1e-12)
    r = gaussian_projection(3, d, g)
    exact = gaussian_channel_information(s, r, sigma2 * torch.eye(3, dtype=torch.float64)).item()
    mean, se = monte_carlo_gaussian_information(s, r, sigma2 * torch.eye(3, dtype=torch.float64), 50_000, g)
    assert abs(mean - exact) < 5 * se
    # data processing: projecting the noisy X + Z loses information, and loses none when R is invertible
    before = gaussian_channel_information(s, r, sigma2 * r @ r.T).item()
    assert before <= direct + 1e-12
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    assert math.isclose(gaussian_channel_information(s, q, sigma2 * q @ q.T).item(), direct, rel_tol=1e-10)
