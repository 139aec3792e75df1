"""From paired runs to a verdict word: the one rule every page and the ledger use.

A claim compares two arms A and B (e.g. SID and BP) on one metric. Arms share seeds, so a seed's
data order, initial draw and noisy labels are the same in both, and the statistic is the mean of
the per-seed differences A - B with its Student-t interval. A :class:`Claim` is declared with the
preset, before its runs: the direction the paper asserts and, where the claim is "on par", the
margin within which two methods count as on par. :func:`verdict` then turns the interval into a word:

* ``holds``: the whole interval lies on the claimed side of the threshold;
* ``contradicted``: the whole interval lies on the other side;
* ``inconclusive``: the interval straddles the threshold (more seeds, or a smaller spread, needed);
* ``regime not reached``: the claim's precondition (BP fitting the noisy labels, runs that
  converged, ...) did not happen, so the runs say nothing about it, whatever the interval.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats

VERDICTS = ("holds", "contradicted", "inconclusive", "regime not reached")
# What a claim says of the effect A - B: above +margin, below -margin, not below -margin (A is on par
# with B or better: non-inferiority), or within (-margin, +margin) (A and B are on par: equivalence).
DIRECTIONS = ("greater", "less", "not_less", "equivalent")
POWER = 0.8  # for the smallest difference a design detects
MIN_SEEDS = 3  # fewer paired seeds give no verdict but "inconclusive"


@dataclass(frozen=True)
class Claim:
    """The effect A - B that a paper asserts, in the metric's units (points of accuracy)."""
    direction: str
    margin: float = 0.0

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown claim direction {self.direction!r}; choose one of: {', '.join(DIRECTIONS)}")
        if not self.margin >= 0:
            raise ValueError(f"a claim's margin must be at least 0, got {self.margin}")
        if self.direction == "equivalent" and self.margin == 0:
            raise ValueError("an equivalence claim needs a margin above 0 (two methods are never exactly equal)")

    def describe(self, a: str = "A", b: str = "B") -> str:
        m, effect = f"{self.margin:g}", f"{a} - {b}"
        return {"greater": f"{effect} > {m}", "less": f"{effect} < -{m}", "not_less": f"{effect} > -{m}",
                "equivalent": f"-{m} < {effect} < {m}"}[self.direction]


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-seed differences A - B, its two-sided interval, and the design's sensitivity."""
    differences: tuple[float, ...]
    seeds: tuple[int, ...]
    mean: float
    std: float
    low: float
    high: float
    level: float
    # How far the true difference must lie from a claim's threshold for this many seeds, at this spread,
    # to put the interval wholly on its side with probability POWER (a two-sided test at 1 - level).
    detectable: float

    @property
    def n(self) -> int:
        return len(self.differences)


def paired_difference(a: dict[int, float], b: dict[int, float], level: float = 0.95) -> PairedDifference:
    """``a`` and ``b`` map seed -> metric for the two arms; they must share their seeds (at least 2)."""
    if set(a) != set(b):
        raise ValueError(f"the arms must share their seeds to be paired: {sorted(a)} against {sorted(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired interval needs at least 2 seeds, got {len(a)}")
    seeds = tuple(sorted(a))
    differences = tuple(a[s] - b[s] for s in seeds)
    n = len(differences)
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    detectable = (stats.t.ppf(0.5 + level / 2, n - 1) + stats.t.ppf(POWER, n - 1)) * std / math.sqrt(n)
    return PairedDifference(differences, seeds, mean, std, mean - half, mean + half, level, detectable)


def verdict(difference: PairedDifference, claim: Claim, regime_reached: bool = True) -> str:
    """The verdict word (one of VERDICTS) of ``claim`` given the paired interval."""
    if not regime_reached:
        return "regime not reached"
    if difference.n < MIN_SEEDS or difference.std == 0:
        # two seeds, or differences all equal (accuracies come in steps of one test image): the interval
        # has no spread to speak of, and a verdict from it would be chance
        return "inconclusive"
    low, high, m = difference.low, difference.high, claim.margin
    if claim.direction == "equivalent":
        if -m < low and high < m:
            return "holds"
        return "contradicted" if low > m or high < -m else "inconclusive"
    # One-sided claims: the effect lies above (greater, not_less) or below (less) one threshold.
    threshold = {"greater": m, "not_less": -m, "less": -m}[claim.direction]
    above, below = low > threshold, high < threshold
    if claim.direction == "less":
        above, below = below, above
    return "holds" if above else "contradicted" if below else "inconclusive"


def metric_by_seed(runs: list[dict], variant: str, metric: str) -> dict[int, float]:
    """seed -> ``run[metric]`` for the runs of one variant (a grid's results, ``sidlib.book.experiments``)."""
    found = {}
    for r in runs:
        if r.get("variant", r["config"]["method"]) != variant:
            continue
        seed = r["config"]["seed"]
        if seed in found:
            raise ValueError(f"variant {variant!r} has two runs with seed {seed}; a comparison pairs one run per seed")
        if metric not in r:
            hint = "; train it with --val-split N" if metric.startswith("best_val") else ""
            raise ValueError(f"variant {variant!r} seed {seed} has no {metric!r}{hint}")
        found[seed] = r[metric]
    if not found:
        raise ValueError(f"no runs of variant {variant!r}")
    return found


def compare(runs: list[dict], a: str, b: str, metric: str = "best_val_test_acc", level: float = 0.95) -> PairedDifference:
    """The paired difference ``a`` - ``b`` of two variants of a grid on ``metric``."""
    return paired_difference(metric_by_seed(runs, a, metric), metric_by_seed(runs, b, metric), level)


CONVERGENCE_TAIL = 0.25  # a best epoch in the last quarter of the cap means the budget, not the run, stopped it
MIN_EPOCHS_AFTER_BEST = 5  # and a short budget's quarter is too few epochs to say the run had stopped improving


def converged(run: dict, tail: float = CONVERGENCE_TAIL) -> bool:
    """A run converged if early stopping ended it (validation accuracy stopped improving for its
    patience before the cap) or, trained to its cap, its best validation epoch lies before the last
    ``tail`` of it and at least MIN_EPOCHS_AFTER_BEST epochs before the cap: a run still improving near
    its cap was stopped by the budget, not by its own progress."""
    best = best_epoch(run)
    if best is None:  # trained without a validation split: nothing says it converged
        return False
    cap = run["config"]["epochs"]
    if epochs_trained(run) < cap:  # early stopping ended it
        return True
    # trained to its cap: it went on for the last quarter of it (and a few epochs at least) without improving
    return cap - best >= max(tail * cap, MIN_EPOCHS_AFTER_BEST)


def best_epoch(run: dict) -> int | None:
    """A run's best validation epoch (the first of highest validation accuracy), from its history where
    the run predates the field; None for a run trained without a validation split."""
    if "best_val_epoch" in run:
        return run["best_val_epoch"]
    history = run.get("history", [])
    if not history or not all("val_acc" in h for h in history):
        return None
    return max(history, key=lambda h: (h["val_acc"], -h["epoch"]))["epoch"]


def epochs_trained(run: dict) -> int:
    return run["epochs_trained"] if "epochs_trained" in run else len(run["history"])


def convergence(runs: list[dict], tail: float = CONVERGENCE_TAIL) -> dict:
    """How many runs converged (:func:`converged`), and the median best-validation and trained epochs."""
    best = [b for b in map(best_epoch, runs) if b is not None]
    return {"converged": sum(converged(r, tail) for r in runs), "runs": len(runs), "validated": len(best),
            "median_best_epoch": statistics.median(best) if best else None,
            "median_epochs_trained": statistics.median(map(epochs_trained, runs))}


def fits_labels(run: dict, threshold: float = 95.0) -> bool:
    """Whether the network came to fit its training labels as given (noisy ones included): the
    memorisation that label-noise and overfitting claims are about."""
    return max(h["train_acc"] for h in run["history"]) >= threshold
