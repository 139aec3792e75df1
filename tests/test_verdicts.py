"""The verdict rule: every branch on constructed intervals, the interval against a hand computation,
and the convergence and regime checks."""
import math

import pytest

from sidlib.analysis import verdicts
from sidlib.analysis.verdicts import Claim, PairedDifference, verdict


def interval(low, high, n=4, std=1.0):
    """A PairedDifference with a given interval (beyond low and high, the rule reads only n and std)."""
    return PairedDifference((0.0,) * n, tuple(range(n)), (low + high) / 2, std, low, high, 0.95, 0.0)


@pytest.mark.parametrize("claim, low, high, word", [
    # greater: above the margin, below it, straddling it
    (Claim("greater"), 0.1, 2.0, "holds"),
    (Claim("greater"), -2.0, -0.1, "contradicted"),
    (Claim("greater"), -0.5, 0.5, "inconclusive"),
    (Claim("greater", 1.0), 0.2, 0.8, "contradicted"),  # a gain, but excluded from being as large as claimed
    (Claim("greater", 1.0), 0.5, 1.5, "inconclusive"),
    (Claim("greater", 1.0), 1.1, 1.5, "holds"),
    # less: the mirror image
    (Claim("less"), -2.0, -0.1, "holds"),
    (Claim("less"), 0.1, 2.0, "contradicted"),
    (Claim("less"), -0.5, 0.5, "inconclusive"),
    (Claim("less", 1.0), -0.8, -0.2, "contradicted"),
    (Claim("less", 1.0), -3.0, -1.2, "holds"),
    # not_less (on par or better): only falling below -margin contradicts
    (Claim("not_less", 1.0), -0.8, 3.0, "holds"),
    (Claim("not_less", 1.0), -1.5, 0.5, "inconclusive"),
    (Claim("not_less", 1.0), -3.0, -1.2, "contradicted"),
    # equivalent: inside the margins, outside them, across one of them
    (Claim("equivalent", 1.0), -0.5, 0.9, "holds"),
    (Claim("equivalent", 1.0), -1.5, 0.5, "inconclusive"),
    (Claim("equivalent", 1.0), 0.5, 1.5, "inconclusive"),
    (Claim("equivalent", 1.0), 1.2, 2.0, "contradicted"),
    (Claim("equivalent", 1.0), -2.0, -1.2, "contradicted"),
])
def test_every_branch_of_the_rule(claim, low, high, word):
    assert verdict(interval(low, high), claim) == word


@pytest.mark.parametrize("low, high", [(0.1, 2.0), (-2.0, -0.1), (-0.5, 0.5)])
def test_a_precondition_not_met_overrides_any_interval(low, high):
    assert verdict(interval(low, high), Claim("greater"), regime_reached=False) == "regime not reached"


def test_too_few_seeds_or_no_spread_give_no_verdict():
    assert verdict(interval(0.1, 2.0, n=2), Claim("greater")) == "inconclusive"  # two seeds
    assert verdict(interval(0.3, 0.3, std=0.0), Claim("greater")) == "inconclusive"  # every seed alike
    assert verdict(interval(0.1, 2.0, n=3), Claim("greater")) == "holds"
    assert verdict(interval(0.1, 2.0, n=2), Claim("greater"), regime_reached=False) == "regime not reached"


def test_the_interval_is_students_t_computed_by_hand():
    a = {0: 80.0, 1: 82.0, 2: 81.0, 3: 85.0}
    b = {0: 79.0, 1: 80.0, 2: 81.5, 3: 82.5}
    d = verdicts.paired_difference(a, b)
    diffs = [1.0, 2.0, -0.5, 2.5]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 3)
    t_975_df3 = 3.182446305284263  # Student-t quantile, 3 degrees of freedom (tables)
    assert d.differences == tuple(diffs) and d.seeds == (0, 1, 2, 3)
    assert d.mean == pytest.approx(1.25) and d.std == pytest.approx(sd)
    assert d.low == pytest.approx(mean - t_975_df3 * sd / 2) and d.high == pytest.approx(mean + t_975_df3 * sd / 2)
    t_80_df3 = 0.9784723123633045
    assert d.detectable == pytest.approx((t_975_df3 + t_80_df3) * sd / 2)
    assert d.low < 0 < d.high  # four seeds this noisy straddle zero: inconclusive for a gain
    assert verdict(d, Claim("greater")) == "inconclusive"


def test_pairing_is_by_seed_not_by_order():
    d = verdicts.paired_difference({1: 10.0, 0: 5.0}, {0: 4.0, 1: 8.0})
    assert d.differences == (1.0, 2.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="share their seeds"):
        verdicts.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 2: 2.0})
    with pytest.raises(ValueError, match="at least 2 seeds"):
        verdicts.paired_difference({0: 1.0}, {0: 1.0})
    with pytest.raises(ValueError, match="direction"):
        Claim("better")
    with pytest.raises(ValueError, match="margin above 0"):
        Claim("equivalent")


def run(variant, seed, best_epoch, cap, test_acc=50.0, train_accs=(50.0,)):
    return {"variant": variant, "config": {"seed": seed, "epochs": cap, "method": variant},
            "best_val_epoch": best_epoch, "epochs_trained": min(cap, best_epoch + 10),
            "best_val_test_acc": test_acc, "history": [{"train_acc": a} for a in train_accs]}


def test_convergence_is_early_stopping_or_the_best_epoch_well_inside_the_cap():
    full = lambda best, cap: {**run("bp", 0, best, cap), "epochs_trained": cap}  # noqa: E731 (trained to its cap)
    assert verdicts.converged(full(75, 100)) and not verdicts.converged(full(76, 100))
    assert verdicts.converged(run("bp", 0, 85, 100))  # stopped by patience at epoch 95, before its cap
    report = verdicts.convergence([run("bp", 0, 20, 100), full(90, 100), run("bp", 2, 40, 100)])
    assert report == {"converged": 2, "runs": 3, "validated": 3, "median_best_epoch": 40, "median_epochs_trained": 50}
    peaks = [(1, 50), (2, 60), (3, 60)] + [(e, 55) for e in range(4, 13)]  # best at 2 (the first of the ties)
    older = {"config": {"epochs": 12}, "history": [{"epoch": e, "val_acc": a} for e, a in peaks]}
    assert verdicts.best_epoch(older) == 2 and verdicts.converged(older)  # a run that predates best_val_epoch
    rising = [{"epoch": e, "val_acc": 50 + e} for e in range(1, 5)]
    assert verdicts.best_epoch({"history": rising}) == 4 and not verdicts.converged({"config": {"epochs": 4}, "history": rising})
    # a budget of 8 epochs, best at 6: within the first 75 %, but 2 epochs are too few to call it stopped
    short = [{"epoch": e, "val_acc": 60 - abs(e - 6)} for e in range(1, 9)]
    assert not verdicts.converged({"config": {"epochs": 8}, "history": short})
    longer = [{"epoch": e, "val_acc": 60 - abs(e - 6)} for e in range(1, 12)]
    assert verdicts.converged({"config": {"epochs": 11}, "history": longer})  # 5 epochs on without a gain
    unvalidated = {"config": {"epochs": 4}, "history": [{}] * 4}  # an early-training run: no validation split
    assert not verdicts.converged(unvalidated)
    assert verdicts.convergence([unvalidated]) == {"converged": 0, "runs": 1, "validated": 0, "median_best_epoch": None,
                                                   "median_epochs_trained": 4}


def test_fits_labels_reads_the_best_training_accuracy():
    assert verdicts.fits_labels(run("bp", 0, 1, 1, train_accs=(60.0, 96.0, 94.0)))
    assert not verdicts.fits_labels(run("bp", 0, 1, 1, train_accs=(60.0, 94.9)))


def test_compare_pairs_two_variants_of_a_grid():
    runs = [run("sid", 0, 1, 9, 81.0), run("sid", 1, 1, 9, 83.0), run("bp", 1, 1, 9, 80.0), run("bp", 0, 1, 9, 80.0)]
    d = verdicts.compare(runs, "sid", "bp")
    assert d.differences == (1.0, 3.0) and d.mean == 2.0
    with pytest.raises(ValueError, match="no runs of variant"):
        verdicts.compare(runs, "sid", "fa")
    with pytest.raises(ValueError, match="two runs with seed 0"):
        verdicts.compare(runs + [run("sid", 0, 1, 9, 70.0)], "sid", "bp")
    with pytest.raises(ValueError, match="has no 'final_test_acc'"):
        verdicts.compare(runs, "sid", "bp", metric="final_test_acc")
