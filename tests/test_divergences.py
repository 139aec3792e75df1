"""Divergences and SID's closed-form minimisers, checked against independent computations."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import random_log_beliefs
from sidlib.divergences import (arithmetic_mixture, geometric_interpolation, kl_divergence, local_minimiser,
                                sid_objective, smoothed_target_log_beliefs)


def test_kl_matches_numpy_and_is_nonnegative():
    log_p, log_q = random_log_beliefs(50, 7, 0), random_log_beliefs(50, 7, 1)
    p, q = log_p.exp().numpy(), log_q.exp().numpy()
    expected = (p * np.log(p / q)).sum(1)
    assert np.allclose(kl_divergence(log_p, log_q).numpy(), expected, rtol=1e-12)
    assert (kl_divergence(log_p, log_q) > 0).all()
    assert torch.allclose(kl_divergence(log_p, log_p), torch.zeros(50, dtype=torch.float64), atol=1e-15)


def test_kl_matches_torch_kl_div_for_one_hot_targets():
    labels = torch.tensor([0, 3, 2])
    log_target = smoothed_target_log_beliefs(labels, 4, 0.0)
    assert torch.isinf(log_target).any()  # one-hot: log 0 = -inf
    log_q = random_log_beliefs(3, 4, 2)
    ours = kl_divergence(log_target, log_q)
    reference = F.kl_div(log_q, log_target.exp(), reduction="none").sum(1)
    assert torch.allclose(ours, reference)
    assert torch.isfinite(ours).all()
    # The reverse direction to a one-hot target is infinite: why the theory needs smoothing.
    assert torch.isinf(kl_divergence(log_q, log_target)).all()


def test_smoothed_targets():
    log_t = smoothed_target_log_beliefs(torch.tensor([1, 0]), 5, 0.1)
    t = log_t.exp()
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert math.isclose(t[0, 1].item(), 0.9 + 0.02, rel_tol=1e-6)
    assert math.isclose(t[0, 0].item(), 0.02, rel_tol=1e-6)
    with pytest.raises(ValueError):
        smoothed_target_log_beliefs(torch.tensor([0]), 3, 1.0)


def numeric_minimiser(log_teacher, log_target, alpha, direction, steps=400):
    """Minimise the objective over softmax logits with L-BFGS: knows nothing of the closed forms."""
    z = torch.zeros_like(log_teacher, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1, max_iter=steps, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = sid_objective(torch.log_softmax(z, 1), log_teacher, log_target, alpha, direction).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return torch.log_softmax(z.detach(), 1)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_closed_form_minimiser_matches_numeric_minimisation(direction, alpha):
    log_teacher = random_log_beliefs(20, 6, 3, concentration=2.0)
    log_target = random_log_beliefs(20, 6, 4, concentration=2.0)
    closed = local_minimiser(log_teacher, log_target, alpha, direction)
    numeric = numeric_minimiser(log_teacher, log_target, alpha, direction)
    assert torch.allclose(closed.exp(), numeric.exp(), atol=1e-7)
    # and it is a minimum: any other belief (here the other direction's minimiser) scores worse
    other = local_minimiser(log_teacher, log_target, alpha, "forward" if direction == "reverse" else "reverse")
    j = lambda log_q: sid_objective(log_q, log_teacher, log_target, alpha, direction)  # noqa: E731
    assert (j(closed) < j(other)).all()


def test_minimisers_have_their_closed_forms():
    log_teacher, log_target = random_log_beliefs(4, 5, 5), random_log_beliefs(4, 5, 6)
    t, y, a = log_teacher.exp(), log_target.exp(), 0.3
    geometric = t ** (1 - a) * y ** a
    assert torch.allclose(geometric_interpolation(log_teacher, log_target, a).exp(), geometric / geometric.sum(1, keepdim=True))
    assert torch.allclose(arithmetic_mixture(log_teacher, log_target, a).exp(), a * y + (1 - a) * t)


def test_forward_minimiser_with_one_hot_target_is_finite():
    log_target = smoothed_target_log_beliefs(torch.tensor([2]), 4, 0.0)
    mixture = arithmetic_mixture(torch.full((1, 4), -math.log(4)), log_target, 0.5).exp()
    assert torch.allclose(mixture, torch.tensor([[0.125, 0.125, 0.625, 0.125]]))
