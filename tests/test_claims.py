"""A page's converged answer (sidlib.book.claims) and grids on local worker processes (sidlib.book.workers)."""
import json
import math
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from helpers import config  # noqa: E402
from sidlib.analysis.verdicts import Claim  # noqa: E402
from sidlib.book import claims, experiments, runner, workers  # noqa: E402
from sidlib.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def run(variant, seed, acc, best_epoch=10, cap=40):
    return {"variant": variant, "config": {"seed": seed, "method": variant, "epochs": cap},
            "best_val_test_acc": acc, "best_val_epoch": best_epoch, "epochs_trained": best_epoch + 5}


def test_the_answer_pairs_seeds_and_words_the_verdict():
    runs = [run("sid", s, 90.0 + s) for s in range(4)] + [run("bp", s, 89.0 + s + 0.1 * s) for s in range(4)]
    runs.append(run("fa", 0, 10.0))  # a third variant of the grid is not part of the comparison
    test = claims.ClaimTest("sid_vs_bp", "sid", "bp", Claim("not_less", 1.0), paper_effect=0.1, paper_source="paper")
    result = claims.answer(runs, test)
    assert result["difference"].differences == pytest.approx((1.0, 0.9, 0.8, 0.7))
    assert result["verdict"] == "holds" and result["convergence"]["converged"] == 4 * 2
    assert result["a_mean"] == pytest.approx(91.5) and result["b_mean"] == pytest.approx(90.65)
    text = claims.answer_text(result, names=("SID", "BP"))
    assert text.startswith("**Verdict: holds.**") and "+0.85 points" in text and "4 paired seeds" in text
    assert claims.answer(runs, test, regime_reached=False)["verdict"] == "regime not reached"
    row = claims.answer_row(result, names=("SID", "BP"))
    assert row["difference"] == "+0.85" and row["verdict"] == "holds" and row["converged"] == "8/8"
    assert row["means"] == "91.50 vs 90.65" and row["paper"] == "+0.10" and row["claim"] == "SID - BP > -1"
    fig, ax = plt.subplots()
    claims.plot_answer(ax, result, names=("SID", "BP"))
    assert ax.get_title().startswith("holds")
    plt.close(fig)


def test_a_page_with_several_claims_reads_each_by_name():
    summary = {"preset": "converged", "claims": {"sid - fa": ["greater", 0.0], "sid - bp": {"direction": "less", "margin": 2}}}
    assert claims.declared_claim(summary, "sid - fa") == Claim("greater", 0.0)  # as presets write it
    assert claims.declared_claim(summary, "sid - bp") == Claim("less", 2)  # as single-claim summaries write it
    with pytest.raises(ValueError, match="declared no claim 'sid - hsic'"):
        claims.declared_claim(summary, "sid - hsic")
    with pytest.raises(ValueError, match="declared no claim in its summary"):
        claims.declared_claim(summary)


def early(variant, seed, acc, epochs=2):
    """A run of an early-training preset: no validation split, the whole (short) budget trained."""
    return {"variant": variant, "config": {"seed": seed, "method": variant, "epochs": epochs},
            "final_test_acc": acc, "history": [{"epoch": e + 1} for e in range(epochs)]}


def test_page_answers_judge_every_declared_comparison_and_need_convergence():
    converged_runs = [run("sid", s, 90.0 + s) for s in range(3)] + [run("bp", s, 88.0 + s + 0.2 * s * s) for s in range(3)]
    converged_runs += [run("fa", s, 80.0 + s + 0.1 * s) for s in range(3)]
    summary = {"claims": {"sid - bp": ["not_less", 1.0], "sid - fa": ["less", 0.0]}}
    answers, before = claims.page_answers(converged_runs, summary, {"sid - bp": ["greater", 5.0]},
                                          {"sid - bp": (0.1, "paper")})
    assert before and [a["test"].key for a in answers] == ["sid_vs_bp", "sid_vs_fa"]  # the summary's, not the page's
    assert [a["verdict"] for a in answers] == ["holds", "contradicted"]
    assert answers[0]["test"].paper_effect == 0.1 and answers[1]["test"].paper_effect is None
    assert answers[0]["test"].metric == "best_val_test_acc" and answers[0]["regime"] == ""
    # one run stopped by its budget while still improving: not every run converged, so no verdict
    late = converged_runs[:5] + [{**run("bp", 2, 90.0, best_epoch=39), "epochs_trained": 40}] + converged_runs[6:]
    answers, _ = claims.page_answers(late, summary, {})
    assert answers[0]["verdict"] == "regime not reached" and "Only 5 of 6 runs converged" in answers[0]["regime"]
    # the same converged runs, with claims the preset never declared (chosen after the runs): never judged
    answers, before = claims.page_answers(converged_runs, {"preset": "cpu"}, {"sid - bp": ["not_less", 1.0]})
    assert not before and answers[0]["verdict"] == "regime not reached" and "declared after" in answers[0]["regime"]
    # an early-training preset declared nothing: the page's declarations, the final accuracy, no verdict
    early_runs = [early("sid", s, 80.0 + s) for s in range(2)] + [early("bp", s, 70.0 + s) for s in range(2)]
    answers, before = claims.page_answers(early_runs, {"preset": "cpu"}, {"sid - bp": ["greater", 0.0]})
    assert not before and answers[0]["test"].metric == "final_test_acc"
    assert answers[0]["difference"].mean == pytest.approx(10.0) and answers[0]["verdict"] == "regime not reached"
    assert "no validation split" in answers[0]["regime"] and answers[0]["convergence"]["median_best_epoch"] is None
    assert "median best epoch" not in claims.answer_text(answers[0])
    # a declared name played by a variant chosen later (a setting tuned on validation): the key stays
    answers, _ = claims.page_answers(early_runs, {}, {"tuned - bp": ["greater", 0.0]}, aliases={"tuned": "sid"})
    assert answers[0]["test"].key == "tuned_vs_bp" and answers[0]["test"].a == "sid"
    assert answers[0]["difference"].mean == pytest.approx(10.0)
    with pytest.raises(ValueError, match="reads 'A - B'"):
        claims.page_answers(early_runs, {}, {"sid-bp": ["greater", 0.0]})


def test_claims_are_declared_before_the_first_run_and_kept(tmp_path):
    fresh, started, old = tmp_path / "results" / "fresh", tmp_path / "started", tmp_path / "old"
    declaration = {"sid - bp": ["greater", 0.0]}  # the fresh folder does not exist yet: declaring makes it
    assert claims.declare(fresh, declaration) == declaration and (fresh / claims.DECLARATION).is_file()
    assert claims.declared_entry(fresh, declaration) == {"claims": declaration}  # the summary copies it
    with pytest.raises(ValueError, match="started under the claims"):  # resumed under other claims
        claims.declare(fresh, {"sid - bp": ["less", 0.0]})
    started.mkdir()
    (started / "sid-seed0.json").write_text("{}")  # runs without a declaration: too late to declare
    assert claims.declare(started, declaration) is None and claims.declared_entry(started, declaration) == {}
    assert not (started / claims.DECLARATION).exists()
    old.mkdir()  # a preset that declared in its summary before claims.json existed
    (old / "sid-seed0.json").write_text("{}")
    (old / runner.COMPLETE_MARKER).write_text(json.dumps({"claim": {"direction": "not_less", "margin": 1.0}}))
    assert claims.declare(old, {"direction": "greater", "margin": 0.0}, "claim") == {"direction": "not_less", "margin": 1.0}


def test_duplicate_record_names_are_refused():
    runs = [early("a-b", s, 1.0 + s) for s in range(3)] + [early("a_b", s, 2.0) for s in range(3)]
    runs += [early("c", s, 0.5 * s) for s in range(3)]
    with pytest.raises(ValueError, match="one name 'a_b_vs_c'"):
        claims.page_answers(runs, {}, {"a-b - c": ["greater", 0.0], "a_b - c": ["greater", 0.0]})


def test_text_records_are_not_read_as_numbers():
    from sidlib.book.notebook import GLUE_MIME, recorded
    number = {"output_type": "display_data", "data": {GLUE_MIME: "1.5"}, "metadata": {"scrapbook": {"name": "x"}}}
    word = {"output_type": "display_data", "data": {GLUE_MIME: "holds",
                                                    GLUE_MIME.replace("plain", "markdown"): "holds"},
            "metadata": {"scrapbook": {"name": "x_verdict"}}}
    assert recorded([number, word]) == {"x": 1.5}


BASE = config(method="sid", depth=2, train_subset=64, test_subset=64, batch_size=32, epochs=2, val_split=32)


def test_a_grid_on_worker_processes_equals_training_here_and_is_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv(workers.ENVIRONMENT, "2")
    said = []
    made = experiments.run_grid(BASE, ["sid", "bp"], [0, 1], tmp_path, log=said.append)
    assert any("4 runs on 2 worker processes" in line for line in said)
    assert [(r["variant"], r["config"]["seed"]) for r in made] == [("sid", 0), ("sid", 1), ("bp", 0), ("bp", 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, workers.available_cores() // 2))  # the workers' share: the same kernels' order
    try:
        for result in made:
            here = train(replace(BASE, method=result["config"]["method"], seed=result["config"]["seed"]))
            assert [e["train_loss"] for e in result["history"]] == [e["train_loss"] for e in here["history"]]
            assert result["best_val_test_acc"] == here["best_val_test_acc"]
    finally:
        torch.set_num_threads(threads)
    monkeypatch.delenv(workers.ENVIRONMENT)
    said.clear()
    again = experiments.run_grid(BASE, ["sid", "bp"], [0, 1], tmp_path, reuse=True, log=said.append)
    assert again == made and all("read back" in line for line in said)


def test_the_runner_refuses_bad_worker_counts_in_one_line(tmp_path):
    for extra in (["--workers", "0"], ["--workers", "2", "--cluster", "local"]):
        done = subprocess.run([sys.executable, "-m", "sidlib.book", "run", "notebooks/02_sid_vs_bp.ipynb", *extra,
                               "--results-root", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "--workers" in done.stderr


CONVERGED = sorted((ROOT / "results").glob("*/converged*"))  # converged, and a page's second converged preset
DEAR_RUN_SECONDS = 300  # the guide's rule: 8 seeds where runs are cheap, 5 where they are dear


@pytest.mark.parametrize("folder", CONVERGED, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_every_committed_converged_preset_follows_the_protocol(folder):
    """Validation held out of the training set and evaluated every epoch, early stopping or the whole
    budget as the preset says, paired seeds (8 or more; 5 or more where a run costs over 5 minutes),
    and the claims declared in the preset."""
    stem = folder.parent.name
    preset = runner.presets_for(ROOT / "notebooks" / f"{stem}.ipynb")[folder.name]
    declared = json.loads((folder / claims.DECLARATION).read_text())  # written before the preset's first run
    if "claim_declarations" in preset:  # a page testing several claims: {"A - B": [direction, margin]}
        templates = list(preset["claim_declarations"].values())
        assert declared["claims"] and all(claim in templates for claim in declared["claims"].values()), declared
        for comparison, claim in declared["claims"].items():
            claims.parse_comparison(comparison), claims.as_claim(claim)  # each one well formed
    else:
        assert {"claim_direction", "claim_margin"} <= set(preset), f"{stem}: the converged preset declares no claim"
        assert claims.as_claim(declared["claim"]) == Claim(preset["claim_direction"], preset["claim_margin"])
    runs = [json.loads(p.read_text()) for p in folder.glob("*-seed*.json")]
    complete = (folder / runner.COMPLETE_MARKER).is_file()
    if not runs:  # declared, its first run not yet finished: nothing to show, so nothing in the book
        assert not complete, f"{folder}: a summary without runs"
        assert f"results/{stem}/{folder.name}" not in (ROOT / "_toc.yml").read_text(), f"{stem}: no runs but in the book"
        return
    if not complete:  # still running across sessions: its finished runs are committed, the book does not show it
        assert f"results/{stem}/{folder.name}" not in (ROOT / "_toc.yml").read_text(), f"{stem}: incomplete but in the book"
    seeds = {}
    for r in runs:
        c = r["config"]
        assert c["val_split"] > 0 and all("val_acc" in h for h in r["history"]), r["command"]
        assert c["patience"] == preset.get("patience") and c["epochs"] == preset["epochs"], r["command"]
        trained = len(r["history"])
        assert trained == r["epochs_trained"] and (trained == c["epochs"] or c["patience"] is not None)
        if c["patience"] is not None and trained < c["epochs"]:  # stopped early: exactly patience epochs after the best
            assert trained - r["best_val_epoch"] == c["patience"]
        best = max(r["history"], key=lambda h: (h["val_acc"], -h["epoch"]))
        assert r["best_val_test_acc"] == best["test_acc"] and not math.isnan(r["best_val_test_acc"])
        seeds.setdefault(experiments.variant_of(r), set()).add(c["seed"])
    if complete:
        summary = json.loads((folder / runner.COMPLETE_MARKER).read_text())
        assert all(summary.get(k) == v for k, v in declared.items()), f"{stem}: the summary's claims are not the declared ones"
        assert len({frozenset(s) for s in seeds.values()}) == 1, f"{stem}: variants do not share their seeds: {seeds}"
        dear = statistics.median(r["train_seconds"] for r in runs) > DEAR_RUN_SECONDS
        assert all(len(s) >= (5 if dear else 8) for s in seeds.values()), seeds
