"""Proposition 5's gradient error: against a hand-written backward pass, and its linearisation."""
import pytest
import torch

from helpers import CLASSES, config, tiny_problem
from sidlib import data as datasets
from sidlib.analysis import staleness
from sidlib.divergences import smoothed_target_log_beliefs

ALPHA = 0.3


def problem(direction, index=1, depth=3, batch=12, seed=0):
    model, images, labels = tiny_problem(depth=depth, batch=batch, seed=seed)
    model = model.double()
    smoothing = 0.1 if direction == "reverse" else 0.0
    log_target = smoothed_target_log_beliefs(labels, CLASSES, smoothing).double()
    features = model.extractor(images.double()).detach()
    return staleness.make_problem(model, index, features, log_target, ALPHA, direction)


def scaled(direction, r):
    return {name: r * d for name, d in direction.items()}


@torch.no_grad()
def manual_gradient(p, teacher_params):
    """grad_{theta_i} of the batch-mean local loss, written out by hand (no autograd): the logit
    gradient of each KL direction, then the backward of Linear - ReLU - Linear."""
    def mlp(params, belief):
        x = torch.cat([belief, p.features], dim=1)
        a = x @ params["hidden.weight"].T + params["hidden.bias"]
        z = a.clamp(min=0)
        return x, a, z, z @ params["out.weight"].T + params["out.bias"]

    teacher = mlp(teacher_params, p.previous_belief)[3]
    log_t = torch.log_softmax(teacher, dim=1)
    block = {n: w.detach() for n, w in p.block.named_parameters()}
    x, a, z, logits = mlp(block, log_t.exp())
    q, log_q = torch.softmax(logits, dim=1), torch.log_softmax(logits, dim=1)
    n = logits.shape[0]
    if p.direction == "forward":   # -sum m log q + const, m the mixture: d/dlogits = q - m
        dlogits = (q - (ALPHA * p.log_target.exp() + (1 - ALPHA) * log_t.exp())) / n
    else:                          # sum q (log q - s), s = alpha log p_y + (1 - alpha) log t
        u = log_q - (ALPHA * p.log_target + (1 - ALPHA) * log_t)
        dlogits = q * (u - (q * u).sum(1, keepdim=True)) / n
    da = (dlogits @ block["out.weight"]) * (a > 0)
    return torch.cat([(da.T @ x).reshape(-1), da.sum(0), (dlogits.T @ z).reshape(-1), dlogits.sum(0)])


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gradient_error_matches_a_hand_written_backward(direction):
    p = problem(direction)
    fresh = staleness.parameters_of(p.teacher_block)
    u = staleness.random_direction(p.teacher_block, torch.Generator().manual_seed(3))
    for r in (1e-4, 1e-1, 1.0):
        stale = staleness.shifted(fresh, u, r)
        expected = (manual_gradient(p, stale) - manual_gradient(p, fresh)).norm().item()
        assert staleness.gradient_error(p, scaled(u, r)) == pytest.approx(expected, rel=1e-9, abs=1e-15)
    torch.testing.assert_close(staleness.local_gradient(p, fresh), manual_gradient(p, fresh), rtol=1e-10, atol=1e-13)


def test_no_staleness_no_error():
    p = problem("forward")
    zero = {n: torch.zeros_like(w) for n, w in p.teacher_block.named_parameters()}
    assert staleness.gradient_error(p, zero) == 0.0
    assert staleness.relu_sign_flips(p, zero) == 0


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_error_is_linear_for_small_perturbations_with_the_jvp_slope(direction):
    p = problem(direction, index=2)
    u = staleness.random_direction(p.teacher_block, torch.Generator().manual_seed(5))
    radii = [1e-8, 1e-7, 1e-6]
    errors = staleness.error_curve(p, u, radii)
    slope = staleness.linearised_error(p, u)
    assert slope > 0
    for r, e in zip(radii, errors.tolist()):
        assert e / r == pytest.approx(slope, rel=1e-4)
    assert staleness.loglog_slope(radii, errors) == pytest.approx(1.0, abs=1e-4)


def test_loglog_slope_of_known_powers():
    radii = [1e-3, 1e-2, 1e-1]
    assert staleness.loglog_slope(radii, [3 * r for r in radii]) == pytest.approx(1.0)
    assert staleness.loglog_slope(radii, [r ** 2 for r in radii]) == pytest.approx(2.0)


def test_lanczos_finds_the_worst_direction():
    p = problem("reverse")
    sigma, v = staleness.gradient_sensitivity(p, iterations=30)
    assert staleness.flatten(v).norm().item() == pytest.approx(1.0)
    # an eigenvector of J^T J with eigenvalue sigma^2 ...
    fresh = staleness.parameters_of(p.teacher_block)
    gradient = staleness._gradient_of_teacher_params(p)
    _, jv = torch.func.jvp(gradient, (fresh,), (v,))
    (jtjv,) = torch.func.vjp(gradient, fresh)[1](jv)
    residual = (staleness.flatten(jtjv) - sigma ** 2 * staleness.flatten(v)).norm() / sigma ** 2
    assert residual < 1e-3
    assert staleness.eigen_residual(p, v, sigma) == pytest.approx(residual.item(), rel=1e-6)
    assert staleness.eigen_residual(p, v, 1.1 * sigma) > 0.1
    # ... that bounds every random direction, and whose error grows at rate sigma
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        assert staleness.linearised_error(p, staleness.random_direction(p.teacher_block, generator)) <= sigma
    assert staleness.gradient_error(p, scaled(v, 1e-7)) / 1e-7 == pytest.approx(sigma, rel=1e-4)


def test_first_flip_radius_brackets_a_sign_change_and_the_gradient_jumps_there():
    p = problem("forward")
    u = staleness.random_direction(p.teacher_block, torch.Generator().manual_seed(2))
    radius = staleness.first_flip_radius(p, u, 1e-9, 10.0)
    assert staleness.relu_sign_flips(p, scaled(u, radius)) > 0
    assert staleness.relu_sign_flips(p, scaled(u, radius * (1 - 1e-9))) == 0
    below = staleness.gradient_error(p, scaled(u, radius * (1 - 1e-9)))
    above = staleness.gradient_error(p, scaled(u, radius))
    # across the kink the error changes by far more than its linear growth over that interval
    assert above - below > 1e3 * staleness.linearised_error(p, u) * radius * 1e-9
    with pytest.raises(ValueError):
        staleness.first_flip_radius(p, u, radius, 10.0)


def test_make_problem_rejects_the_first_module():
    model, images, labels = tiny_problem(depth=2)
    with pytest.raises(ValueError):
        staleness.make_problem(model, 0, model.extractor(images), smoothed_target_log_beliefs(labels, CLASSES, 0.0),
                               0.5, "forward")


def test_brief_training_continues_the_same_run():
    data = datasets.load("synthetic")
    model, _, _ = tiny_problem(depth=2)
    cfg = config(depth=2)
    losses, optimizer = staleness.train_sid_briefly(model, data, 3, 16, cfg)
    more, same = staleness.train_sid_briefly(model, data, 2, 16, cfg, optimizer=optimizer)
    assert same is optimizer and len(losses) == 3 and len(more) == 2
    assert all(torch.isfinite(torch.tensor(losses + more)))
