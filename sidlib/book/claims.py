"""A claim's answer on an experiment page: paired interval, verdict word, regime, convergence.

A page declares what it tests with a :class:`ClaimTest` (two variants of its grid, the claim's
direction and margin from its preset, the paper's own effect where it has one), computes the
:func:`answer` from the committed runs, shows it (:func:`answer_text`, :func:`plot_answer`) and
records it (:func:`record_answer`), so that its prose and the ledger glue the verdict word and
the numbers rather than typing them.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..analysis.verdicts import POWER, Claim, compare, convergence, verdict
from .experiments import variant_of


@dataclass(frozen=True)
class ClaimTest:
    """``a`` - ``b`` (variant names) on ``metric``, claimed to satisfy ``claim``."""
    key: str  # the prefix of its recorded names, e.g. "sid_vs_bp"
    a: str
    b: str
    claim: Claim
    metric: str = "best_val_test_acc"  # the early-stopped network's test accuracy
    paper_effect: float | None = None  # the paper's a - b, in points, where it reports one
    paper_source: str = ""


METRICS = {"best_val_test_acc": "test accuracy at the best validation epoch",
           "final_test_acc": "test accuracy at the last epoch"}


def declared_claim(summary: dict, key: str | None = None) -> Claim:
    """The claim a preset declared before its runs, as its notebook wrote it into ``summary.json``: its
    one ``claim``, or, on a page that tests several, the one named ``key`` among its ``claims``."""
    declared = summary.get("claim") if key is None else summary.get("claims", {}).get(key)
    if declared is None:
        what = "no claim" if key is None else f"no claim {key!r}"
        raise ValueError(f"preset {summary.get('preset')!r} declared {what} in its summary; run its converged preset")
    return Claim(declared["direction"], declared["margin"])


def answer(runs: list[dict], test: ClaimTest, regime_reached: bool = True, regime: str = "") -> dict:
    """The converged answer of ``test`` on the runs of its two variants: the paired difference, its
    verdict (``regime not reached`` when the precondition failed), convergence, and ``regime``, a
    sentence saying what was checked."""
    mine = [r for r in runs if variant_of(r) in (test.a, test.b)]
    difference = compare(mine, test.a, test.b, test.metric)
    return {"test": test, "difference": difference, "verdict": verdict(difference, test.claim, regime_reached),
            "convergence": convergence(mine), "regime_reached": regime_reached, "regime": regime,
            "a_mean": statistics.fmean(r[test.metric] for r in mine if variant_of(r) == test.a),
            "b_mean": statistics.fmean(r[test.metric] for r in mine if variant_of(r) == test.b)}


def record_answer(result: dict) -> None:
    """Record the answer under ``<key>_...``: the numbers (``diff``, ``low``, ``high``, ``detectable``,
    ``seeds``, ``converged``, ``runs``, ``median_epoch``, ``a``, ``b``) and the verdict word (``verdict``, text)."""
    from .notebook import record, record_text

    test, d, conv = result["test"], result["difference"], result["convergence"]
    for name, value in {"diff": d.mean, "low": d.low, "high": d.high, "detectable": d.detectable, "seeds": d.n,
                        "converged": conv["converged"], "runs": conv["runs"], "median_epoch": conv["median_best_epoch"],
                        "a": result["a_mean"], "b": result["b_mean"]}.items():
        record(f"{test.key}_{name}", value)
    record_text(f"{test.key}_verdict", result["verdict"])


def answer_text(result: dict, names: tuple[str, str] | None = None) -> str:
    """The answer in one paragraph (Markdown), for the box that opens a page."""
    test, d, conv = result["test"], result["difference"], result["convergence"]
    a, b = names or (test.a, test.b)
    paper = (f" The paper's {a} - {b}: {test.paper_effect:+.2f} points ({test.paper_source})."
             if test.paper_effect is not None else "")
    regime = f" {result['regime']}" if result["regime"] else ""
    return (f"**Verdict: {result['verdict']}.** {a} - {b} = {d.mean:+.2f} points, {d.level:.0%} interval "
            f"[{d.low:+.2f}, {d.high:+.2f}] over {d.n} paired seeds (the claim: {test.claim.describe(a, b)}; the "
            f"interval lies wholly on one side with {POWER:.0%} probability once the true difference is "
            f"{d.detectable:.2f} points from the threshold). {a} {result['a_mean']:.2f} %, {b} {result['b_mean']:.2f} % "
            f"({METRICS.get(test.metric, test.metric)}, mean over seeds). {conv['converged']} of {conv['runs']} runs "
            f"converged (stopped early on validation, or best validation epoch before the last quarter of the epoch "
            f"cap; median best epoch {conv['median_best_epoch']:g}).{regime}{paper}")


def answer_row(result: dict, names: tuple[str, str] | None = None) -> dict:
    """One answer as a table row (for a page that tests several claims)."""
    test, d, conv = result["test"], result["difference"], result["convergence"]
    a, b = names or (test.a, test.b)
    return {"comparison": f"{a} - {b}", "claim": test.claim.describe(a, b), "means (%)": f"{result['a_mean']:.2f} vs {result['b_mean']:.2f}", "difference": f"{d.mean:+.2f}",
            "95% interval": f"[{d.low:+.2f}, {d.high:+.2f}]", "seeds": d.n,
            "converged": f"{conv['converged']}/{conv['runs']}", "verdict": result["verdict"],
            "paper": "" if test.paper_effect is None else f"{test.paper_effect:+.2f} ({test.paper_source})"}


def plot_answer(ax, result: dict, names: tuple[str, str] | None = None) -> None:
    """Per-seed differences, their mean with its interval, zero, the claim's margin and the paper's effect."""
    test, d = result["test"], result["difference"]
    a, b = names or (test.a, test.b)
    ax.axvline(0, color="black", lw=0.8)
    m = test.claim.margin
    thresholds = {"greater": [m], "less": [-m], "not_less": [-m], "equivalent": [-m, m]}[test.claim.direction]
    for i, threshold in enumerate(thresholds):
        ax.axvline(threshold, color="tab:gray", ls="--", lw=1, label="the claim's threshold" if i == 0 else None)
    offsets = [0.15 * ((i % 5) - 2) / 2 for i in range(d.n)]
    ax.plot(d.differences, [1 + o for o in offsets], "o", color="tab:blue", alpha=0.6, label="one seed")
    ax.errorbar([d.mean], [0.6], xerr=[[d.mean - d.low], [d.high - d.mean]], fmt="s", color="tab:blue", capsize=4,
                label="mean, 95% interval")
    if test.paper_effect is not None:
        ax.plot([test.paper_effect], [0.6], "D", color="tab:red", label=f"paper ({test.paper_source})")
    ax.set(yticks=[], ylim=(0.2, 1.4), xlabel=f"{a} - {b}, test accuracy (points)",
           title=f"{result['verdict']} ({test.claim.describe(a, b)})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: no point hidden
