"""Propositions 2 and 4 (sidlib.analysis.descent): bound terms against hand computations, the condition
detector on constructed cases, the samplers, and the trained-cascade helpers on a tiny problem."""
import math

import numpy as np
import pytest
import torch

from sidlib.analysis import descent
from sidlib.divergences import local_minimiser, smoothed_target_log_beliefs
from sidlib.analysis.theory import ideal_cascade, uniform_log_belief

from helpers import CLASSES, config, tiny_problem

DIRECTIONS = ("reverse", "forward")


def log_rows(*rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def np_kl(p, q):
    p, q = np.asarray(p, float), np.asarray(q, float)
    return float((p * np.log(p / q)).sum())


# Three classes, written out by hand.
TEACHER = [0.5, 0.3, 0.2]
TARGET = [0.8, 0.1, 0.1]
BELIEF = [0.6, 0.25, 0.15]


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_terms_match_a_hand_computation(direction):
    alpha = 0.3
    p, teacher, target = log_rows(BELIEF), log_rows(TEACHER), log_rows(TARGET)
    if direction == "reverse":
        d_new, d_old, step = np_kl(BELIEF, TARGET), np_kl(TEACHER, TARGET), np_kl(BELIEF, TEACHER)
        j_new = alpha * d_new + (1 - alpha) * step
    else:
        d_new, d_old, step = np_kl(TARGET, BELIEF), np_kl(TARGET, TEACHER), np_kl(TEACHER, BELIEF)
        j_new = alpha * d_new + (1 - alpha) * step
    j_old = alpha * d_old  # the teacher term vanishes at q = teacher
    assert math.isclose(descent.kl_to_target(p, target, direction).item(), d_new, rel_tol=1e-12)
    assert math.isclose(descent.step_divergence(p, teacher, direction).item(), step, rel_tol=1e-12)
    assert math.isclose(descent.local_excess(p, teacher, target, alpha, direction).item(), j_new - j_old,
                        rel_tol=1e-12, abs_tol=1e-15)
    slack = d_old - (1 - alpha) / alpha * step - d_new
    assert math.isclose(descent.descent_slack(p, teacher, target, alpha, direction).item(), slack,
                        rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(descent.descent_coefficient(alpha), 7 / 3, rel_tol=1e-15)


def test_condition_detector_on_constructed_cases():
    target = log_rows(TARGET, TARGET, TARGET)
    teacher = log_rows(TEACHER, TEACHER, TEACHER)
    alpha = 0.5
    star = local_minimiser(teacher, target, alpha, "reverse")
    # the minimiser improves, staying put is the boundary (excess exactly 0), a vertex-ish wrong belief worsens
    beliefs = torch.cat([star[:1], teacher[1:2], log_rows([0.01, 0.01, 0.98])])
    holds = descent.satisfies_local_improvement(beliefs, teacher, target, alpha, "reverse")
    assert holds.tolist() == [True, True, False]
    excess = descent.local_excess(beliefs, teacher, target, alpha, "reverse")
    assert excess[0] < 0 and excess[1] == 0 and excess[2] > 0
    # a belief that moves the KL to the target down a little but jumps far from its teacher:
    # the weaker conclusion holds, the condition does not (the implication is one way only)
    sharp = log_rows([0.85, 0.149, 0.001])
    d = lambda q: descent.kl_to_target(q, target[:1], "reverse").item()  # noqa: E731
    assert d(sharp) < d(teacher[:1])
    assert not descent.satisfies_local_improvement(sharp, teacher[:1], target[:1], alpha, "reverse").item()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_slack_is_minus_excess_over_alpha(direction):
    g = torch.Generator().manual_seed(0)
    q, teacher = descent.random_log_beliefs(300, 6, g), descent.random_log_beliefs(300, 6, g)
    target = smoothed_target_log_beliefs(torch.randint(0, 6, (300,), generator=g), 6, 0.1).double()
    for alpha in (0.1, 0.5, 0.9):
        slack = descent.descent_slack(q, teacher, target, alpha, direction)
        excess = descent.local_excess(q, teacher, target, alpha, direction)
        assert torch.allclose(slack, -excess / alpha, atol=1e-12)
        assert ((slack >= -1e-12) == (excess <= 1e-12 * alpha)).all()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_level_point_hits_the_level_and_the_constant_is_sharp(direction):
    g = torch.Generator().manual_seed(1)
    n, c, alpha = 400, 5, 0.4
    teacher = descent.random_log_beliefs(n, c, g)
    target = smoothed_target_log_beliefs(torch.randint(0, c, (n,), generator=g), c, 0.1).double()
    far = descent.near_vertex_log_beliefs(n, c, g)
    for level in (0.0, 0.05):
        q, reached = descent.level_point(teacher, target, alpha, direction, far, level)
        assert reached.float().mean() > 0.9
        excess = descent.local_excess(q, teacher, target, alpha, direction)
        assert (excess[reached] - level).abs().max() < 1e-9
        assert torch.allclose(q.exp().sum(1), torch.ones(n, dtype=torch.float64))
    boundary, reached = descent.level_point(teacher, target, alpha, direction, far, 0.0)
    moved = reached & (descent.step_divergence(boundary, teacher, direction) > 1e-3)
    # On the boundary the paper's constant is attained; any larger constant fails there.
    paper = descent.descent_slack(boundary, teacher, target, alpha, direction)[moved]
    larger = descent.descent_slack(boundary, teacher, target, alpha, direction,
                                   coefficient=1.01 * descent.descent_coefficient(alpha))[moved]
    assert paper.abs().max() < 1e-8 and (larger < 0).all()


def test_level_point_reports_unreachable_levels():
    teacher = log_rows([0.4, 0.3, 0.3])
    target = log_rows([0.8, 0.1, 0.1])
    # the far end of the segment is the minimiser itself: nothing above the minimum is reachable
    star = local_minimiser(teacher, target, 0.5, "reverse")
    q, reached = descent.level_point(teacher, target, 0.5, "reverse", star, 0.0)
    assert not reached.item()
    assert torch.allclose(q, star)


def test_mixture_is_the_arithmetic_mean():
    a, b = log_rows([0.5, 0.5, 0.0][:2] + [0.0]), log_rows([0.2, 0.3, 0.5])
    mixed = descent.mixture(a, b, torch.tensor([[0.25]], dtype=torch.float64)).exp()
    assert torch.allclose(mixed, torch.tensor([[0.425, 0.45, 0.125]], dtype=torch.float64))
    assert torch.equal(descent.mixture(a, b, 0.0), a)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_summed_identity_and_both_bounds(direction):
    """Proposition 4 with eps_i = e_i is an equality; with eps_i = max(e_i, 0) its gap is (1/alpha) sum max(-e_i, 0)."""
    g = torch.Generator().manual_seed(2)
    n, c, alpha, depth = 500, 8, 0.3, 12
    target = smoothed_target_log_beliefs(torch.randint(0, c, (n,), generator=g), c, 0.05).double()
    beliefs = descent.imperfect_cascade(target, alpha, depth, direction, noise=0.4, generator=g)
    excess = descent.cascade_excesses(beliefs, target, alpha, direction)
    assert excess.shape == (depth, n) and (excess > 0).any() and (excess < 0).any()
    final = descent.kl_to_target(beliefs[-1], target, direction)
    exact = descent.robust_bound(beliefs, target, alpha, direction, excess)
    assert (exact - final).abs().max() < 1e-10
    budgets = excess.clamp(min=0)
    bound = descent.robust_bound(beliefs, target, alpha, direction, budgets)
    assert torch.allclose(bound - final, (-excess).clamp(min=0).sum(0) / alpha, atol=1e-10)
    simple = descent.simple_robust_bound(beliefs[0], target, alpha, direction, budgets)
    assert (simple >= bound - 1e-12).all()
    # hand-summed right side of eq. (8)
    steps = torch.stack([descent.step_divergence(q, t, direction) for t, q in zip(beliefs[:-1], beliefs[1:])])
    by_hand = (descent.kl_to_target(beliefs[0], target, direction) - (1 - alpha) / alpha * steps.sum(0)
               + budgets.sum(0) / alpha)
    assert torch.allclose(bound, by_hand, atol=1e-12)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ideal_cascade_satisfies_proposition_2_and_the_movement_cap(direction):
    g = torch.Generator().manual_seed(3)
    target = smoothed_target_log_beliefs(torch.randint(0, 10, (50,), generator=g), 10, 0.1).double()
    for alpha in (0.2, 0.7):
        beliefs = ideal_cascade(target, alpha, 40, direction)
        assert (descent.cascade_excesses(beliefs, target, alpha, direction) <= 1e-12).all()
        final = descent.kl_to_target(beliefs[-1], target, direction)
        assert (final <= descent.telescoped_bound(beliefs, target, alpha, direction) + 1e-12).all()
        movement = descent.cascade_step_divergences(beliefs, direction).sum(0)
        assert (movement <= descent.movement_cap(beliefs[0], target, alpha, direction) + 1e-12).all()


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_budget_cascade_spends_its_budget_and_makes_eq_8_tight(direction):
    g = torch.Generator().manual_seed(4)
    n, c, alpha, depth = 200, 10, 0.5, 6
    target = smoothed_target_log_beliefs(torch.randint(0, c, (n,), generator=g), c, 0.1).double()
    budgets = torch.full((depth, n), 0.02, dtype=torch.float64)
    beliefs, reached = descent.budget_cascade(target, alpha, direction, budgets, g)
    assert reached.all()
    excess = descent.cascade_excesses(beliefs, target, alpha, direction)
    assert (excess - budgets).abs().max() < 1e-9
    final = descent.kl_to_target(beliefs[-1], target, direction)
    assert (descent.robust_bound(beliefs, target, alpha, direction, budgets) - final).abs().max() < 1e-8


def test_statistics_on_a_constructed_cascade():
    target = log_rows([0.8, 0.1, 0.1], [0.8, 0.1, 0.1])
    p0 = uniform_log_belief(2, 3)
    star = local_minimiser(p0, target, 0.5, "reverse")
    worse = log_rows([0.01, 0.01, 0.98], [0.01, 0.98, 0.01])
    beliefs = [p0, torch.cat([star[:1], worse[:1]]), torch.cat([star[:1], worse[1:]])]
    rows = descent.descent_statistics(beliefs, target, 0.5, "reverse")
    assert rows[0]["condition"] == 0.5
    assert rows[0]["inequality_fails_where_condition_holds"] == 0.0
    assert rows[0]["inequality_fails_where_condition_fails"] == 1.0
    assert rows[0]["increase_where_condition_fails"] == 1.0
    # module 2: row 0 stays put (condition holds with equality), row 1 moves between two bad beliefs
    assert rows[1]["rows_condition_holds"] >= 1


def test_cascade_log_beliefs_match_the_network():
    model, images, _ = tiny_problem(depth=3, batch=7)
    model.eval()
    beliefs = descent.cascade_log_beliefs(model, images, batch_size=3)
    assert len(beliefs) == 4 and beliefs[0].dtype == torch.float64
    assert torch.allclose(beliefs[0].exp(), torch.full((7, CLASSES), 0.1, dtype=torch.float64))
    with torch.no_grad():
        last = torch.log_softmax(model(images), 1).double()
    assert torch.allclose(beliefs[-1], last, atol=1e-6)


def test_train_sid_model_is_the_training_loop_of_sidlib_train():
    """Same seed and constant learning rate: the returned network scores exactly what sidlib.train.train reports."""
    from sidlib import data as datasets
    from sidlib.train import evaluate, train

    data = datasets.load("synthetic", train_subset=300)
    cfg = config(depth=2, epochs=2, kl="reverse", label_smoothing=0.1, batch_size=64)
    model = descent.train_sid_model(cfg, data)
    assert not model.training
    reference = train(cfg, data=data)["final_test_acc"]
    assert evaluate(model, data) == reference
    beliefs = descent.cascade_log_beliefs(model, data.prepare(data.test_images))
    assert descent.accuracy(beliefs[-1], data.test_labels) == pytest.approx(reference, abs=1e-9)


@pytest.mark.parametrize("direction, smoothing", [("reverse", 0.1), ("forward", 0.0)])
def test_descent_report_is_the_statistics_of_the_trained_cascade(direction, smoothing):
    from sidlib import data as datasets

    data = datasets.load("synthetic", train_subset=300)
    cfg = config(depth=3, epochs=1, kl=direction, label_smoothing=smoothing, alpha=0.3, batch_size=64)
    model = descent.train_sid_model(cfg, data)
    report = descent.descent_report(model, data, cfg, test_samples=50)
    assert report["test_samples"] == 50 and report["kl"] == direction and len(report["modules"]) == 3
    images, labels = data.prepare(data.test_images[:50]), data.test_labels[:50]
    beliefs = descent.cascade_log_beliefs(model, images)
    target = smoothed_target_log_beliefs(labels, data.info.num_classes, smoothing).double()
    expected = descent.descent_statistics(beliefs, target, 0.3, direction)
    for row, want, belief in zip(report["modules"], expected, beliefs[1:]):
        assert row["accuracy"] == descent.accuracy(belief, labels)
        assert {k: v for k, v in row.items() if k != "accuracy"} == want
        assert all(math.isfinite(v) for v in row.values() if isinstance(v, float))  # one-hot forward targets too


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_partial_steps_satisfy_the_condition_and_overshooting_breaks_it(direction):
    g = torch.Generator().manual_seed(5)
    n, c, alpha = 300, 6, 0.5
    teacher = descent.random_log_beliefs(n, c, g)
    target = smoothed_target_log_beliefs(torch.randint(0, c, (n,), generator=g), c, 0.1).double()
    for t in (0.0, 0.3, 0.7, 1.0):
        q = descent.partial_step(teacher, target, alpha, direction, t)
        assert descent.satisfies_local_improvement(q, teacher, target, alpha, direction, tolerance=1e-12).all()
    # t = 1 is the minimiser, t = 0 the teacher
    assert torch.allclose(descent.partial_step(teacher, target, alpha, direction, 1.0),
                          local_minimiser(teacher, target, alpha, direction))
    assert torch.allclose(descent.partial_step(teacher, target, alpha, direction, 0.0), teacher)
    # overshooting far beyond the minimiser leaves the sublevel set for some rows
    far = descent.partial_step(teacher, target, alpha, direction, 6.0)
    assert not descent.satisfies_local_improvement(far, teacher, target, alpha, direction).all()
    beliefs = descent.partial_cascade(target, alpha, 15, direction, g)
    assert (descent.cascade_excesses(beliefs, target, alpha, direction) <= 1e-12).all()


def test_a_cascade_without_modules_has_empty_sums():
    target = log_rows([0.8, 0.1, 0.1], [0.1, 0.8, 0.1])
    p0 = uniform_log_belief(2, 3)
    assert descent.cascade_excesses([p0], target, 0.5, "reverse").shape == (0, 2)
    bound = descent.robust_bound([p0], target, 0.5, "forward", torch.zeros(0, 2, dtype=torch.float64))
    assert torch.allclose(bound, descent.kl_to_target(p0, target, "forward"))
