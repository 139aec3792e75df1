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
           "final_test_acc": "test accuracy at the last epoch",
           "probe_acc": "accuracy of a linear probe on the extractor's features",
           "first_module_cka": "linear CKA of the first module's beliefs with BP's final beliefs",
           "monotone_share": "share of hard test images whose true-class belief never falls by more than 0.01"}


# the difference axis of a metric that is not a test accuracy in points
AXES = {"probe_acc": "linear-probe accuracy (points)", "first_module_cka": "linear CKA",
        "monotone_share": "share of hard images"}


DECLARATION = "claims.json"  # in a preset's results folder: its claims, written before its first run


def as_claim(declared) -> Claim:
    """A declared claim, as presets and summaries write it: ``[direction, margin]`` or
    ``{"direction": ..., "margin": ...}`` (extra keys, such as a regime threshold, are the page's)."""
    if isinstance(declared, dict):
        return Claim(declared["direction"], declared["margin"])
    return Claim(*declared)


def declared_claim(summary: dict, key: str | None = None) -> Claim:
    """The claim a preset declared before its runs, as its notebook wrote it into ``summary.json``: its
    one ``claim``, or, on a page that tests several, the one named ``key`` among its ``claims``."""
    declared = summary.get("claim") if key is None else summary.get("claims", {}).get(key)
    if declared is None:
        what = "no claim" if key is None else f"no claim {key!r}"
        raise ValueError(f"preset {summary.get('preset')!r} declared {what} in its summary; run its converged preset")
    return as_claim(declared)


def declare(out_dir, declaration, key: str = "claims"):
    """Declare a preset's claims before its runs: write ``declaration`` to its folder's ``claims.json``
    if the folder holds no run yet, and return what the preset declared (None where its runs began
    before any declaration: an early-training preset run before its page declared claims). A preset
    resumed under other claims than it began with is refused: its runs were started under the first."""
    import json
    from pathlib import Path

    from ..io import write_json

    folder = Path(out_dir)
    path = folder / DECLARATION
    if path.is_file():
        declared = json.loads(path.read_text()).get(key)
        if declared is not None and declared != declaration:
            raise ValueError(f"{folder} was started under the claims {declared}, not {declaration}; keep them, "
                             f"or remove the folder and train the preset again to declare others")
        return declared
    if any(folder.glob("*-seed*.json")):  # runs without a declaration: whatever is declared now comes after them
        from .runner import COMPLETE_MARKER
        summary = folder / COMPLETE_MARKER  # presets that declared in their summary before claims.json existed
        return json.loads(summary.read_text()).get(key) if summary.is_file() else None
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, {key: declaration})
    return declaration


def declared_entry(out_dir, declaration, key: str = "claims") -> dict:
    """``{key: what the preset declared}`` for its summary (:func:`declare`), or ``{}`` where it
    declared nothing before its runs."""
    declared = declare(out_dir, declaration, key)
    return {} if declared is None else {key: declared}


def answer(runs: list[dict], test: ClaimTest, regime_reached: bool | None = None, regime: str = "",
           declared_before: bool = True) -> dict:
    """The answer of ``test`` on the runs of its two variants: the paired difference, its verdict,
    convergence, and ``regime``, a sentence saying what was checked. ``regime_reached`` is the
    claim's precondition; left out, it is the precondition of every claim about trained networks:
    all of the two variants' runs converged (:func:`sidlib.analysis.verdicts.converged`). A claim not
    ``declared_before`` the runs is never judged: its verdict is "regime not reached"."""
    mine = [r for r in runs if variant_of(r) in (test.a, test.b)]
    difference = compare(mine, test.a, test.b, test.metric)
    conv = convergence(mine)
    if regime_reached is None:
        regime_reached = conv["converged"] == conv["runs"]
        if not regime:
            regime = convergence_sentence(mine, conv)
    if not declared_before:  # a claim chosen after seeing the runs is shown, never judged
        regime_reached = False
        regime = (regime + " " if regime else "") + "The claim was declared after these runs, so the rule does not judge it."
    return {"test": test, "difference": difference, "verdict": verdict(difference, test.claim, regime_reached),
            "convergence": conv, "regime_reached": regime_reached, "regime": regime,
            "a_mean": statistics.fmean(r[test.metric] for r in mine if variant_of(r) == test.a),
            "b_mean": statistics.fmean(r[test.metric] for r in mine if variant_of(r) == test.b)}


def convergence_sentence(runs: list[dict], conv: dict) -> str:
    """Whether the runs reached the regime of a claim about trained networks, in one sentence."""
    if not conv["validated"]:
        epochs = sorted({len(r["history"]) for r in runs})
        return (f"These runs have no validation split and stop after {'/'.join(map(str, epochs))} epochs: early "
                f"training, so a claim about trained networks is not tested by them.")
    if conv["converged"] < conv["runs"]:
        return (f"Only {conv['converged']} of {conv['runs']} runs converged (median best validation epoch "
                f"{conv['median_best_epoch']:g} of {conv['median_epochs_trained']:g} trained): the budget, not the runs, "
                f"ended the others, so the claim is not tested at convergence.")
    return ""  # answer_text already says how many converged


def parse_comparison(comparison: str) -> tuple[str, str]:
    """``"sid - bp"`` -> ``("sid", "bp")``: a claim's effect, as a preset declares it."""
    a, sep, b = comparison.partition(" - ")
    if not sep or not a.strip() or not b.strip():
        raise ValueError(f"a declared comparison reads 'A - B' (variant names), got {comparison!r}")
    return a.strip(), b.strip()


def page_answers(runs: list[dict], summary: dict, declarations: dict[str, list],
                 paper_effects: dict[str, tuple[float, str]] | None = None,
                 metric: str | None = None, aliases: dict[str, str] | None = None,
                 prefix: str = "") -> tuple[list[dict], bool]:
    """Every claim of a page, answered on its shown runs; and whether the claims were declared with the
    preset, before its runs (``summary["claims"]``). Presets that declared none (early-training ``cpu``
    presets, run before the protocol existed) are judged on the page's ``declarations``: their runs
    did not converge, so the verdict is "regime not reached" whatever the interval says.
    ``declarations`` and ``summary["claims"]`` map ``"A - B"`` to ``[direction, margin]``; the metric is
    the early-stopped test accuracy where every run has a validation split, else the final one, unless
    ``metric`` names another key of the runs. ``aliases`` maps a declared name to the variant that
    plays it (e.g. ``"sid"`` -> the SID setting chosen on validation); records keep the declared name,
    after ``prefix`` (for a page that tests the same pair on two metrics)."""
    declared_before = "claims" in summary
    declared = summary["claims"] if declared_before else declarations
    runs = [early_stopped(r) for r in runs]
    if metric is None:
        metric = "best_val_test_acc" if all("best_val_test_acc" in r for r in runs) else "final_test_acc"
    answers, keys = [], set()
    for comparison, claim in declared.items():
        a, b = parse_comparison(comparison)
        key = prefix + f"{a}_vs_{b}".replace("-", "_")
        if key in keys:
            raise ValueError(f"two declared comparisons record under one name {key!r}; rename a variant")
        keys.add(key)
        effect, source = (paper_effects or {}).get(comparison, (None, ""))
        variant = (aliases or {}).get
        test = ClaimTest(key, variant(a, a), variant(b, b), as_claim(claim), metric=metric, paper_effect=effect,
                         paper_source=source)
        answers.append(answer(runs, test, declared_before=declared_before))
    return answers, declared_before


def early_stopped(run: dict) -> dict:
    """The run, with the test accuracy of its best validation epoch filled in from its history where
    it was trained with a validation split before runs recorded it (``best_val_test_acc``)."""
    history = run.get("history", [])
    if "best_val_test_acc" in run or not history or not all("val_acc" in h for h in history):
        return run
    best = max(history, key=lambda h: (h["val_acc"], -h["epoch"]))
    return {**run, "best_val_test_acc": best["test_acc"]}


def show_answers(runs: list[dict], summary: dict, declarations: dict[str, list],
                 paper_effects: dict[str, tuple[float, str]] | None = None, metric: str | None = None,
                 name=str.upper, aliases: dict[str, str] | None = None, prefix: str = "",
                 keep: bool = True) -> list[dict]:
    """A page's answer section: every claim answered (:func:`page_answers`) and recorded (unless not
    ``keep``), shown as one table row each, the regime in words, and one panel each of per-seed
    differences. ``name`` turns a variant into its label. Returns the answers (none where the shown
    preset has a single seed)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from IPython.display import display

    if len({r["config"]["seed"] for r in runs}) < 2:
        print("the shown preset has one seed: no paired interval")
        return []
    answers, declared_before = page_answers(runs, summary, declarations, paper_effects, metric, aliases, prefix)
    if not answers:
        print("this page declares no claims")
        return []
    names = [(name(a["test"].a), name(a["test"].b)) for a in answers]
    for a in answers if keep else ():
        record_answer(a)
    display(pd.DataFrame([answer_row(a, n) for a, n in zip(answers, names)]).set_index("claim"))
    sources = {a["test"].paper_source for a in answers if a["test"].paper_effect is not None}
    if sources:
        print("the paper's effect: " + "; ".join(sorted(sources)))
    if not declared_before:
        print(f"preset {summary.get('preset')!r} declared no claims before its runs: they are judged as this page declares them.")
    print(*dict.fromkeys(a["regime"] for a in answers if a["regime"]), sep="\n")
    fig, axes = plt.subplots(len(answers), 1, figsize=(8.5, 1.9 * len(answers)), squeeze=False)
    for ax, a, n in zip(axes[:, 0], answers, names):
        plot_answer(ax, a, n)
    fig.tight_layout()
    plt.show()
    return answers


def record_answer(result: dict) -> None:
    """Record the answer under ``<key>_...``: the numbers (``diff``, ``low``, ``high``, ``detectable``,
    ``seeds``, ``converged``, ``runs``, ``median_epoch``, ``a``, ``b``) and the verdict word (``verdict``, text)."""
    from .notebook import record, record_text

    test, d, conv = result["test"], result["difference"], result["convergence"]
    for name, value in {"diff": d.mean, "low": d.low, "high": d.high, "detectable": d.detectable, "seeds": d.n,
                        "converged": conv["converged"], "runs": conv["runs"], "median_epoch": conv["median_best_epoch"],
                        "a": result["a_mean"], "b": result["b_mean"]}.items():
        if value is not None:  # no median best epoch where the runs had no validation split
            record(f"{test.key}_{name}", value)
    record_text(f"{test.key}_verdict", result["verdict"])


def answer_text(result: dict, names: tuple[str, str] | None = None) -> str:
    """The answer in one paragraph (Markdown), for the box that opens a page."""
    test, d, conv = result["test"], result["difference"], result["convergence"]
    a, b = names or (test.a, test.b)
    paper = (f" The paper's {a} - {b}: {test.paper_effect:+.2f} points ({test.paper_source})."
             if test.paper_effect is not None else "")
    regime = f" {result['regime']}" if result["regime"] else ""
    median = f"; median best epoch {conv['median_best_epoch']:g}" if conv["median_best_epoch"] is not None else ""
    return (f"**Verdict: {result['verdict']}.** {a} - {b} = {d.mean:+.2f} points, {d.level:.0%} interval "
            f"[{d.low:+.2f}, {d.high:+.2f}] over {d.n} paired seeds (the claim: {test.claim.describe(a, b)}; the "
            f"interval lies wholly on one side with {POWER:.0%} probability once the true difference is "
            f"{d.detectable:.2f} points from the threshold). {a} {result['a_mean']:.2f} %, {b} {result['b_mean']:.2f} % "
            f"({METRICS.get(test.metric, test.metric)}, mean over seeds). {conv['converged']} of {conv['runs']} runs "
            f"converged (stopped early on validation, or best validation epoch before the last quarter of the epoch "
            f"cap{median}).{regime}{paper}")


def answer_row(result: dict, names: tuple[str, str] | None = None) -> dict:
    """One answer as a table row (for a page that tests several claims)."""
    test, d, conv = result["test"], result["difference"], result["convergence"]
    a, b = names or (test.a, test.b)
    return {"claim": test.claim.describe(a, b), "means": f"{result['a_mean']:.2f} vs {result['b_mean']:.2f}",
            "difference": f"{d.mean:+.2f}", "95% interval": f"[{d.low:+.2f}, {d.high:+.2f}]", "seeds": d.n,
            "converged": f"{conv['converged']}/{conv['runs']}", "verdict": result["verdict"],
            "paper": "" if test.paper_effect is None else f"{test.paper_effect:+.2f}"}


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
    ax.set(yticks=[], ylim=(0.2, 1.4), xlabel=f"{a} - {b}, {AXES.get(test.metric, 'test accuracy (points)')}",
           title=f"{result['verdict']} ({test.claim.describe(a, b)})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # beside the axes: no point hidden
