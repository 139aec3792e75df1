"""Bhattacharyya coefficient, distance, squared Hellinger and Renyi divergence, against numpy."""
import math

import numpy as np
import pytest
import torch

from sidlib.divergences import (bhattacharyya_coefficient, bhattacharyya_distance, chi_square_divergence,
                                  naive_bhattacharyya_distance, renyi_divergence,
                                  squared_hellinger)
from sidlib.divergences import kl_divergence

import helpers


def random_log_beliefs(n, c, seed, concentration=2.0):
    return helpers.random_log_beliefs(n, c, seed, concentration)


def test_values_match_numpy_definitions():
    log_p, log_q = random_log_beliefs(40, 6, 0), random_log_beliefs(40, 6, 1)
    p, q = log_p.exp().numpy(), log_q.exp().numpy()
    bc = np.sqrt(p * q).sum(1)
    hellinger = 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(1)
    assert np.allclose(bhattacharyya_coefficient(log_p, log_q).numpy(), bc, rtol=1e-13)
    assert np.allclose(bhattacharyya_distance(log_p, log_q).numpy(), -np.log(bc), rtol=1e-12)
    assert np.allclose(squared_hellinger(log_p, log_q).numpy(), hellinger, rtol=1e-10)
    assert np.allclose(chi_square_divergence(log_p, log_q).numpy(), ((q - p) ** 2 / p).sum(1), rtol=1e-12)
    assert np.allclose(naive_bhattacharyya_distance(log_p.exp(), log_q.exp()).numpy(), -np.log(bc), rtol=1e-12)
    for order in (0.3, 0.5, 2.0):
        expected = np.log((p ** order * q ** (1 - order)).sum(1)) / (order - 1)
        assert np.allclose(renyi_divergence(log_p, log_q, order).numpy(), expected, rtol=1e-12)


def test_ranges_symmetry_and_identity():
    log_p, log_q = random_log_beliefs(100, 5, 2), random_log_beliefs(100, 5, 3)
    bc = bhattacharyya_coefficient(log_p, log_q)
    assert ((bc > 0) & (bc < 1)).all()
    assert torch.allclose(bhattacharyya_distance(log_p, log_q), bhattacharyya_distance(log_q, log_p), rtol=1e-14)
    assert bhattacharyya_distance(log_p, log_p).abs().max() < 1e-15
    assert squared_hellinger(log_p, log_p).abs().max() < 1e-15


def test_bounds_hellinger_le_db_le_half_kl_both_directions():
    log_p, log_q = random_log_beliefs(500, 8, 4, 4.0), random_log_beliefs(500, 8, 5, 4.0)
    h2, db = squared_hellinger(log_p, log_q), bhattacharyya_distance(log_p, log_q)
    assert (h2 <= db).all()
    assert (db <= 0.5 * kl_divergence(log_p, log_q)).all()
    assert (db <= 0.5 * kl_divergence(log_q, log_p)).all()
    # Renyi order 1/2 is 2 D_B, and Renyi is nondecreasing in the order, reaching KL at 1.
    assert torch.allclose(renyi_divergence(log_p, log_q, 0.5), 2 * db, rtol=1e-12)
    near_one = renyi_divergence(log_p, log_q, 1 - 1e-6)
    assert torch.allclose(near_one, kl_divergence(log_p, log_q), rtol=1e-4)
    assert (renyi_divergence(log_p, log_q, 0.7) >= 2 * db - 1e-12).all()


def test_zero_probabilities_and_disjoint_supports():
    log_p = torch.tensor([[math.log(0.5), math.log(0.5), -math.inf]], dtype=torch.float64)
    log_q = torch.tensor([[math.log(0.5), -math.inf, math.log(0.5)]], dtype=torch.float64)
    assert math.isclose(bhattacharyya_coefficient(log_p, log_q).item(), 0.5, rel_tol=1e-14)
    assert math.isinf(kl_divergence(log_p, log_q).item())  # KL is infinite, D_B is not
    assert math.isclose(bhattacharyya_distance(log_p, log_q).item(), math.log(2), rel_tol=1e-14)
    disjoint = torch.tensor([[-math.inf, -math.inf, 0.0]], dtype=torch.float64)
    assert math.isinf(bhattacharyya_distance(log_p, disjoint).item())
    assert squared_hellinger(log_p, disjoint).item() == 1.0
    assert math.isinf(renyi_divergence(log_p, log_q, 2.0).item())
    assert math.isfinite(renyi_divergence(log_p, log_q, 0.5).item())


def test_logit_gradient_is_half_of_q_minus_geometric_mean_and_finite_under_underflow():
    log_p = random_log_beliefs(20, 7, 6).float()
    logits = (30 * torch.randn(20, 7, generator=torch.Generator().manual_seed(7))).requires_grad_()
    log_q = torch.log_softmax(logits, 1)
    bhattacharyya_distance(log_p, log_q).sum().backward()
    q = log_q.detach().exp()
    r = torch.softmax(0.5 * (log_p + log_q.detach()), 1)
    assert torch.allclose(logits.grad, 0.5 * (q - r), atol=1e-6)
    assert logits.grad.abs().max() <= 0.5
    # With logits 30 * N(0, 1) in float32 many softmax entries underflow to exactly 0; the naive
    # form then differentiates sqrt at 0.
    assert (torch.softmax(logits.detach(), 1) == 0).any()
    naive_logits = logits.detach().clone().requires_grad_()
    naive_bhattacharyya_distance(log_p.exp(), torch.softmax(naive_logits, 1)).sum().backward()
    assert not torch.isfinite(naive_logits.grad).all()


def test_renyi_rejects_order_one():
    log_p = random_log_beliefs(2, 3, 8)
    with pytest.raises(ValueError):
        renyi_divergence(log_p, log_p, 1.0)
